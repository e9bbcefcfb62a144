"""No accepted job is lost: 2,000 jobs while `modeshift serve` is SIGKILLed and restarted, again and again.

The clients behave as the API asks: each submits with an Idempotency-Key and,
when the router dies under it, submits again with the same key until it gets
its 202. At the end every job the router acknowledged has exactly one
outcome, succeeded, with the answer to its own request (the upstream may have
run a job more than once: execution is at least once, outcomes exactly once).
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import sys
from collections import Counter

import aiohttp
import yaml
from aiohttp import web

from tests.router.helpers import two_lane_raw
from tests.router.test_serve_process import free_port, next_event

JOBS = 2000
KILLS = 4


async def test_sigkill_loses_no_accepted_job(upstream, tmp_path):
    runs: Counter[str] = Counter()

    async def work(request: web.Request) -> web.Response:
        payload = await request.json()
        runs[request.headers["X-Modeshift-Job"]] += 1
        await asyncio.sleep(0.01)
        return web.json_response({"n": payload["n"]})

    server = await upstream(work)
    port = free_port()
    raw = two_lane_raw(
        [server.url],
        [server.url],
        server={"listen": f"127.0.0.1:{port}", "admin_listen": f"127.0.0.1:{free_port()}"},
        lanes={
            "realtime": {"upstreams": [server.url], "timeout": "1s"},
            "batch": {"upstreams": [server.url], "timeout": "1s", "max_in_flight": 32},
        },
        jobs={"database": str(tmp_path / "jobs.sqlite3"), "lease": "1s", "backoff": "50ms"},
    )
    config = tmp_path / "modeshift.yaml"
    config.write_text(yaml.safe_dump(raw))
    url = f"http://127.0.0.1:{port}"

    async def start() -> asyncio.subprocess.Process:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "commands.cli", "serve", "-c", str(config), stderr=asyncio.subprocess.PIPE
        )
        await next_event(process.stderr, "listening")
        asyncio.ensure_future(process.stderr.read())  # keep draining, or a full pipe would block the router
        return process

    router = await start()
    accepted: dict[int, str] = {}
    rng = random.Random(5)

    async def submit(session: aiohttp.ClientSession, n: int) -> None:
        headers = {"Prefer": "respond-async", "Idempotency-Key": f"client-{n}"}
        while True:
            try:
                async with session.post(f"{url}/v1/work", json={"n": n}, headers=headers) as response:
                    if response.status == 202:
                        accepted[n] = response.headers["Location"]
                        return
            except (TimeoutError, aiohttp.ClientError):
                pass
            await asyncio.sleep(0.05)  # the router is down: try again, same key

    async def submit_all(session: aiohttp.ClientSession) -> None:
        gate = asyncio.Semaphore(16)

        async def one(n: int) -> None:
            async with gate:
                await submit(session, n)

        await asyncio.gather(*(one(n) for n in range(JOBS)))

    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
            submitting = asyncio.ensure_future(submit_all(session))
            for _ in range(KILLS):
                await asyncio.sleep(rng.uniform(0.5, 1.5))
                router.send_signal(signal.SIGKILL)
                await router.wait()
                router = await start()
            await asyncio.wait_for(submitting, timeout=120)
            assert len(accepted) == JOBS and len(set(accepted.values())) == JOBS

            async def outcome(n: int) -> dict:
                async with asyncio.timeout(120):
                    while True:
                        async with session.get(f"{url}{accepted[n]}") as response:
                            job = await response.json()
                        if job["status"] not in ("queued", "running"):
                            return job
                        await asyncio.sleep(0.2)

            jobs = await asyncio.gather(*(outcome(n) for n in range(JOBS)))
    finally:
        if router.returncode is None:
            router.send_signal(signal.SIGTERM)
            await router.wait()
    assert Counter(job["status"] for job in jobs) == {"succeeded": JOBS}
    assert all(job["response"]["body"] == {"n": n} for n, job in enumerate(jobs))
    assert all(runs[job["id"]] >= 1 for job in jobs)
    print(f"jobs run more than once after a crash: {sum(1 for job in jobs if runs[job['id']] > 1)}", file=sys.stderr)
    assert os.path.exists(tmp_path / "jobs.sqlite3")
