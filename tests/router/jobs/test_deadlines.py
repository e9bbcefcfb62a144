"""Jobs waiting with deadlines count in the capacity rule: the jobs lane asks for the replicas that answer them
in time, with a real router and a real job store (SQLite, then Postgres)."""

from __future__ import annotations

import asyncio

from aiohttp import web

from policies.control.snapshot import BACKLOG_HORIZONS_S
from tests.router.helpers import admin_headers, two_lane_config

SERVICE_S = 0.1
JOBS = 300


async def test_jobs_due_soon_raise_the_jobs_lanes_desired_replicas(upstream, start_router, client, job_database):
    holder: dict = {}
    held = asyncio.Event()

    async def model(request: web.Request) -> web.Response:
        if "X-Modeshift-Job" in request.headers:
            await held.wait()  # the jobs that start wait here: the rest stay queued
        else:
            holder["clock"].advance(SERVICE_S)  # a live call takes 0.1 s of the router's clock
        return web.json_response({})

    server = await upstream(model)
    autoscale = {"min": 1, "max": 20, "scale_up_hold": "0s", "scale_down_hold": "30s", "headroom": 0.2}
    lanes = {
        "realtime": {"upstreams": [server.url]},
        "batch": {
            "upstreams": [server.url],
            "max_in_flight": 4,
            "replica": {"concurrency": 1},
            "autoscale": autoscale,
            "cost": {"per_replica_hour": 2.0},
        },
    }
    config = two_lane_config([server.url], [server.url], lanes=lanes, jobs={"database": job_database})
    router = await start_router(config)
    holder["clock"] = router.clock
    try:
        for _ in range(25):  # live calls on the jobs lane: its service time is measured
            async with client.get(f"{router.url}/x", headers={"X-Modeshift-Mode": "batch"}) as response:
                assert response.status == 200
        router.tick(advance_s=0.0)
        before = router.runtime.state.control.capacity.desired["batch"]
        deadline = {"Prefer": "respond-async", "X-Modeshift-Deadline-Ms": "20000"}  # due within 30 s
        for i in range(JOBS):
            async with client.post(f"{router.url}/v1/work", data=f"{i}".encode(), headers=deadline) as response:
                assert response.status == 202
        runner = router.runtime.jobs.runner
        await runner.count_backlog()
        due = dict(runner.backlog.due_within)
        assert set(due) == set(BACKLOG_HORIZONS_S)
        assert JOBS - 4 <= due[30.0] <= JOBS and due[86400.0] == due[30.0]  # all queued but those running
        actions = router.tick(advance_s=0.0)
        wanted = [a for a in actions if a.kind == "ReplicasWanted" and a.lane == "batch"]
        assert wanted and wanted[0].replicas > before
        # ~296 jobs due within 30 s: about 10 a second, a second of service a second more than the live calls.
        async with client.get(f"{router.admin_url}/capacity", headers=admin_headers()) as response:
            reason = (await response.json())["lanes"]["batch"]["reason"]
        assert "to meet the waiting jobs' deadlines" in reason
    finally:
        held.set()
