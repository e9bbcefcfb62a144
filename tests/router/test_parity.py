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

Three traces: a calm one that moves the mode both ways; an overload rush at
twice the real-time lane's gate, with deadlines, where admission queues by
priority, binds switchable requests late to the other lane and refuses what
no lane can serve in time, and the controller hurries; and embeddings calls
that the batch lane micro-batches, its batch timers run by the fake clock
(`SchedulingClock.call_at`), so merged calls form at the same moments and
share their cost the same way.

And lanes that fail: a replica down for the whole run beside one that
answers errors, and outage windows (every real-time replica, then one of
two) in which a replica's upstream stops listening at the window's start
and listens again at its end, by the fake clock. There each request's call
must also reach the same replica on both sides: the same ejections, the
same failovers, the same returns.
"""

import asyncio
import heapq
import random

import aiohttp
import numpy as np
from aiohttp import web

from router.server import RunningRouter, runtime_for
from simulator import generators
from simulator.engine import Engine
from simulator.failure_path import error_draws
from simulator.outcome import NO_REPLICA
from simulator.service import Failures, Latency, Outage, ServerLane, ServiceModel, jittered_s
from simulator.traces import with_pinned_share
from tests.router.helpers import SchedulingClock, Upstream, two_lane_config

SEED = 3
LANES = ("realtime", "batch")
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


def _load_config(upstreams: dict[str, list[str]], low_rps: float, high_rps: float, hold: str, window: str, **sections):
    """Two lanes switched by the load policy in two quick steps; `sections` add or replace config sections."""
    return two_lane_config(
        upstreams["realtime"],
        upstreams["batch"],
        policy={"type": "load", "params": {"low_rps": low_rps, "high_rps": high_rps, "hold": hold}},
        switching={"hold": "0s", "cooldown": "5s", "step": "2s", "min_samples": 5, "steps": [0.5, 1.0]},
        metrics={"window": window, "slot": "1s"},
        **sections,
    )


def _config(upstreams: dict[str, list[str]]):
    return _load_config(upstreams, 3, 6, "3s", "10s")


def _rush_trace():
    rates = [(0.0, 2.0), (15.0, 14.0), (40.0, 1.5)]
    trace = generators.step(rates, 60.0, np.random.default_rng(SEED + 1), generators.Sizes(1, 1, 0.0))
    rng = random.Random(SEED)
    trace = [type(r)(r.t_s, 0, 0, deadline_ms=900.0 if rng.random() < 0.1 else None) for r in trace]
    return with_pinned_share(trace, 0.2, random.Random(SEED))


def _rush_config(upstreams: dict[str, list[str]]):
    # The real-time gate holds 2 calls of about 0.3 s (about 7 req/s); the rush brings 14.
    # No queue_timeout fires (the live gate's timer runs on the loop's clock, not the fake one).
    lanes = {
        "realtime": {"upstreams": upstreams["realtime"], "max_in_flight": 2, "queue_timeout": "1h"},
        "batch": {"upstreams": upstreams["batch"], "max_in_flight": 16, "queue_timeout": "1h"},
    }
    objectives = {"pinned": {"latency": "3s"}, "switchable": {"latency": "1500ms"}}
    return _load_config(upstreams, 3, 10, "4s", "5s", lanes=lanes, objectives=objectives)


def _embeddings_trace():
    rates = [(0.0, 3.0), (15.0, 16.0), (35.0, 2.0)]
    trace = generators.step(rates, 55.0, np.random.default_rng(SEED + 2), generators.Sizes(1, 1, 0.0))
    trace = [type(r)(r.t_s, 0, 0, "/v1/embeddings") for r in trace]
    return with_pinned_share(trace, 0.15, random.Random(SEED))


def _batching_config(upstreams: dict[str, list[str]], **batch_lane):
    # The batch lane merges up to 8 texts or waits 50 ms for company, 2 merged calls at once.
    batch = {
        "upstreams": upstreams["batch"],
        "max_in_flight": 2,
        "batching": {"rule": "hybrid", "max_batch": 8, "max_wait": "50ms"},
        **batch_lane,
    }
    return _load_config(
        upstreams,
        4,
        10,
        "3s",
        "5s",
        lanes={"realtime": {"upstreams": upstreams["realtime"]}, "batch": batch},
        routes=[{"path": "/v1/embeddings", "protocol": "openai-embeddings"}],
        objectives={"switchable": {"latency": "2s"}},
    )


BATCHING_SERVICE = ServiceModel(
    lanes={
        "realtime": ServerLane(concurrency=10_000, latency=Latency(base_s=0.05, jitter=0.3)),
        "batch": ServerLane(concurrency=10_000, latency=Latency(base_s=0.2, per_item_s=0.02, jitter=0.3)),
    }
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


def _embeddings(n: int) -> web.Response:
    data = [{"object": "embedding", "index": k, "embedding": [0.0]} for k in range(n)]
    usage = {"prompt_tokens": 0, "total_tokens": 0}  # the traces carry no tokens either
    return web.json_response({"object": "list", "data": data, "model": "m", "usage": usage})


async def _live_run(trace, make_config, service: ServiceModel) -> tuple[list[dict], list[tuple[str, int]], list[int]]:
    """The live router's decision log, each request's (lane, status), and the replica its last call went to."""
    calls: list[tuple[str, tuple[int, ...], asyncio.Future]] = []  # upstream calls held: lane, requests, release
    draws = error_draws(SEED, len(trace))  # the simulator's: a lane with an error_rate answers these with a 500
    replica_of = [NO_REPLICA] * len(trace)

    def holding(lane: str, replica: int):
        async def handler(request: web.Request) -> web.Response:
            if "X-Trace-Index" in request.headers:
                members: tuple[int, ...] = (int(request.headers["X-Trace-Index"]),)
            else:  # a merged call: the texts name their requests
                members = tuple(int(text[1:]) for text in (await request.json())["input"])
            for i in members:
                replica_of[i] = replica
            release = asyncio.get_running_loop().create_future()
            calls.append((lane, members, release))
            await release
            failures = getattr(service.lanes[lane], "failures", None)
            if failures is not None and draws[members[0]] < failures.error_rate:
                return web.json_response({"error": "modelled"}, status=500)
            return _embeddings(len(members)) if request.path.endswith("/embeddings") else web.json_response({})

        return handler

    # One loopback upstream per replica of the service model; its outages stop it listening (router: refused).
    upstreams = {lane: [Upstream(holding(lane, k)) for k in range(service.lanes[lane].replicas)] for lane in LANES}
    servers = [server for replicas in upstreams.values() for server in replicas]
    for server in servers:
        await server.start()
    config = make_config({lane: [server.url for server in replicas] for lane, replicas in upstreams.items()})
    clock = SchedulingClock(0.0)
    router = RunningRouter(runtime_for(config, clock=clock))
    await router.start(data=("127.0.0.1", 0), admin=("127.0.0.1", 0), ticking=False)
    host, port = router.data_address
    lanes = router.runtime.state.lanes
    z = np.random.default_rng(SEED).standard_normal(len(trace)).tolist()
    tick_s = config.switching.tick_s
    heap, seq = [(tick_s, 0, "tick", None)], 0
    tasks: list[asyncio.Task] = []
    scheduled: set[int] = set()  # ids of calls and timers on the heap
    answers: dict[int, tuple[str, int]] = {}

    async def post(session: aiohttp.ClientSession, i: int, route: str, headers: dict) -> None:
        body = {"input": f"r{i}"} if route.endswith("/embeddings") else {}
        async with session.post(f"http://{host}:{port}{route}", json=body, headers=headers) as response:
            await response.read()
            answers[i] = (response.headers.get("X-Modeshift-Lane", ""), response.status)

    def push(t: float, kind: str, what) -> None:
        nonlocal seq
        seq += 1
        scheduled.add(id(what))
        heapq.heappush(heap, (t, seq, kind, what))

    async def settle(what: str) -> None:
        """Until every request sent is held upstream, queued in the router, or answered; then schedule what began."""

        def accounted() -> bool:
            held = sum(len(members) for _, members, release in calls if not release.done())
            waiting = sum(
                lane.gate.waiting + (lane.batching.waiting if lane.batching else 0) for lane in lanes.values()
            )
            return held + waiting + len(answers) == len(tasks)

        await _settle(accounted, what)
        for _ in range(10):  # let the micro-batchers see what arrived and set their timers
            await asyncio.sleep(0)
        for call in calls:
            lane, members, release = call
            if id(call) not in scheduled:
                mean_s = service.lanes[lane].latency.mean_s(len(members), 0, 0)
                push(clock.now + jittered_s(mean_s, 0.3, z[members[0]]), "done", call)
        for timer in clock.timers:
            if id(timer) not in scheduled and not timer.cancelled:
                push(max(timer.when_s, clock.now), "timer", timer)

    async def handle(t: float, kind: str, what) -> None:
        clock.now = t
        if kind == "tick":
            router.runtime.tick()
            if planner is not None:
                scale(t)
            if t < trace[-1].t_s:
                push(t + tick_s, "tick", object())
        elif kind == "replica_up":
            await replica_up(*what)
        elif kind in ("down", "up"):
            await (what.go_down() if kind == "down" else what.come_up())
            await asyncio.sleep(0.01)  # the router's kept-alive connections to it see their close
        elif kind == "timer":
            if not what.cancelled:
                what.callback()
            await settle(f"settled after a batch timer at {t:g}")
        else:
            what[2].set_result(None)  # its requests are answered, or held again (the halves of a merged call)
            await settle(f"settled after requests {what[1]}")

    # Autoscaled lanes: the harness plays the autoscaler the router's figure is for, as simulator.lane_scale
    # does: a replica asked for answers a cold start later (a new upstream the pool is given), fewer wanted
    # calls off the newest start first, then lets the newest ready replica go (its calls in flight finish).
    planner = router.runtime.state.control.capacity
    starting: dict[str, list[float]] = {lane: [] for lane in (planner.autoscale if planner else {})}

    def scale(now_s: float) -> None:
        for lane, due in starting.items():
            ready, desired = upstreams[lane], planner.desired[lane]
            while len(ready) + len(due) < desired:
                due.append(now_s + planner.autoscale[lane].cold_start_s)
                push(due[-1], "replica_up", (lane, due[-1]))
            while len(ready) + len(due) > desired and due:
                due.pop()
            if len(ready) + len(due) > desired and len(ready) > desired:
                del ready[desired:]
                lanes[lane].pool.replace([server.url for server in ready])

    async def replica_up(lane: str, due_s: float) -> None:
        if due_s not in starting[lane]:
            return  # called off before it answered
        starting[lane].remove(due_s)
        server = Upstream(holding(lane, len(upstreams[lane])))
        await server.start()
        servers.append(server)
        upstreams[lane].append(server)
        lanes[lane].pool.replace([s.url for s in upstreams[lane]])

    for lane, replicas in upstreams.items():
        failures = getattr(service.lanes[lane], "failures", None)
        for outage in failures.down if failures is not None else []:
            for server in replicas[: outage.replicas]:
                push(outage.from_s, "down", server)
                push(outage.to_s, "up", server)

    try:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
            for i, request in enumerate(trace):
                while heap and heap[0][0] <= request.t_s:
                    t, _, kind, what = heapq.heappop(heap)
                    await handle(t, kind, what)
                clock.now = request.t_s
                headers = {"X-Trace-Index": str(i)}
                if request.mode is not None:
                    headers["X-Modeshift-Mode"] = request.mode
                if request.deadline_ms is not None:
                    headers["X-Modeshift-Deadline-Ms"] = f"{request.deadline_ms:g}"
                tasks.append(asyncio.create_task(post(session, i, request.route, headers)))
                await settle(f"took request {i}")
            while heap:
                t, _, kind, what = heapq.heappop(heap)
                await handle(t, kind, what)
            await asyncio.gather(*tasks)
        return router.runtime.decisions.recent(), [answers[i] for i in range(len(trace))], replica_of
    finally:
        await router.stop()
        for server in servers:
            await server.stop()


def _simulate(trace, make_config, service: ServiceModel):
    """The simulator's run of the trace, its config naming one placeholder URL per replica."""
    upstreams = {lane: [f"http://{lane}-{k}.invalid:1" for k in range(service.lanes[lane].replicas)] for lane in LANES}
    return Engine(make_config(upstreams), service, seed=SEED).run(trace)


