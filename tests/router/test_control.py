"""The control loop live: transitions judged by the traffic's objectives, rolling back when the batch lane fails them.

The router's clock is a FakeClock. Requests go one at a time, and the batch
upstream moves the clock forward by its "service time", so lane latencies
are exact and the test never waits for a timer.
"""

from aiohttp import web

from policies.control.actions import Force, RolledBack, StepAdvanced
from tests.router.helpers import two_lane_config


async def send(client, router, n: int) -> list[int]:
    statuses = []
    for _ in range(n):
        async with client.get(f"{router.url}/x") as response:
            await response.read()
            statuses.append(response.status)
    return statuses


def kinds(actions) -> list[str]:
    return [type(a).__name__ for a in actions]


async def test_a_transition_rolls_back_when_the_batch_upstream_starts_failing(upstream, start_router, client):
    failing = False

    async def batch_handler(request: web.Request) -> web.Response:
        return web.Response(status=500 if failing else 200, text="batch")

    realtime, batch = await upstream(), await upstream(batch_handler)
    router = await start_router(two_lane_config([realtime.url], [batch.url]))
    runtime = router.runtime
    assert await send(client, router, 20) == [200] * 20  # a healthy pre-transition baseline
    runtime.command(Force(mode="batch", gradual=True, reason="test"))
    assert runtime.state.control.weights.as_dict() == {"realtime": 0.5, "batch": 0.5}
    failing = True
    statuses = await send(client, router, 40)
    assert 500 in statuses  # the upstream's own 500 reaches the client as it was
    actions = router.tick()
    rolled = [a for a in actions if isinstance(a, RolledBack)]
    assert rolled and rolled[0].cause == "regression" and rolled[0].lane == "batch"
    assert "errors in" in rolled[0].reason and rolled[0].traffic_class == "switchable"
    assert runtime.state.control.weights.as_dict() == {"realtime": 1.0, "batch": 0.0}
    assert any(d["kind"] == "RolledBack" for d in runtime.decisions.recent())
    batch_seen = len(batch.seen)
    assert await send(client, router, 10) == [200] * 10
    assert len(batch.seen) == batch_seen


async def _slowing_batch(upstream, start_router, client, slower_s: float) -> tuple[list, object]:
    """Half the traffic to a batch lane answering in 10 ms, then all of it, then the lane slows to `slower_s`."""
    service_s = 0.01
    router_clock = None

    async def batch_handler(request: web.Request) -> web.Response:
        router_clock.advance(service_s)
        return web.Response(text="batch")

    realtime, batch = await upstream(), await upstream(batch_handler)
    objectives = {"switchable": {"latency": "30ms", "percentile": 99}}
    router = await start_router(two_lane_config([realtime.url], [batch.url], objectives=objectives))
    router_clock = router.clock
    runtime = router.runtime
    runtime.command(Force(mode="batch", gradual=True, reason="test"))
    await send(client, router, 40)  # step 0 (50/50): all within 30 ms
    assert StepAdvanced.__name__ in kinds(router.tick())
    assert runtime.state.control.weights.as_dict() == {"realtime": 0.0, "batch": 1.0}
    service_s = slower_s
    await send(client, router, 20)
    return router.tick(), runtime


async def test_a_transition_rolls_back_when_the_batch_lane_misses_the_objective(upstream, start_router, client):
    actions, runtime = await _slowing_batch(upstream, start_router, client, 0.05)  # past the 30 ms promised
    rolled = [a for a in actions if isinstance(a, RolledBack)]
    assert rolled and rolled[0].cause == "regression" and rolled[0].lane == "batch"
    assert "switchable 0.0% within objective" in rolled[0].reason
    assert runtime.state.control.weights.as_dict() == {"realtime": 1.0, "batch": 0.0}


async def test_a_batch_lane_slower_than_before_but_within_the_objective_is_kept(upstream, start_router, client):
    actions, runtime = await _slowing_batch(upstream, start_router, client, 0.025)  # 2.5x slower, inside 30 ms
    assert "RolledBack" not in kinds(actions) and "TransitionCompleted" in kinds(actions)
    assert runtime.state.control.controller.mode == "batch"


def test_ticks_are_stamped_when_due_however_late_the_timer_wakes():
    # A busy loop wakes the ticker a few ms late, by a different amount each
    # time, and uvloop (the router's loop) keeps time in whole ms; the ticks
    # must still be one `tick` apart on the policies' clock, or a 5-tick
    # step would last 5 or 6 ticks by chance.
    import asyncio
    import random
    import time

    import uvloop

    from router.server import runtime_for

    async def scenario() -> list[float]:
        config = two_lane_config(["http://127.0.0.1:1"], ["http://127.0.0.1:2"], switching={"tick": "100ms"})
        runtime = runtime_for(config)
        rng = random.Random(1)

        async def busy() -> None:
            while True:
                time.sleep(rng.uniform(0.0, 0.03))  # blocks the loop, as a burst of work would
                await asyncio.sleep(rng.uniform(0.0, 0.02))

        hog = asyncio.create_task(busy())
        runtime.start()
        await asyncio.sleep(1.2)
        hog.cancel()
        await runtime.close()
        return [sample["at_s"] for sample in runtime.history.after()]

    stamps = uvloop.run(scenario())
    assert len(stamps) >= 8
    gaps = [b - a for a, b in zip(stamps, stamps[1:])]
    assert all(abs(gap - 0.1) < 1e-6 for gap in gaps), gaps
