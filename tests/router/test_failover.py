"""Upstreams that die: failover, ejection, and no request left hanging."""

import asyncio

from aiohttp import web

from policies.path.retry_budget import RetryBudget
from tests.router.helpers import gather_limited, two_lane_config


def test_retry_budget_is_a_share_of_active_requests_with_a_floor():
    budget = RetryBudget(ratio=0.2, min_concurrent=3)
    budget.active = 100
    assert [budget.try_acquire() for _ in range(21)].count(True) == 20
    budget.release()
    assert budget.try_acquire()
    quiet = RetryBudget(ratio=0.2, min_concurrent=3)
    quiet.active = 1
    assert [quiet.try_acquire() for _ in range(4)] == [True, True, True, False]


async def test_a_dead_upstream_fails_over_and_is_ejected(upstream, start_router, client):
    alive, dead = await upstream(), await upstream()
    dead_url = dead.url
    await dead.stop()
    realtime = {"upstreams": [dead_url, alive.url]}
    config = two_lane_config([dead_url, alive.url], [alive.url], lanes={"realtime": realtime})
    router = await start_router(config)
    for _ in range(20):
        async with client.get(f"{router.url}/x") as response:
            assert response.status == 200
            assert response.headers["X-Modeshift-Lane"] == "realtime"  # the lane's other upstream served it
    pool = router.runtime.state.lanes["realtime"].pool
    dead_entry = next(u for u in pool.upstreams if u.base == dead_url)
    assert dead_entry.ejected(router.clock())
    assert dead_entry.ejections == 1 and dead_entry.consecutive_errors == 0  # out after its first refusal
    assert len(alive.seen) == 20


async def test_back_from_ejection_a_still_dead_upstream_gets_one_probe_not_a_burst(upstream, start_router, client):
    async def slowish(request: web.Request) -> web.Response:
        await asyncio.sleep(0.05)
        return web.Response(text="ok")

    alive, dead = await upstream(slowish), await upstream()
    dead_url = dead.url
    await dead.stop()
    config = two_lane_config([dead_url, alive.url], [alive.url])
    router = await start_router(config)
    async with client.get(f"{router.url}/x") as response:
        assert response.status == 200
    dead_entry = next(u for u in router.runtime.state.lanes["realtime"].pool.upstreams if u.base == dead_url)
    for round_ in range(1, 4):
        router.clock.advance(dead_entry.ejected_until_s - router.clock() + 0.1)  # the ejection has run out
        statuses = await asyncio.gather(*(_status(client, f"{router.url}/x") for _ in range(30)))
        assert statuses == [200] * 30  # the retry budget (at least 3) was never needed by more than the probe
        assert dead_entry.ejections == min(round_ + 1, 10)  # the one probe failed and ejected it again


async def _status(client, url: str) -> int:
    async with client.get(url) as response:
        return response.status


async def test_an_upstream_killed_mid_load_leaves_no_request_hanging(upstream, start_router, client):
    async def slowish(request: web.Request) -> web.Response:
        await asyncio.sleep(0.005)
        return web.Response(text="ok")

    first, second, batch = await upstream(slowish), await upstream(slowish), await upstream(slowish)
    config = two_lane_config(
        [first.url, second.url],
        [batch.url],
        initial_mode="hybrid",
        lanes={"realtime": {"upstreams": [first.url, second.url], "timeout": "5s"}},
    )
    router = await start_router(config)
    outcomes: list[tuple[int, str | None]] = []

    async def one(i: int) -> None:
        if i == 150:
            await first.stop()
        async with client.get(f"{router.url}/x") as response:
            body_type = None
            if response.status >= 500:
                body_type = (await response.json())["error"]["type"]
            else:
                await response.read()
            outcomes.append((response.status, body_type))

    await asyncio.wait_for(gather_limited(600, 20, one), timeout=120)
    assert len(outcomes) == 600
    for status, kind in outcomes:
        assert status == 200 or (status in (502, 503, 504) and kind is not None), (status, kind)
    assert sum(status == 200 for status, _ in outcomes) >= 550
