"""Chaos for the shared job store: three replicas on one Postgres, two SIGKILLed and started again mid-rush.

Real processes, a real redis-server and a real PostgreSQL. 1,000 async
jobs go to the replicas in turn (a client whose replica is down sends the
same request, with the same Idempotency-Key, to the next one). While they
arrive, two replicas are killed with SIGKILL, one after the other, and
started again. Every accepted job must end with exactly its own answer,
none lost, none without an outcome, and any replica must answer for any
job, whichever one accepted it.
"""

from __future__ import annotations

import asyncio
import random
import sys
from collections import Counter

import aiohttp
from aiohttp import web

from tests.router.cluster.test_chaos import Replica

JOBS = 1000


async def test_a_thousand_jobs_across_replicas_survive_two_replicas_killed_and_restarted(
    redis_server, postgres_server, upstream, tmp_path
):
    runs: Counter[str] = Counter()

    async def work(request: web.Request) -> web.Response:
        payload = await request.json()
        runs[request.headers["X-Modeshift-Job"]] += 1
        await asyncio.sleep(0.005)
        return web.json_response({"n": payload["n"]})

    server = await upstream(work)
    jobs = {"database": postgres_server.new_database(), "lease": "1s", "backoff": "50ms"}
    lanes = {
        "realtime": {"upstreams": [server.url], "timeout": "1s"},
        "batch": {"upstreams": [server.url], "timeout": "1s", "max_in_flight": 16},
    }
    replicas = [
        Replica(f"r{i}", redis_server.url, server.url, server.url, tmp_path, jobs=jobs, lanes=lanes) for i in range(3)
    ]
    for replica in replicas:
        await replica.start()
    accepted: dict[int, tuple[str, str]] = {}  # n -> (the replica that accepted it, Location)
    rng = random.Random(18)

    async def submit(client: aiohttp.ClientSession, n: int) -> None:
        headers = {"Prefer": "respond-async", "Idempotency-Key": f"client-{n}", "Authorization": "Bearer sk-tenant"}
        for attempt in range(1000):
            replica = replicas[(n + attempt) % len(replicas)]
            try:
                async with client.post(f"{replica.url}/v1/work", json={"n": n}, headers=headers) as response:
                    if response.status == 202:
                        accepted[n] = (replica.name, response.headers["Location"])
                        return
            except (TimeoutError, aiohttp.ClientError):
                pass  # this replica is down: the next one
            await asyncio.sleep(0.01)
        raise AssertionError(f"job {n} was never accepted")

    async def submit_all(client: aiohttp.ClientSession) -> None:
        gate = asyncio.Semaphore(24)

        async def one(n: int) -> None:
            async with gate:
                await submit(client, n)

        await asyncio.gather(*(one(n) for n in range(JOBS)))

    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as client:
            submitting = asyncio.ensure_future(submit_all(client))
            for victim in rng.sample(replicas, 2):
                await asyncio.sleep(rng.uniform(0.3, 0.8))
                await victim.kill()
                await victim.start()
            await asyncio.wait_for(submitting, timeout=120)
            assert len(accepted) == JOBS and len({location for _, location in accepted.values()}) == JOBS

            async def outcome(n: int) -> dict:
                by, location = accepted[n]
                other = next(r for r in replicas if r.name != by)  # any replica answers for any job
                async with asyncio.timeout(120):
                    while True:
                        async with client.get(
                            f"{other.url}{location}", headers={"Authorization": "Bearer sk-tenant"}
                        ) as r:
                            assert r.status == 200, (n, r.status, await r.text())
                            job = await r.json()
                        if job["status"] in ("succeeded", "failed", "cancelled"):
                            return job
                        await asyncio.sleep(0.2)

            outcomes = await asyncio.gather(*(outcome(n) for n in range(JOBS)))
            async with client.get(f"{replicas[0].url}{accepted[0][1]}") as stranger:
                assert stranger.status == 404  # another tenant's job, on any replica
    finally:
        for replica in replicas:
            if replica.process is not None and replica.process.returncode is None:
                await replica.kill()
    assert Counter(job["status"] for job in outcomes) == {"succeeded": JOBS}
    assert all(job["response"]["body"] == {"n": n} for n, job in enumerate(outcomes))
    assert all(runs[job["id"]] >= 1 for job in outcomes)
    assert len({by for by, _ in accepted.values()}) == 3
    print(f"jobs run more than once after a kill: {sum(1 for j in outcomes if runs[j['id']] > 1)}", file=sys.stderr)