async def _compare(trace, make_config, service: ServiceModel) -> list[dict]:
    live, answers, replicas = await _live_run(trace, make_config, service)
    outcome = _simulate(trace, make_config, service)
    simulated = outcome.decisions
    assert len(live) == len(simulated)
    for mine, theirs in zip(live, simulated):
        assert _same(mine, theirs), (mine, theirs)
    assert answers == [(outcome.lanes[lane], int(status)) for lane, status in zip(outcome.lane, outcome.status)]
    # Where the simulator plays replicas (lanes that fail), each call went to the same one: the same ejections.
    failing = [outcome.lanes.index(lane) for lane in LANES if getattr(service.lanes[lane], "failures", None)]
    played = np.isin(outcome.lane, failing)
    assert [replicas[i] for i in np.flatnonzero(played)] == outcome.replica[played].tolist()
    return simulated, outcome


async def test_the_live_router_and_the_simulator_log_identical_decisions():
    simulated, _ = await _compare(_trace(), _config, SERVICE)
    kinds = [record["kind"] for record in simulated]
    # The trace moves the mode both ways, so the comparison covers transitions, not just quiet ticks.
    assert kinds.count("TransitionStarted") >= 2 and "TransitionCompleted" in kinds


async def test_parity_holds_through_an_overload_rush_with_queues_late_binding_and_deadlines():
    simulated, outcome = await _compare(_rush_trace(), _rush_config, RUSH_SERVICE)
    started = next(record for record in simulated if record["kind"] == "TransitionStarted")
    assert "urgent, no hold" in started["reason"]  # the controller hurried, from the same evidence on both sides
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


