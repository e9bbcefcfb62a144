"""Async jobs through a real router, a real job store (SQLite, then Postgres) and loopback upstreams."""

from __future__ import annotations

import asyncio
import threading

from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy

from router.jobs.api import prefers_async
from tests.router.helpers import two_lane_config

ASYNC = {"Prefer": "respond-async"}


def jobs_config(realtime: str, batch: str, database: str, **jobs):
    lanes = {"realtime": {"upstreams": [realtime]}, "batch": {"upstreams": [batch], "max_in_flight": 4}}
    settings = {"database": database, "backoff": "10ms", **jobs}
    return two_lane_config([realtime], [batch], lanes=lanes, jobs=settings)


async def wait_done(client, router, location: str, timeout_s: float = 10.0, headers=None) -> dict:
    async with asyncio.timeout(timeout_s):
        while True:
            async with client.get(f"{router.url}{location}", headers=headers) as response:
                assert response.status == 200
                job = await response.json()
            if job["status"] in ("succeeded", "failed", "cancelled"):
                return job
            await asyncio.sleep(0.02)


async def test_respond_async_stores_the_request_and_runs_it_on_the_batch_lane(
    upstream, start_router, client, job_database
):
    realtime, batch = await upstream(), await upstream()
    router = await start_router(jobs_config(realtime.url, batch.url, job_database))
    async with client.post(f"{router.url}/v1/things?q=1", data=b"payload", headers=ASYNC) as response:
        assert response.status == 202
        assert response.headers["Preference-Applied"] == "respond-async"
        location = response.headers["Location"]
        accepted = await response.json()
    assert location == f"/v1/jobs/{accepted['id']}" and accepted["status"] == "queued"
    job = await wait_done(client, router, location)
    assert job["status"] == "succeeded" and job["attempts"] == 1 and job["error"] is None
    echoed = job["response"]["body"]
    assert job["response"]["status_code"] == 200 and echoed["path"] == "/v1/things?q=1" and echoed["size"] == 7
    assert echoed["headers"]["X-Modeshift-Job"] == accepted["id"] and "Prefer" not in echoed["headers"]
    assert job["response"]["headers"]["X-Modeshift-Lane"] == "batch"
    assert not realtime.seen and len(batch.seen) == 1
    async with client.get(f"{router.url}{location}/result") as response:
        assert response.status == 200 and (await response.json()) == echoed


async def test_an_idempotency_key_gives_the_same_job_and_refuses_a_different_request(
    upstream, start_router, client, job_database
):
    server = await upstream()
    router = await start_router(jobs_config(server.url, server.url, job_database))
    key = {**ASYNC, "Idempotency-Key": "order-17"}
    async with client.post(f"{router.url}/a", data=b"one", headers=key) as first:
        assert first.status == 202
    async with client.post(f"{router.url}/a", data=b"one", headers=key) as again:
        assert again.status == 202 and again.headers["Idempotent-Replayed"] == "true"
        assert again.headers["Location"] == first.headers["Location"]
    async with client.post(f"{router.url}/a", data=b"two", headers=key) as other:
        assert other.status == 422
        assert (await other.json())["error"]["type"] == "idempotency_key_reused"
    await wait_done(client, router, first.headers["Location"])
    assert len(server.seen) == 1


async def test_concurrent_resends_of_one_key_all_get_the_job_stored_first(upstream, start_router, client, job_database):
    server = await upstream()
    router = await start_router(jobs_config(server.url, server.url, job_database))
    async with client.post(f"{router.url}/a", data=b"warm", headers=ASYNC) as response:  # opens the store
        assert response.status == 202
    hold, release = threading.Event(), asyncio.Event()

    async def busy(tx) -> None:  # the store is busy: storing waits
        if job_database.startswith("postgresql://"):
            await tx.execute("LOCK TABLE jobs IN EXCLUSIVE MODE")  # inserts wait for this transaction
            await asyncio.wait_for(release.wait(), 10)
        else:
            hold.wait(10)  # SQLite: the one writer thread waits

    held = asyncio.ensure_future(router.runtime.jobs.database.run(busy))
    key = {**ASYNC, "Idempotency-Key": "k"}

    async def send() -> tuple[int, str, str | None]:
        async with client.post(f"{router.url}/a", data=b"x", headers=key) as response:
            return response.status, response.headers["Location"], response.headers.get("Idempotent-Replayed")

    sends = [asyncio.ensure_future(send()) for _ in range(5)]
    await asyncio.sleep(0.2)  # all five are in: the first waits for the writer, the others for the first
    hold.set()
    release.set()
    await held
    answers = await asyncio.gather(*sends)
    assert {status for status, _, _ in answers} == {202}
    assert len({location for _, location, _ in answers}) == 1
    assert sorted(replayed or "new" for _, _, replayed in answers) == ["new", "true", "true", "true", "true"]
    await asyncio.sleep(0.1)
    async with client.post(f"{router.url}/a", data=b"x", headers=key) as again:  # once stored, every resend
        assert again.status == 202 and again.headers["Location"] == answers[0][1]


