"""Parity: the live router and the simulator make the same decisions on the same trace.

The live side is the real router (proxy, lanes, runtime) on loopback with a
fake clock, driven event by event: at each arrival the clock is set and the
request sent; the lane's fake upstream holds it until the clock reaches the
completion time the service model gives from the moment it was forwarded
(the same draw the simulator makes for that request); a control tick runs at
every `switching.tick`. After every event the harness waits until each
request sent is accounted for: held upstream, waiting in a lane gate, or
answered. The simulator plays the same trace through the same config and
service model. Both decision logs, figures and all, must be equal, and so
must every request's lane and status.

Two traces: a calm one that moves the mode both ways, and an overload rush
at twice the real-time lane's gate, with deadlines, where admission queues
by priority, binds switchable requests late to the other lane and refuses
what no lane can serve in time, and the controller hurries.
"""

import asyncio
import heapq
import random

import aiohttp
import numpy as np
from aiohttp import web

from router.runtime import Runtime
from router.server import RunningRouter
from simulator import generators
from simulator.engine import Engine
from simulator.service import Latency, ServerLane, ServiceModel, jittered_s
from simulator.traces import with_pinned_share
from tests.router.conftest import FakeClock, Upstream, two_lane_config

SEED = 3
SERVICE = ServiceModel(
    lanes={
        # Enough servers that nothing queues upstream (the fake upstreams do not queue).
        "realtime": ServerLane(concurrency=10_000, latency=Latency(base_s=0.05, jitter=0.3)),
        "batch": ServerLane(concurrency=10_000, latency=Latency(base_s=0.4, jitter=0.3)),
    }
)


def _trace():
    rates = [(0.0, 2.0), (25.0, 9.0), (60.0, 1.5)]
    trace = generators.step(rates, 90.0, np.random.default_rng(SEED), generators.Sizes(1, 1, 0.0))
    trace = [type(r)(r.t_s, 0, 0) for r in trace]  # no tokens: the http route reports none either
    return with_pinned_share(trace, 0.2, random.Random(SEED))


def _config(upstreams: dict[str, str]):
    return two_lane_config(
        [upstreams["realtime"]],
        [upstreams["batch"]],
        policy={"type": "load", "params": {"low_rps": 3, "high_rps": 6, "hold": "3s"}},
        switching={"hold": "0s", "cooldown": "5s", "step": "2s", "min_samples": 5, "steps": [0.5, 1.0]},
        metrics={"window": "10s", "slot": "1s"},
    )


def _rush_trace():
    rates = [(0.0, 2.0), (15.0, 14.0), (40.0, 1.5)]
    trace = generators.step(rates, 60.0, np.random.default_rng(SEED + 1), generators.Sizes(1, 1, 0.0))
    rng = random.Random(SEED)
    trace = [type(r)(r.t_s, 0, 0, deadline_ms=900.0 if rng.random() < 0.1 else None) for r in trace]
    return with_pinned_share(trace, 0.2, random.Random(SEED))


def _rush_config(upstreams: dict[str, str]):
    # The real-time gate holds 2 calls of about 0.3 s (about 7 req/s); the rush brings 14.
    # No queue_timeout fires (the live gate's timer runs on the loop's clock, not the fake one).
    lanes = {
        "realtime": {"upstreams": [upstreams["realtime"]], "max_in_flight": 2, "queue_timeout": "1h"},
        "batch": {"upstreams": [upstreams["batch"]], "max_in_flight": 16, "queue_timeout": "1h"},
    }
    return two_lane_config(
        [upstreams["realtime"]],
        [upstreams["batch"]],
        lanes=lanes,
        objectives={"pinned": {"latency": "3s"}, "switchable": {"latency": "1500ms"}},
        policy={"type": "load", "params": {"low_rps": 3, "high_rps": 10, "hold": "4s"}},
        switching={"hold": "0s", "cooldown": "5s", "step": "2s", "min_samples": 5, "steps": [0.5, 1.0]},
        metrics={"window": "5s", "slot": "1s"},
    )


RUSH_SERVICE = ServiceModel(
    lanes={
        "realtime": ServerLane(concurrency=10_000, latency=Latency(base_s=0.3, jitter=0.3)),
        "batch": ServerLane(concurrency=10_000, latency=Latency(base_s=0.8, jitter=0.3)),
    }
)


async def _settle(done, what: str) -> None:
    for _ in range(5000):
        if done():
            return
        await asyncio.sleep(0.001)
    raise AssertionError(f"the router never {what}")