async def test_parity_holds_with_micro_batching_on_the_batch_lane():
    simulated, outcome = await _compare(_embeddings_trace(), _batching_config, BATCHING_SERVICE)
    kinds = [record["kind"] for record in simulated]
    assert kinds.count("TransitionStarted") >= 2 and "TransitionCompleted" in kinds
    assert (outcome.lane == 1).sum() > 100  # the merged calls were many, and their timing and cost shares agreed


FAILING_SERVICE = ServiceModel(
    lanes={
        # Two replicas: the first is down the whole run (it refuses every connection), the second answers 30%
        # of its calls with a 500 (drawn per request from the simulator's own stream): three in a row eject it,
        # and with the first one ejected too, the lane is out of the draw for a while.
        "realtime": ServerLane(
            replicas=2,
            concurrency=10_000,
            latency=Latency(base_s=0.05, jitter=0.3),
            failures=Failures(error_rate=0.3, down=[Outage(**{"from": 0.0, "to": 1e6, "replicas": 1})]),
        ),
        "batch": ServerLane(concurrency=10_000, latency=Latency(base_s=0.4, jitter=0.3)),
    }
)


def _failing_config(upstreams: dict[str, list[str]]):
    """The calm config, three errors in a row (or one refused connection) ejecting a real-time replica."""
    outlier = {"consecutive_errors": 3, "base_ejection": "5s", "max_ejected_fraction": 1.0}
    lanes = {
        "realtime": {
            "upstreams": upstreams["realtime"],
            "outlier": outlier,
            "cost": {"per_hour": 3.6, "billing": "busy"},
        },
        "batch": {"upstreams": upstreams["batch"]},
    }
    return _load_config(upstreams, 3, 6, "3s", "10s", lanes=lanes)


