"""Parity: the live router and the simulator make the same decisions on the same trace.

The live side is the real router (proxy, lanes, runtime) on loopback with a
fake clock, driven event by event: at each arrival the clock is set and the
request sent; the lane's fake upstream holds it until the clock reaches the
completion time the service model gives (the same draw the simulator makes
for that request); a control tick runs at every `switching.tick`. The
simulator plays the same trace through the same config and service model.
Both decision logs, figures and all, must be equal.
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


async def _settle(done, what: str) -> None:
    for _ in range(5000):
        if done():
            return
        await asyncio.sleep(0.001)
    raise AssertionError(f"the router never {what}")


async def _live_decisions(trace) -> list[dict]:
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
    config = _config({lane: server.url for lane, server in upstreams.items()})
    clock = FakeClock(0.0)
    router = RunningRouter(Runtime(config, clock=clock))
    await router.start(data=("127.0.0.1", 0), admin=("127.0.0.1", 0), ticking=False)
    host, port = router.data_address
    monitor = router.runtime.state.control.monitor
    z = np.random.default_rng(SEED).standard_normal(len(trace)).tolist()
    tick_s = config.switching.tick_s
    heap, seq, completed = [(tick_s, 0, "tick", -1)], 0, 0
    tasks = []

    def completions() -> int:
        return sum(window.since_start.completions for window in monitor.lanes.values())

    async def handle(t: float, kind: str, i: int) -> None:
        nonlocal completed, seq
        clock.now = t
        if kind == "tick":
            router.runtime.tick()
            if t < trace[-1].t_s:
                seq += 1
                heapq.heappush(heap, (t + tick_s, seq, "tick", -1))
        else:
            parked.pop(i)[1].set_result(None)
            completed += 1
            await _settle(lambda: completions() == completed, f"recorded request {i}")

    try:
        async with aiohttp.ClientSession() as session:
            for i, request in enumerate(trace):
                while heap and heap[0][0] <= request.t_s:
                    t, _, kind, j = heapq.heappop(heap)
                    await handle(t, kind, j)
                clock.now = request.t_s
                headers = {"X-Trace-Index": str(i)}
                if request.mode is not None:
                    headers["X-Modeshift-Mode"] = request.mode
                tasks.append(asyncio.create_task(session.post(f"http://{host}:{port}/", headers=headers)))
                await _settle(lambda i=i: i in parked, f"forwarded request {i}")
                lane = parked[i][0]
                seq += 1
                done_s = request.t_s + jittered_s(SERVICE.lanes[lane].latency.mean_s(1, 0, 0), 0.3, z[i])
                heapq.heappush(heap, (done_s, seq, "done", i))
            while heap:
                t, _, kind, j = heapq.heappop(heap)
                await handle(t, kind, j)
            for response in await asyncio.gather(*tasks):
                assert response.status == 200
                response.release()
        return router.runtime.decisions.recent()
    finally:
        await router.stop()
        for server in upstreams.values():
            await server.stop()


async def test_the_live_router_and_the_simulator_log_identical_decisions():
    trace = _trace()
    live = await _live_decisions(trace)
    placeholder = {"realtime": "http://127.0.0.1:1", "batch": "http://127.0.0.1:2"}
    simulated = Engine(_config(placeholder), SERVICE, seed=SEED).run(trace).decisions
    kinds = [record["kind"] for record in simulated]
    # The trace moves the mode both ways, so the comparison covers transitions, not just quiet ticks.
    assert kinds.count("TransitionStarted") >= 2 and "TransitionCompleted" in kinds
    assert len(live) == len(simulated)
    for mine, theirs in zip(live, simulated):
        assert _same(mine, theirs), (mine, theirs)


def _same(a, b) -> bool:
    """Equal records, NaN equal to NaN (a figure nobody could know is NaN on both sides)."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, float) and isinstance(b, float) and a != a and b != b:
        return True
    return a == b
