"""Jobs share the batch lane with live traffic: counted in upstream slots, waiting out the router's own 503s."""

from __future__ import annotations

import asyncio

from aiohttp import web

from tests.router.helpers import two_lane_config
from tests.router.jobs.test_jobs import ASYNC, wait_done

BATCH = {"X-Modeshift-Mode": "batch"}


def shared_lane_config(url: str, database: str, *, max_in_flight: int = 4, queue_depth: int = 256, **jobs):
    lanes = {
        "realtime": {"upstreams": [url]},
        "batch": {
            "upstreams": [url],
            "max_in_flight": max_in_flight,
            "queue_depth": queue_depth,
            "batching": {"rule": "hybrid", "max_batch": 64, "max_wait": "20ms"},
        },
    }
    routes = [{"path": "/v1/embeddings", "protocol": "openai-embeddings"}, {"path": "/", "protocol": "http"}]
    settings = {"database": database, "backoff": "10ms", **jobs}
    return two_lane_config([url], [url], lanes=lanes, routes=routes, jobs=settings)


class Recorder:
    """An upstream that counts what it holds at once, per kind of caller, and merged inputs per call."""

    def __init__(self, delay_s: float = 0.05):
        self.delay_s = delay_s
        self.now = {"job": 0, "live": 0}
        self.most = {"job": 0, "live": 0}
        self.inputs_per_call: list[int] = []

    async def __call__(self, request: web.Request) -> web.Response:
        kind = "job" if "X-Modeshift-Job" in request.headers or request.path == "/v1/embeddings" else "live"
        self.now[kind] += 1
        self.most[kind] = max(self.most[kind], self.now[kind])
        try:
            await asyncio.sleep(self.delay_s)
            if request.path == "/v1/embeddings":
                inputs = (await request.json())["input"]
                self.inputs_per_call.append(len(inputs))
                data = [{"object": "embedding", "index": i, "embedding": [0.0]} for i in range(len(inputs))]
                return web.json_response({"object": "list", "data": data, "model": "m", "usage": {}})
            return web.json_response({"path": request.path})
        finally:
            self.now[kind] -= 1


async def submit(client, router, path: str, body: bytes) -> str:
    async with client.post(f"{router.url}{path}", data=body, headers=ASYNC) as response:
        assert response.status == 202
        return response.headers["Location"]


async def test_jobs_that_do_not_merge_hold_at_most_their_share_of_upstream_slots(
    upstream, start_router, client, job_database
):
    recorder = Recorder()
    server = await upstream(recorder)
    router = await start_router(shared_lane_config(server.url, job_database, max_share=0.5))
    locations = [await submit(client, router, f"/job/{i}", b"x") for i in range(30)]
    await asyncio.sleep(0.1)
    lane = router.runtime.state.lanes["batch"]
    for _ in range(10):  # a live request pinned to the batch lane meanwhile: never queued behind jobs
        async with client.get(f"{router.url}/live", headers=BATCH) as response:
            assert response.status == 200
        assert lane.gate.waiting == 0
    for location in locations:
        assert (await wait_done(client, router, location, timeout_s=30))["status"] == "succeeded"
    assert recorder.most["job"] == 2  # half of 4 slots: counted in slots, not in the 128 items they could carry


async def test_jobs_that_merge_share_calls_so_many_run_within_the_same_slots(
    upstream, start_router, client, job_database
):
    recorder = Recorder()
    server = await upstream(recorder)
    router = await start_router(shared_lane_config(server.url, job_database, max_share=0.5))
    locations = [
        await submit(client, router, "/v1/embeddings", b'{"model": "m", "input": "t%d"}' % i) for i in range(100)
    ]
    for location in locations:
        assert (await wait_done(client, router, location, timeout_s=30))["status"] == "succeeded"
    assert max(recorder.inputs_per_call) > 2  # more jobs at once than slots: they rode merged calls
    assert recorder.most["job"] <= 2  # in no more than their share of the lane's calls


async def test_a_job_turned_away_by_the_routers_own_back_pressure_waits_without_using_an_attempt(
    upstream, start_router, client, job_database
):
    release = asyncio.Event()

    async def handler(request: web.Request) -> web.Response:
        if request.path == "/live":
            await release.wait()
        return web.json_response({"path": request.path})

    server = await upstream(handler)
    config = shared_lane_config(server.url, job_database, max_in_flight=1, queue_depth=1, max_share=1.0, attempts=1)
    router = await start_router(config)
    lane = router.runtime.state.lanes["batch"]
    live = [asyncio.ensure_future(client.get(f"{router.url}/live", headers=BATCH)) for _ in range(2)]
    async with asyncio.timeout(5):
        while lane.gate.waiting < 1:  # the slot held, the queue full: the lane refuses (503 lane_full)
            await asyncio.sleep(0.01)
    location = await submit(client, router, "/job", b"x")
    await asyncio.sleep(0.5)
    async with client.get(f"{router.url}{location}") as response:
        job = await response.json()
    assert job["status"] == "queued" and job["attempts"] == 0 and "lane is full" in job["error"]
    release.set()
    for answer in await asyncio.gather(*live):
        answer.release()
    done = await wait_done(client, router, location, timeout_s=15)
    assert done["status"] == "succeeded" and done["attempts"] == 1  # one attempt allowed, and it was enough


async def test_an_upstreams_503_is_never_taken_for_the_routers_own(upstream, start_router, client, job_database):
    async def busy(request: web.Request) -> web.Response:
        return web.json_response(
            {"error": "busy"}, status=503, headers={"X-Modeshift-Refused": "lane_full", "Retry-After": "0"}
        )

    server = await upstream(busy)
    router = await start_router(shared_lane_config(server.url, job_database, attempts=2))
    async with client.get(f"{router.url}/x", headers=BATCH) as response:
        assert response.status == 503 and "X-Modeshift-Refused" not in response.headers
    location = await submit(client, router, "/job", b"x")
    done = await wait_done(client, router, location, timeout_s=15)
    assert done["status"] == "failed" and done["attempts"] == 2  # the upstream's 503s used up its attempts