async def test_parity_holds_when_a_replica_refuses_connections_and_another_answers_errors():
    simulated, outcome = await _compare(_trace(), _failing_config, FAILING_SERVICE)
    assert (outcome.status == 500).sum() >= 5  # errors relayed, on both sides alike
    assert "TransitionStarted" in [record["kind"] for record in simulated]


OUTAGE = (12.0, 22.0)  # every real-time replica down, before the rush
HALF_OUTAGE = (64.0, 80.0)  # one of the two down, in the calm after it

OUTAGE_SERVICE = ServiceModel(
    lanes={
        "realtime": ServerLane(
            replicas=2,
            concurrency=10_000,
            latency=Latency(base_s=0.05, jitter=0.3),
            failures=Failures(
                down=[
                    Outage(**{"from": OUTAGE[0], "to": OUTAGE[1]}),
                    Outage(**{"from": HALF_OUTAGE[0], "to": HALF_OUTAGE[1], "replicas": 1}),
                ]
            ),
        ),
        "batch": ServerLane(concurrency=10_000, latency=Latency(base_s=0.4, jitter=0.3)),
    }
)


async def test_parity_holds_through_outage_windows_with_the_same_ejections_failovers_and_returns():
    """Replicas stop listening at a window's start and listen again at its end, by the fake clock."""
    trace = _trace()
    _, outcome = await _compare(trace, _failing_config, OUTAGE_SERVICE)
    realtime, batch = outcome.lanes.index("realtime"), outcome.lanes.index("batch")
    during = (outcome.arrival_s >= OUTAGE[0]) & (outcome.arrival_s < OUTAGE[1])
    # Every replica down: switchable requests failed over to the batch lane, pinned real-time ones had nowhere to go.
    assert ((outcome.lane == batch) & during & ~outcome.pinned & (outcome.status == 200)).sum() >= 10
    assert ((outcome.status == 502) & during).sum() >= 1
    assert not ((outcome.lane == realtime) & (outcome.status == 200) & during).any()
    # One replica down: its calls went to the other, and the lane kept answering.
    half = (outcome.arrival_s >= HALF_OUTAGE[0]) & (outcome.arrival_s < HALF_OUTAGE[1]) & (outcome.lane == realtime)
    assert half.sum() >= 5 and set(outcome.replica[half].tolist()) == {1} and (outcome.status[half] == 200).all()
    # Back after the windows (and the ejections they caused): both replicas take calls again.
    after = (outcome.arrival_s >= HALF_OUTAGE[1] + 5.0) & (outcome.lane == realtime)
    assert set(outcome.replica[after].tolist()) == {0, 1}


