"""What only the Postgres job store does: outages, files as rows, its schema's version, replicas opening it together.

A real PostgreSQL each (tests/servers/postgres.py): the outage tests stop
and start their own server; the others make a database in the session's.
"""

from __future__ import annotations

import asyncio
import os

import psycopg
import pytest

from router.jobs.database import StoreUnavailable
from router.jobs.engines import open_database
from router.jobs.files import TooLarge
from router.jobs.schema import SCHEMA_VERSION
from tests.router.jobs.test_jobs import ASYNC, jobs_config, wait_done
from tests.servers.postgres import PostgresServer

OWN_SERVER_S = 30


@pytest.fixture
def own_postgres():
    """A PostgreSQL of this test's own, to stop and start."""
    server = PostgresServer()
    server.start()
    yield server
    server.remove()


async def test_postgres_down_is_a_503_at_once_live_traffic_goes_on_and_jobs_resume_when_it_is_back(
    upstream, start_router, client, own_postgres
):
    server = await upstream()
    router = await start_router(jobs_config(server.url, server.url, own_postgres.new_database()))
    async with client.post(f"{router.url}/a", data=b"before", headers=ASYNC) as response:
        assert response.status == 202
        before = response.headers["Location"]
    await wait_done(client, router, before)
    own_postgres.stop()
    loop = asyncio.get_running_loop()
    for _ in range(3):  # the first finds the connection broken, the next ones are refused without trying
        started = loop.time()
        async with client.post(f"{router.url}/a", data=b"during", headers=ASYNC) as response:
            assert response.status == 503
            body = await response.json()
            assert body["error"]["type"] == "job_store_unavailable" and body["error"]["request_id"]
            assert response.headers["Retry-After"] == "2"
        assert loop.time() - started < 1.5  # never the pool's wait, let alone a connect timeout
    async with client.get(f"{router.url}/plain") as response:
        assert response.status == 200  # live traffic does not need the job store
    own_postgres.start()
    async with asyncio.timeout(OWN_SERVER_S):
        while True:
            async with client.post(f"{router.url}/a", data=b"after", headers=ASYNC) as response:
                if response.status == 202:
                    after = response.headers["Location"]
                    break
                assert response.status == 503
            await asyncio.sleep(0.2)
    assert (await wait_done(client, router, after))["status"] == "succeeded"
    assert (await wait_done(client, router, before))["status"] == "succeeded"


async def test_a_replica_started_while_postgres_is_down_serves_and_opens_the_store_when_it_answers(
    upstream, start_router, client, own_postgres
):
    server = await upstream()
    database = own_postgres.new_database()
    own_postgres.stop()
    router = await start_router(jobs_config(server.url, server.url, database))
    async with client.get(f"{router.url}/plain") as response:
        assert response.status == 200
    async with client.post(f"{router.url}/a", data=b"x", headers=ASYNC) as response:
        assert response.status == 503 and (await response.json())["error"]["type"] == "job_store_unavailable"
    own_postgres.start()
    async with asyncio.timeout(OWN_SERVER_S):
        while router.runtime.jobs.store is None:  # opened by itself, no request needed
            await asyncio.sleep(0.1)
    async with client.post(f"{router.url}/a", data=b"x", headers=ASYNC) as response:
        assert response.status == 202
        assert (await wait_done(client, router, response.headers["Location"]))["status"] == "succeeded"


async def test_file_contents_larger_than_a_chunk_go_in_rows_whole_and_a_refused_upload_leaves_none(postgres_server):
    database = await open_database(postgres_server.new_database())
    content = os.urandom(2 * 2**20 + 12345)  # three chunks, the last one short

    async def pieces(data: bytes, size: int = 300_000):
        for at in range(0, len(data), size):
            yield data[at : at + size]

    try:
        size = await database.files.receive(
            "file-big", pieces(content), limit=10 * 2**20, on_stall=TimeoutError, stall_s=5
        )
        assert size == len(content) and await database.files.read("file-big") == content
        assert b"".join([chunk async for chunk in database.files.chunks("file-big")]) == content
        with pytest.raises(TooLarge):
            await database.files.receive("file-over", pieces(content), limit=10**6, on_stall=TimeoutError, stall_s=5)
        with pytest.raises(FileNotFoundError):
            await database.files.read("file-over")
        stored = await database.run(lambda tx: tx.all("SELECT DISTINCT file_id FROM file_chunks"))
        assert [row["file_id"] for row in stored] == ["file-big"]  # nothing of the refused upload is left
        await database.files.remove("file-big")
        with pytest.raises(FileNotFoundError):
            await database.files.read("file-big")
    finally:
        await database.close()


async def test_replicas_opening_one_database_together_make_it_once_and_share_the_owners_key(postgres_server):
    url = postgres_server.new_database()
    databases = await asyncio.gather(*(open_database(url) for _ in range(4)))
    try:
        owners = {db.owners.of({"Authorization": "Bearer sk-alice"}) for db in databases}
        assert len(owners) == 1  # one key, made once: a tenant is the same tenant on every replica
    finally:
        for db in databases:
            await db.close()
    with psycopg.connect(url) as conn:
        version = conn.execute("SELECT value FROM meta WHERE name = 'schema_version'").fetchone()[0]
        assert int(bytes(version)) == SCHEMA_VERSION
        conn.execute("UPDATE meta SET value = %s WHERE name = 'schema_version'", (str(SCHEMA_VERSION + 1).encode(),))
    with pytest.raises(RuntimeError, match="newer than this router's"):
        await open_database(url)


async def test_an_unreachable_postgres_at_open_is_store_unavailable_without_the_password():
    with pytest.raises(StoreUnavailable) as refused:
        await open_database("postgresql://modeshift:hunter2@127.0.0.1:1/none")
    assert "hunter2" not in str(refused.value)


async def test_a_job_stored_by_one_replica_wakes_the_runners_of_another_at_once(postgres_server):
    from router.jobs.store import JobStore, NewJob

    url = postgres_server.new_database()
    storing, other = await open_database(url), await open_database(url)
    woken = asyncio.Event()
    try:
        other.on_jobs_ready(woken.set)
        async with asyncio.timeout(5):
            await woken.wait()  # its listener connected: it wakes once on connecting
        woken.clear()
        await JobStore(storing).submit(NewJob("POST", "/a", [], b"x", "alice", []), 1.0)
        async with asyncio.timeout(5):
            await woken.wait()  # NOTIFY on commit, not the next poll of the other replica
    finally:
        await storing.close()
        await other.close()


async def test_a_store_whose_every_connection_is_busy_refuses_the_next_operation_instead_of_queueing_it(
    postgres_server,
):
    from router.jobs import postgres

    database = await open_database(postgres_server.new_database())
    release = asyncio.Event()

    async def busy(tx) -> None:
        await tx.execute("SELECT 1")
        await release.wait()

    holders = [asyncio.ensure_future(database.run(busy)) for _ in range(postgres._POOL_SIZE)]
    try:
        await asyncio.sleep(0.5)  # every pooled connection is held
        async with asyncio.timeout(postgres._WAIT_S + 3):  # refused after the pool's short wait, never later
            with pytest.raises(StoreUnavailable):
                await database.run(lambda tx: tx.one("SELECT 1 AS one"))
    finally:
        release.set()
        await asyncio.gather(*holders, return_exceptions=True)
        await database.close()
