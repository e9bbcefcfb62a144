"""Several routers, one controller: three in-process replicas sharing a real redis-server.

The replicas share one FakeClock (a cluster's control clock is the wall
clock, the same on every host) and tick when the test says; the leader's
lease is a real expiry in Redis (two ticks of 200 ms), so a leader that
stops ticking loses it within 400 ms of real time.
"""

from __future__ import annotations

import asyncio
import json

import aiohttp
import pytest

from configs import ModeshiftConfig
from policies.control.actions import Force
from router.cluster.shared import SharedState
from router.server import RunningRouter, runtime_for
from tests.router.helpers import TOKEN, FakeClock, RouterUnderTest, admin_headers, two_lane_raw

LEASE_S = 0.4


def cluster_config(
    redis_url: str, replica: str, realtime: str, batch: str, *, name: str = "test", batch_lane: str = "batch"
) -> ModeshiftConfig:
    """Two lanes, a static policy, 200 ms ticks, a lease of two; `batch_lane`: the batch lane under another
    name (a rolling change that renamed it on this replica)."""
    raw = two_lane_raw(
        [realtime],
        [batch],
        # Redis gets 2 s to answer: under the whole suite on two cores 0.5 s has run out once (a 503 no_leader).
        cluster={"redis_url": redis_url, "name": name, "replica": replica, "lease_ticks": 2, "redis_timeout": "2s"},
        switching={
            "hold": "0s",
            "cooldown": "10m",
            "step": "1s",
            "min_samples": 5,
            "steps": [0.5, 1.0],
            "tick": "200ms",
        },
    )
    if batch_lane != "batch":
        raw["lanes"] = {"realtime": raw["lanes"]["realtime"], batch_lane: raw["lanes"]["batch"]}
        raw["modes"] = {
            mode: {batch_lane if lane == "batch" else lane: w for lane, w in weights.items()}
            for mode, weights in raw["modes"].items()
        }
    return ModeshiftConfig.model_validate(raw, context={})


@pytest.fixture
async def replicas(redis_server, upstream, monkeypatch):
    monkeypatch.setenv("MODESHIFT_TEST_TOKEN", TOKEN)
    realtime, batch = await upstream(), await upstream()
    clock = FakeClock()
    started: list[RouterUnderTest] = []
    for name in ("r1", "r2", "r3"):
        runtime = runtime_for(
            cluster_config(redis_server.url, name, realtime.url, batch.url), clock=clock, wall_clock=clock
        )
        router = RunningRouter(runtime)
        await router.start(data=("127.0.0.1", 0), admin=("127.0.0.1", 0), ticking=False)
        started.append(RouterUnderTest(router, clock))
    yield started
    for router in started:
        await router.router.stop()


async def tick(*routers: RouterUnderTest, advance_s: float = 0.2) -> None:
    routers[0].clock.advance(advance_s)
    for router in routers:
        await router.runtime.tick_async()


async def until_async(read, wanted, timeout_s: float = 10.0) -> None:
    """Until `await read()` gives `wanted` (what Redis holds now), never for a fixed time."""
    async with asyncio.timeout(timeout_s):
        while await read() != wanted:
            await asyncio.sleep(0.01)


def leaders(routers) -> list[str]:
    return [r.runtime.cluster.replica for r in routers if r.runtime.cluster.leading]


async def test_one_leader_adds_up_every_replicas_traffic_and_a_command_to_any_replica_takes_effect_on_all(replicas):
    await tick(*replicas)
    assert leaders(replicas) == ["r1"]
    assert {r.runtime.cluster.leader for r in replicas} == {"r1"}
    async with aiohttp.ClientSession() as client:
        for n, router in enumerate(replicas):
            for _ in range(n + 2):  # 2, 3 and 4 requests
                async with client.get(f"{router.url}/x") as response:
                    assert response.status == 200
        await tick(*replicas)
        await tick(*replicas)  # the leader reads each replica's publication of the tick before
        cluster_window = replicas[0].runtime.cluster._loop.monitor.lanes["realtime"].read(replicas[0].clock())
        assert cluster_window.window.completions == 9  # 2 + 3 + 4, whichever replica served them

        body = {"mode": "batch", "gradual": False, "reason": "drill"}
        sent = asyncio.ensure_future(client.post(f"{replicas[2].admin_url}/mode", json=body, headers=admin_headers()))
        async with asyncio.timeout(10):
            while not sent.done():  # the replicas tick while the command waits for the leader's answer
                await tick(*replicas)
                await asyncio.sleep(0.02)
        async with sent.result() as response:
            assert response.status == 200, await response.text()
            assert [a["kind"] for a in (await response.json())["actions"]][-1] == "SetWeights"
        await tick(*replicas)
        assert [r.runtime.state.control.weights.as_dict() for r in replicas] == [{"batch": 1.0, "realtime": 0.0}] * 3
        async with client.get(f"{replicas[1].admin_url}/decisions", headers=admin_headers()) as response:
            forced = [line for line in (await response.text()).splitlines() if "drill" in line]
        assert forced and '"leader": "r1"' in forced[0]
        async with client.get(f"{replicas[2].admin_url}/status", headers=admin_headers()) as response:
            cluster = (await response.json())["cluster"]
        assert cluster["leader"] == "r1" and cluster["replica"] == "r3" and cluster["connected"] is True
        assert [r["replica"] for r in cluster["replicas"]] == ["r1", "r2", "r3"]