FAILING_BATCH_SERVICE = ServiceModel(
    lanes={
        "realtime": ServerLane(concurrency=10_000, latency=Latency(base_s=0.05, jitter=0.3)),
        # Merged calls on two replicas: a fifth of them answered with a 500, and both replicas down for a while.
        "batch": ServerLane(
            replicas=2,
            concurrency=10_000,
            latency=Latency(base_s=0.2, per_item_s=0.02, jitter=0.3),
            failures=Failures(error_rate=0.2, down=[Outage(**{"from": 22.0, "to": 27.0})]),
        ),
    }
)


def _failing_batching_config(upstreams: dict[str, list[str]]):
    return _batching_config(
        upstreams, outlier={"consecutive_errors": 3, "base_ejection": "2s", "max_ejected_fraction": 1.0}
    )


async def test_parity_holds_when_merged_calls_err_and_the_batch_lane_goes_down():
    _, outcome = await _compare(_embeddings_trace(), _failing_batching_config, FAILING_BATCH_SERVICE)
    batch = outcome.lanes.index("batch")
    assert ((outcome.lane == batch) & (outcome.status == 500)).sum() >= 10  # merged calls that erred, each member
    down = (outcome.arrival_s >= 22.0) & (outcome.arrival_s < 27.0)
    assert ((outcome.lane == outcome.lanes.index("realtime")) & down & ~outcome.pinned).sum() >= 10  # failed over


SCALING_SERVICE = ServiceModel(
    lanes={
        "realtime": ServerLane(concurrency=10_000, latency=Latency(base_s=0.3, jitter=0.3)),
        "batch": ServerLane(concurrency=10_000, latency=Latency(base_s=0.8, jitter=0.3)),
    }
)


def _scaling_config(upstreams: dict[str, list[str]]):
    """An autoscaled real-time lane (one call per replica, a 6 s cold start) under the fleet policy; the batch
    lane bills each busy second dearly, so the plan grows real-time and the stream rides on batch meanwhile."""
    autoscale = {"min": 1, "max": 8, "cold_start": "6s", "scale_up_hold": "2s", "scale_down_hold": "8s"}
    lanes = {
        "realtime": {
            "upstreams": upstreams["realtime"],
            "max_in_flight": 64,
            "queue_timeout": "1h",
            "replica": {"concurrency": 1},
            "autoscale": autoscale,
            "cost": {"per_replica_hour": 3.6},
        },
        "batch": {
            "upstreams": upstreams["batch"],
            "max_in_flight": 64,
            "queue_timeout": "1h",
            "cost": {"per_hour": 360, "billing": "busy"},
        },
    }
    return two_lane_config(
        upstreams["realtime"],
        upstreams["batch"],
        lanes=lanes,
        policy={"type": "fleet", "params": {}},
        switching={"hold": "0s", "cooldown": "2s", "step": "2s", "min_samples": 5, "steps": [0.5, 1.0]},
        metrics={"window": "5s", "slot": "1s"},
        objectives={"pinned": {"latency": "3s"}, "switchable": {"latency": "3s"}},
    )


async def test_parity_holds_while_the_real_time_lane_scales_and_replicas_arrive_a_cold_start_later():
    """Live, the harness brings each replica the router asks for up a cold start later by the fake clock (a new
    loopback upstream the lane's pool is given) and lets replicas go when it asks for fewer; the simulator plays
    the same autoscaler. The same desired replicas over time, and the same decisions, figures and answers."""
    simulated, outcome = await _compare(_trace(), _scaling_config, SCALING_SERVICE)
    wanted = [record for record in simulated if record["kind"] == "ReplicasWanted"]
    assert max(record["replicas"] for record in wanted) >= 3  # the rush grew the lane
    assert any(record["replicas"] < record["was"] for record in wanted)  # and the calm let replicas go
    assert outcome.replica_hours["realtime"] > outcome.end_s / 3600  # more than the one it started with, paid