async def _live_run(trace, make_config, service: ServiceModel) -> tuple[list[dict], list[tuple[str, int]]]:
    """The live router's decision log, and each request's (lane, status)."""
    parked: dict[int, tuple[str, asyncio.Future]] = {}

    def holding(lane: str):
        async def handler(request: web.Request) -> web.Response:
            release = asyncio.get_running_loop().create_future()
            parked[int(request.headers["X-Trace-Index"])] = (lane, release)
            await release
            return web.json_response({})

        return handler

    upstreams = {lane: Upstream(holding(lane)) for lane in ("realtime", "batch")}
    for server in upstreams.values():
        await server.start()
    config = make_config({lane: server.url for lane, server in upstreams.items()})
    clock = FakeClock(0.0)
    router = RunningRouter(Runtime(config, clock=clock))
    await router.start(data=("127.0.0.1", 0), admin=("127.0.0.1", 0), ticking=False)
    host, port = router.data_address
    lanes = router.runtime.state.lanes
    z = np.random.default_rng(SEED).standard_normal(len(trace)).tolist()
    tick_s = config.switching.tick_s
    heap, seq = [(tick_s, 0, "tick", -1)], 0
    tasks: list[asyncio.Task] = []
    scheduled: set[int] = set()
    answers: dict[int, tuple[str, int]] = {}

    async def post(session: aiohttp.ClientSession, i: int, headers: dict) -> None:
        async with session.post(f"http://{host}:{port}/", headers=headers) as response:
            await response.read()
            answers[i] = (response.headers.get("X-Modeshift-Lane", ""), response.status)

    async def settle(what: str) -> None:
        """Until every request sent is held upstream, waiting in a gate, or answered; then schedule the new ones."""
        nonlocal seq

        def accounted() -> bool:
            held = sum(1 for i in parked if i not in answers)
            waiting = sum(lane.gate.waiting for lane in lanes.values())
            return held + waiting + len(answers) == len(tasks)

        await _settle(accounted, what)
        for i, (lane, _) in parked.items():
            if i not in scheduled:
                scheduled.add(i)
                seq += 1
                done_s = clock.now + jittered_s(service.lanes[lane].latency.mean_s(1, 0, 0), 0.3, z[i])
                heapq.heappush(heap, (done_s, seq, "done", i))

    async def handle(t: float, kind: str, i: int) -> None:
        nonlocal seq
        clock.now = t
        if kind == "tick":
            router.runtime.tick()
            if t < trace[-1].t_s:
                seq += 1
                heapq.heappush(heap, (t + tick_s, seq, "tick", -1))
        else:
            parked[i][1].set_result(None)
            await _settle(lambda: i in answers, f"answered request {i}")
            await settle(f"settled after request {i}")

    try:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
            for i, request in enumerate(trace):
                while heap and heap[0][0] <= request.t_s:
                    t, _, kind, j = heapq.heappop(heap)
                    await handle(t, kind, j)
                clock.now = request.t_s
                headers = {"X-Trace-Index": str(i)}
                if request.mode is not None:
                    headers["X-Modeshift-Mode"] = request.mode
                if request.deadline_ms is not None:
                    headers["X-Modeshift-Deadline-Ms"] = f"{request.deadline_ms:g}"
                tasks.append(asyncio.create_task(post(session, i, headers)))
                await settle(f"took request {i}")
            while heap:
                t, _, kind, j = heapq.heappop(heap)
                await handle(t, kind, j)
            await asyncio.gather(*tasks)
        return router.runtime.decisions.recent(), [answers[i] for i in range(len(trace))]
    finally:
        await router.stop()
        for server in upstreams.values():
            await server.stop()


async def _compare(trace, make_config, service: ServiceModel) -> list[dict]:
    live, answers = await _live_run(trace, make_config, service)
    placeholder = {"realtime": "http://127.0.0.1:1", "batch": "http://127.0.0.1:2"}
    outcome = Engine(make_config(placeholder), service, seed=SEED).run(trace)
    simulated = outcome.decisions
    assert len(live) == len(simulated)
    for mine, theirs in zip(live, simulated):
        assert _same(mine, theirs), (mine, theirs)
    assert answers == [(outcome.lanes[lane], int(status)) for lane, status in zip(outcome.lane, outcome.status)]
    return simulated


async def test_the_live_router_and_the_simulator_log_identical_decisions():
    simulated = await _compare(_trace(), _config, SERVICE)
    kinds = [record["kind"] for record in simulated]
    # The trace moves the mode both ways, so the comparison covers transitions, not just quiet ticks.
    assert kinds.count("TransitionStarted") >= 2 and "TransitionCompleted" in kinds


async def test_parity_holds_through_an_overload_rush_with_queues_late_binding_and_deadlines():
    trace = _rush_trace()
    simulated = await _compare(trace, _rush_config, RUSH_SERVICE)
    started = next(record for record in simulated if record["kind"] == "TransitionStarted")
    assert "urgent, no hold" in started["reason"]  # the controller hurried, from the same evidence on both sides
    outcome = Engine(_rush_config({"realtime": "http://a:1", "batch": "http://b:2"}), RUSH_SERVICE, seed=SEED).run(
        trace
    )
    # Before the weights moved, admission had already bound switchable requests to the batch lane.
    bound_late = (outcome.lane == outcome.lanes.index("batch")) & (outcome.arrival_s < started["at_s"])
    assert bound_late.sum() >= 5


def _same(a, b) -> bool:
    """Equal records, NaN equal to NaN (a figure nobody could know is NaN on both sides)."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, float) and isinstance(b, float) and a != a and b != b:
        return True
    return a == b
