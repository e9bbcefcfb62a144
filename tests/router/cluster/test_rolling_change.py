"""A rolling config change on real processes: three `modeshift serve` replicas on a real redis-server, the
batch lane renamed on one of them and `/reload`ed there (issue 29 item 3: the other two answered 500 to
every request, `KeyError` in the data plane, when one side's state named lanes the other lacked).

Whichever replica leads, the replicas whose lanes differ from the leader's refuse its state, keep serving
with the weights they have, and say so in /status; nobody answers 500.
"""

from __future__ import annotations

import asyncio

import aiohttp
import yaml

from tests.router.cluster.test_chaos import Replica
from tests.router.helpers import TOKEN


async def test_a_lane_renamed_on_one_replica_breaks_no_replica(redis_server, upstream, tmp_path):
    realtime, batch = await upstream(), await upstream()
    replicas = [Replica(f"r{i}", redis_server.url, realtime.url, batch.url, tmp_path) for i in range(3)]
    for replica in replicas:
        await replica.start()
    renamed = replicas[2]
    try:
        async with aiohttp.ClientSession() as client:
            raw = yaml.safe_load(renamed.config.read_text())
            raw["lanes"]["cheap"] = raw["lanes"].pop("batch")
            raw["modes"] = {
                name: {("cheap" if lane == "batch" else lane): w for lane, w in weights.items()}
                for name, weights in raw["modes"].items()
            }
            renamed.config.write_text(yaml.safe_dump(raw))
            headers = {"Authorization": f"Bearer {TOKEN}"}
            async with client.post(f"{renamed.admin}/reload", headers=headers) as response:
                assert response.status == 200, await response.text()
            async with asyncio.timeout(30):  # until the leader has read every replica's publication since
                while not await _leader_lists_one_disagreeing(replicas, client):
                    await asyncio.sleep(0.1)
            for _ in range(10):
                for replica in replicas:
                    async with client.get(f"{replica.url}/work") as response:
                        assert response.status == 200, (replica.name, await response.text())
            views = [await replica.status(client) for replica in replicas]
            leader = next(v for v in views if v["cluster"]["leading"])
            for replica, view in zip(replicas, views):
                same_lanes = (replica is renamed) == (leader["cluster"]["replica"] == renamed.name)
                assert view["cluster"]["agrees"] is same_lanes, (replica.name, view["cluster"])
            listed = {r["replica"]: r["agrees"] for r in leader["cluster"]["replicas"]}
            assert sorted(listed.values()) == [False, True, True]
    finally:
        for replica in replicas:
            await replica.kill()


async def _leader_lists_one_disagreeing(replicas: list[Replica], client: aiohttp.ClientSession) -> bool:
    views = [await replica.status(client) for replica in replicas]
    leader = next((view for view in views if view["cluster"]["leading"]), None)
    if leader is None:
        return False
    agrees = [entry["agrees"] for entry in leader["cluster"]["replicas"]]
    return sorted(agrees) == [False, True, True]