async def test_transient_failures_are_retried_and_permanent_ones_recorded(upstream, start_router, client, job_database):
    answers = {"flaky": [503, 502, 200], "bad": [400], "down": [503, 503, 503, 503]}

    async def handler(request: web.Request) -> web.Response:
        status = answers[request.path.strip("/")].pop(0)
        return web.json_response({"status": status}, status=status)

    server = await upstream(handler)
    router = await start_router(jobs_config(server.url, server.url, job_database))
    locations = {}
    for name in answers:
        async with client.post(f"{router.url}/{name}", headers=ASYNC) as response:
            locations[name] = response.headers["Location"]
    flaky, bad, down = [await wait_done(client, router, locations[n]) for n in ("flaky", "bad", "down")]
    assert flaky["status"] == "succeeded" and flaky["attempts"] == 3 and flaky["response"]["status_code"] == 200
    assert bad["status"] == "failed" and bad["attempts"] == 1 and bad["response"]["status_code"] == 400
    assert down["status"] == "failed" and down["attempts"] == 3 and "503" in down["error"]
    assert answers["down"] == [503]  # three tries, not four


async def test_only_a_queued_job_can_be_cancelled(upstream, start_router, client, job_database):
    gate = asyncio.Event()

    async def slow(request: web.Request) -> web.Response:
        await gate.wait()
        return web.json_response({})

    server = await upstream(slow)
    router = await start_router(jobs_config(server.url, server.url, job_database, max_share=0.25))  # one at a time
    locations = []
    for _ in range(2):
        async with client.post(f"{router.url}/a", headers=ASYNC) as response:
            locations.append(response.headers["Location"])
    async with asyncio.timeout(5):
        while not server.seen:
            await asyncio.sleep(0.01)
    async with client.delete(f"{router.url}{locations[1]}") as response:
        assert response.status == 200 and (await response.json())["status"] == "cancelled"
    async with client.delete(f"{router.url}{locations[0]}") as response:
        assert response.status == 409 and (await response.json())["error"]["type"] == "job_started"
    gate.set()
    assert (await wait_done(client, router, locations[0]))["status"] == "succeeded"
    assert (await wait_done(client, router, locations[1]))["status"] == "cancelled"
    assert len(server.seen) == 1
    async with client.get(f"{router.url}{locations[1]}/result") as response:
        assert response.status == 409
        message = (await response.json())["error"]["message"]
    assert message.endswith("is cancelled without an answer (cancelled before it ran)") and "None" not in message


async def test_unknown_jobs_are_404_and_no_database_is_made_until_a_job_arrives(
    upstream, start_router, client, tmp_path
):
    server = await upstream()
    router = await start_router(jobs_config(server.url, server.url, str(tmp_path / "jobs.sqlite3")))
    async with client.get(f"{router.url}/v1/jobs/job_nope") as response:
        assert response.status == 404 and (await response.json())["error"]["type"] == "job_not_found"
    async with client.get(f"{router.url}/plain") as response:
        assert response.status == 200
    assert not (tmp_path / "jobs.sqlite3").exists()


def test_prefer_is_read_as_rfc_7240_tokens():
    def prefers(*values: str) -> bool:
        return prefers_async(CIMultiDictProxy(CIMultiDict([("Prefer", v) for v in values])))

    assert prefers("respond-async")
    assert prefers("return=minimal, Respond-Async; foo=bar")
    assert prefers("wait=10", "respond-async")
    assert not prefers("respond-asynchronously", "return=representation")
    assert not prefers()


async def test_idle_scheduling_waits_while_live_traffic_queues_for_the_lane(
    upstream, start_router, client, job_database
):
    gate = asyncio.Event()

    async def handler(request: web.Request) -> web.Response:
        if request.path == "/live":
            await gate.wait()
        return web.json_response({"path": request.path})

    server = await upstream(handler)
    config = jobs_config(server.url, server.url, job_database, schedule="idle", max_share=1.0)
    config.lanes["batch"] = config.lanes["batch"].model_copy(update={"max_in_flight": 1, "queue_depth": 8})
    router = await start_router(config)
    pinned = {"X-Modeshift-Mode": "batch"}
    live = [asyncio.ensure_future(client.get(f"{router.url}/live", headers=pinned)) for _ in range(2)]
    lane = router.runtime.state.lanes["batch"]
    async with asyncio.timeout(5):
        while lane.gate.waiting < 1:  # one live request holds the slot, one queues behind it
            await asyncio.sleep(0.01)
    async with client.post(f"{router.url}/job", headers=ASYNC) as response:
        location = response.headers["Location"]
    await asyncio.sleep(0.6)  # three runner polls
    async with client.get(f"{router.url}{location}") as response:
        assert (await response.json())["status"] == "queued"
    gate.set()
    for answer in await asyncio.gather(*live):
        assert answer.status == 200
        answer.release()
    assert (await wait_done(client, router, location))["status"] == "succeeded"


async def test_a_job_longer_than_its_lease_keeps_it_by_heartbeat_and_carries_its_id_as_idempotency_key(
    upstream, start_router, client, job_database
):
    keys: list[str] = []

    async def slow(request: web.Request) -> web.Response:
        keys.append(request.headers.get("Idempotency-Key", ""))
        await asyncio.sleep(1.2)  # four leases long
        return web.json_response({"ok": True})

    server = await upstream(slow)
    router = await start_router(jobs_config(server.url, server.url, job_database, lease="300ms"))
    async with client.post(f"{router.url}/a", data=b"x", headers={**ASYNC, "Idempotency-Key": "client-key"}) as r:
        job_id = (await r.json())["id"]
    job = await wait_done(client, router, f"/v1/jobs/{job_id}")
    assert job["status"] == "succeeded" and job["attempts"] == 1
    assert keys == [job_id]  # claimed once, sent once, with the job's own id (not the client's key)
    stored = await router.runtime.jobs.store.get(job_id, router.runtime.jobs.database.owners.of({}))
    assert stored.claims == 1
