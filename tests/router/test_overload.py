"""A rush live: twice the real-time lane's capacity, against upstreams of known capacity.

The upstreams are backends.modeled_server (slots and a service time, no
model), the router runs on the real clock with its control loop ticking
every 100 ms, and the weights are held on the real-time lane (a static
policy), so what keeps the objectives here is admission alone: switchable
requests predicted to miss theirs on the drowning lane are bound to the
batch lane, pinned ones go first in the real-time queue, and nobody waits
for a 503. The objectives (1 s) are twenty times the service time, so a
busy machine's jitter cannot decide the result; a router that let the
queue grow (as it did) misses them for about half the rush.
"""

import asyncio
import random
import time

import aiohttp

from backends.modeled_server import ModeledServer
from router.server import RunningRouter, runtime_for
from tests.router.helpers import two_lane_config, until

RATE_PER_S = 80.0  # the real-time server: 2 slots of 50 ms, 40 req/s
RUSH_S = 3.0
OBJECTIVE_S = 1.0


async def test_a_rush_at_twice_capacity_keeps_the_objectives_by_binding_late(monkeypatch):
    monkeypatch.setenv("MODESHIFT_TEST_TOKEN", "t")
    realtime = ModeledServer(slots=2, base_s=0.05, seed=1)
    batch = ModeledServer(slots=8, base_s=0.05, seed=2)
    await realtime.start()
    await batch.start()
    config = two_lane_config(
        [realtime.url],
        [batch.url],
        # The gate holds what the upstream can run at once (and as many waiting inside it), so the queue is
        # in the router, where admission sees and orders it.
        lanes={
            "realtime": {"upstreams": [realtime.url], "max_in_flight": 4},
            "batch": {"upstreams": [batch.url], "max_in_flight": 16},
        },
        objectives={
            "pinned": {"latency": f"{OBJECTIVE_S}s"},
            "switchable": {"latency": f"{OBJECTIVE_S}s"},
        },
        switching={"tick": "100ms", "hold": "0s", "cooldown": "0s", "step": "1s", "steps": [1.0]},
        metrics={"window": "2s", "slot": "100ms"},
    )
    router = RunningRouter(runtime_for(config))
    await router.start(data=("127.0.0.1", 0), admin=("127.0.0.1", 0))
    host, port = router.data_address
    rng = random.Random(7)
    results: list[tuple[bool, int, str, float]] = []  # pinned, status, lane, latency

    async def send(session: aiohttp.ClientSession, pinned: bool) -> None:
        headers = {"X-Modeshift-Mode": "realtime"} if pinned else {}
        started = time.perf_counter()
        async with session.get(f"http://{host}:{port}/x", headers=headers) as response:
            await response.read()
            lane = response.headers.get("X-Modeshift-Lane", "")
            results.append((pinned, response.status, lane, time.perf_counter() - started))

    try:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
            await send(session, False)  # the lane's service time, measured before the rush
            control = router.runtime.state.control

            def measured() -> bool:  # a tick has seen it answered
                snapshot = control.last_snapshot
                return snapshot is not None and sum(f.completions for f in snapshot.lanes.values()) >= 1

            await until(measured)
            tasks = []
            began = time.perf_counter()
            for i in range(int(RATE_PER_S * RUSH_S)):
                await asyncio.sleep(max(0.0, began + i / RATE_PER_S - time.perf_counter()))
                tasks.append(asyncio.create_task(send(session, rng.random() < 0.1)))
            await asyncio.gather(*tasks)
    finally:
        await router.stop()
        await realtime.stop()
        await batch.stop()

    rush = results[1:]
    switchable = [r for r in rush if not r[0]]
    pinned = [r for r in rush if r[0]]
    assert all(status == 200 for _, status, _, _ in rush), {status for _, status, _, _ in rush}
    assert all(lane == "realtime" for _, _, lane, _ in pinned)
    moved = sum(lane == "batch" for _, _, lane, _ in switchable)
    assert moved > 0.2 * len(switchable)  # the overflow went where it could be served in time
    within = sum(latency <= OBJECTIVE_S for _, _, _, latency in switchable) / len(switchable)
    assert within >= 0.95
    assert sum(latency <= OBJECTIVE_S for _, _, _, latency in pinned) / len(pinned) >= 0.95