async def test_a_new_leader_takes_over_within_two_leases_and_carries_the_transition_on(replicas):
    first, *others = replicas
    await tick(*replicas)
    sent = asyncio.ensure_future(others[0].runtime.run_command(Force("batch")))  # the leader does it at a tick
    async with asyncio.timeout(10):
        while not sent.done():
            await tick(*replicas)
            await asyncio.sleep(0.01)
    assert [r.runtime.state.control.controller.view().transition.to_mode for r in replicas] == ["batch"] * 3
    step = first.runtime.state.control.controller.view().transition.step_index
    weights = first.runtime.state.control.weights
    # The leader stops (as if killed): within two leases another replica leads, from the stored state.
    took_over_s = None
    started = asyncio.get_running_loop().time()
    async with asyncio.timeout(10):
        while not leaders(others):
            await asyncio.sleep(0.05)
            await tick(*others, advance_s=0.0)
            took_over_s = asyncio.get_running_loop().time() - started
    assert took_over_s is not None and took_over_s < 2 * LEASE_S + 0.3
    new = next(r for r in others if r.runtime.cluster.leading)
    assert new.runtime.cluster.epoch == 2
    view = new.runtime.state.control.controller.view()
    assert view.transition.to_mode == "batch" and view.transition.step_index == step
    assert new.runtime.state.control.weights == weights
    # The old leader comes back: its lease is gone, so it follows the new one.
    await tick(*replicas)
    assert leaders(replicas) == [new.runtime.cluster.replica]
    assert first.runtime.cluster.leader == new.runtime.cluster.replica


async def test_a_write_with_a_stale_epoch_is_refused(redis_server):
    a, b = SharedState(redis_server.url, "fence", timeout_s=0.5), SharedState(redis_server.url, "fence", timeout_s=0.5)
    try:
        epoch, incarnation = await a.acquire("a", 200)
        assert epoch == 1
        assert await a.write_state("a", 1, json.dumps({"incarnation": incarnation, "epoch": 1, "x": 1}))
        await until_async(lambda: a.redis.exists(a.key("leader")), 0)  # a paused past its lease: Redis let it go
        assert await b.acquire("b", 10_000) == (2, incarnation)
        assert await b.write_state("b", 2, json.dumps({"incarnation": incarnation, "epoch": 2, "x": 2}))
        assert not await a.write_state("a", 1, json.dumps({"incarnation": incarnation, "epoch": 1, "x": 3}))
        assert not await a.renew("a", 1, 200)
        assert json.loads(await b.read_state())["x"] == 2
    finally:
        await a.close()
        await b.close()


async def test_without_redis_every_replica_keeps_its_weights_and_it_recovers_by_itself(replicas, redis_server):
    await tick(*replicas)
    weights = [r.runtime.state.control.weights for r in replicas]
    redis_server.stop()
    await tick(*replicas)
    assert leaders(replicas) == [] and [r.runtime.cluster.connected for r in replicas] == [False] * 3
    assert [r.runtime.state.control.weights for r in replicas] == weights
    async with aiohttp.ClientSession() as client:
        async with client.get(f"{replicas[1].admin_url}/metrics", headers=admin_headers()) as response:
            assert 'modeshift_cluster_connected{replica="r2"} 0.0' in await response.text()
    redis_server.start()  # back when it answers a ping
    await tick(*replicas)
    assert len(leaders(replicas)) == 1 and all(r.runtime.cluster.connected for r in replicas)


async def test_a_replica_that_ticks_by_itself_stops_promptly(redis_server, upstream, monkeypatch):
    monkeypatch.setenv("MODESHIFT_TEST_TOKEN", TOKEN)
    server = await upstream()
    runtime = runtime_for(cluster_config(redis_server.url, "solo", server.url, server.url))  # the wall clock
    router = RunningRouter(runtime)
    await router.start(data=("127.0.0.1", 0), admin=("127.0.0.1", 0))
    async with asyncio.timeout(5):
        while not runtime.cluster.leading:
            await asyncio.sleep(0.05)
    async with asyncio.timeout(5):
        await router.stop()
    shared = SharedState(redis_server.url, "test", timeout_s=0.5)
    try:
        assert await shared.leader() is None  # the lease was given back
    finally:
        await shared.close()
