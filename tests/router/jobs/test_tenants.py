"""Tenants are walls: jobs, files and batches belong to the credential that made them.

Real router, real SQLite store, loopback upstream; three callers: two keys
and one without any.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import stat

from aiohttp import FormData, web

from router.jobs.schema import SCHEMA_VERSION
from router.jobs.sqlite import SqliteDatabase
from router.jobs.store import JobStore
from router.jobs.tenants import Owners
from tests.router.helpers import admin_headers
from tests.router.jobs.test_jobs import ASYNC, jobs_config, wait_done
from tests.router.jobs.test_openai_batches import jsonl, request_line

ALICE = {"Authorization": "Bearer sk-alice"}
BOB = {"Authorization": "Bearer sk-bob"}
NOBODY: dict[str, str] = {}


async def upload(client, router, who: dict, content: bytes) -> dict:
    form = FormData()
    form.add_field("purpose", "batch")
    form.add_field("file", content, filename="in.jsonl")
    async with client.post(f"{router.url}/v1/files", data=form, headers=who) as response:
        assert response.status == 200, await response.text()
        return await response.json()


async def status_of(client, method: str, url: str, who: dict, **kwargs) -> int:
    async with client.request(method, url, headers=who, **kwargs) as response:
        if response.status == 404:
            body = await response.json()
            assert body["error"]["request_id"] and body["error"]["type"].endswith("not_found")
        return response.status


async def test_another_credential_or_none_sees_nothing_of_a_tenants_jobs_files_and_batches(
    upstream, start_router, client, job_database
):
    seen: list[str | None] = []

    async def upstream_handler(request):
        seen.append(request.headers.get("Authorization"))
        return web.json_response({"object": "list", "data": [{"embedding": [1.0], "index": 0}]})

    server = await upstream(upstream_handler)
    router = await start_router(jobs_config(server.url, server.url, job_database))
    file = await upload(client, router, ALICE, jsonl([request_line("a", "x")]))
    async with client.post(
        f"{router.url}/v1/batches",
        json={"input_file_id": file["id"], "endpoint": "/v1/embeddings", "completion_window": "24h"},
        headers=ALICE,
    ) as response:
        assert response.status == 200
        batch = await response.json()
    async with client.post(f"{router.url}/v1/embeddings", data=b"{}", headers={**ASYNC, **ALICE}) as response:
        location = response.headers["Location"]

    for other in (BOB, NOBODY):
        for method, path in [
            ("GET", f"/v1/files/{file['id']}"),
            ("GET", f"/v1/files/{file['id']}/content"),
            ("DELETE", f"/v1/files/{file['id']}"),
            ("GET", f"/v1/batches/{batch['id']}"),
            ("POST", f"/v1/batches/{batch['id']}/cancel"),
            ("GET", location),
            ("GET", f"{location}/result"),
            ("DELETE", location),
        ]:
            assert await status_of(client, method, f"{router.url}{path}", other) == 404, (other, method, path)
        for listing in ("/v1/files", "/v1/batches"):
            async with client.get(f"{router.url}{listing}", headers=other) as response:
                assert (await response.json())["data"] == []
        async with client.post(
            f"{router.url}/v1/batches",
            json={"input_file_id": file["id"], "endpoint": "/v1/embeddings"},
            headers=other,
        ) as response:
            assert response.status == 404  # nobody runs lines from another tenant's file

    job = await wait_done(client, router, location, headers=ALICE)
    assert job["status"] == "succeeded"
    async with client.get(f"{router.url}/v1/files", headers=ALICE) as response:
        assert [f["id"] for f in (await response.json())["data"]] == [file["id"]]
    async with client.get(f"{router.url}/v1/files/{file['id']}/content", headers=ALICE) as response:
        assert response.status == 200 and json.loads(await response.read())["custom_id"] == "a"
    assert set(seen) == {"Bearer sk-alice"}  # the job and the batch line ran with their creator's key

    async with client.get(f"{router.admin_url}/v1/files/{file['id']}", headers=admin_headers()) as response:
        seen_by_admin = await response.json()
    async with client.get(f"{router.admin_url}{location}", headers=admin_headers()) as response:
        job_by_admin = await response.json()
    alice = router.runtime.jobs.database.owners.of(ALICE)
    assert seen_by_admin["owner"] == job_by_admin["owner"] == alice
    assert "sk-alice" not in alice


async def test_an_idempotency_key_is_each_tenants_own(upstream, start_router, client, job_database):
    server = await upstream()
    router = await start_router(jobs_config(server.url, server.url, job_database))
    locations = []
    for who in (ALICE, BOB):
        async with client.post(
            f"{router.url}/a", data=b"same", headers={**ASYNC, **who, "Idempotency-Key": "k1"}
        ) as response:
            assert response.status == 202 and "Idempotent-Replayed" not in response.headers
            locations.append(response.headers["Location"])
    assert locations[0] != locations[1]


async def test_the_store_is_private_to_this_user_and_forgets_credentials_when_a_job_ends(
    upstream, start_router, client, tmp_path
):
    server = await upstream()
    router = await start_router(jobs_config(server.url, server.url, str(tmp_path / "jobs.sqlite3")))
    async with client.post(f"{router.url}/a", data=b"x", headers={**ASYNC, **ALICE}) as response:
        location = response.headers["Location"]
    await upload(client, router, ALICE, jsonl([request_line("a", "x")]))
    await wait_done(client, router, location, headers=ALICE)
    database = tmp_path / "jobs.sqlite3"
    for path in (database, tmp_path / "jobs.sqlite3-wal", tmp_path / "jobs.sqlite3-shm"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    files = tmp_path / "jobs.sqlite3.files"
    assert stat.S_IMODE(files.stat().st_mode) == 0o700
    assert [stat.S_IMODE(p.stat().st_mode) for p in files.iterdir()] == [0o600]
    with sqlite3.connect(database) as db:
        headers, credentials = db.execute("SELECT headers, credentials FROM jobs").fetchone()
    assert credentials is None and "sk-alice" not in headers


def test_a_version_0_database_is_brought_up_to_date_with_owners_read_from_its_jobs(tmp_path):
    path = tmp_path / "old.sqlite3"
    with sqlite3.connect(path) as db:
        db.executescript(VERSION_0_SCHEMA)
        db.execute(
            "INSERT INTO jobs (id, created_at, state, method, target, headers, body, idempotency_key, payload_hash)"
            " VALUES ('job_1', 1.0, 'queued', 'POST', '/a', ?, x'00', 'k', 'h')",
            (json.dumps([["Content-Type", "text/plain"], ["Authorization", "Bearer sk-alice"]]),),
        )
        db.execute("INSERT INTO files VALUES ('file-1', 1.0, 'in.jsonl', 'batch', 3, x'616263')")

    async def check() -> None:
        database = SqliteDatabase(path)
        store = JobStore(database)
        try:
            alice = Owners(_owner_key(path)).of(ALICE)
            assert database.owners.of(ALICE) == alice
            job = await store.get("job_1", alice)
            assert job is not None and job.state == "queued"
            assert job.headers == [("Content-Type", "text/plain")]
            assert job.credentials == [("authorization", "Bearer sk-alice")]
            assert await store.get("job_1", Owners(_owner_key(path)).of(BOB)) is None
            assert await database.files.read("file-1") == b"abc"
        finally:
            await database.close()

    asyncio.run(check())
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert "content" not in [row[1] for row in db.execute("PRAGMA table_info(files)")]


def _owner_key(path) -> bytes:
    with sqlite3.connect(path) as db:
        return db.execute("SELECT value FROM meta WHERE name = 'owner_key'").fetchone()[0]


VERSION_0_SCHEMA = """
CREATE TABLE jobs (
    id TEXT PRIMARY KEY, created_at REAL NOT NULL, state TEXT NOT NULL, method TEXT NOT NULL, target TEXT NOT NULL,
    headers TEXT NOT NULL, body BLOB NOT NULL, idempotency_key TEXT UNIQUE, payload_hash TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0, claims INTEGER NOT NULL DEFAULT 0, not_before REAL NOT NULL DEFAULT 0,
    lease_token TEXT, lease_until REAL, status_code INTEGER, response_headers TEXT, response_body BLOB, error TEXT,
    finished_at REAL, batch_id TEXT, custom_id TEXT, line INTEGER
);
CREATE INDEX jobs_ready ON jobs (state, not_before);
CREATE INDEX jobs_batch ON jobs (batch_id, line);
CREATE TABLE files (
    id TEXT PRIMARY KEY, created_at REAL NOT NULL, filename TEXT NOT NULL, purpose TEXT NOT NULL,
    bytes INTEGER NOT NULL, content BLOB NOT NULL
);
CREATE TABLE batches (id TEXT PRIMARY KEY, created_at REAL NOT NULL, status TEXT NOT NULL, record TEXT NOT NULL);
"""


VERSION_1_JOBS = """
CREATE TABLE jobs (
    id TEXT PRIMARY KEY, created_at REAL NOT NULL, state TEXT NOT NULL, method TEXT NOT NULL, target TEXT NOT NULL,
    headers TEXT NOT NULL, body BLOB NOT NULL, idempotency_key TEXT, payload_hash TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0, claims INTEGER NOT NULL DEFAULT 0, not_before REAL NOT NULL DEFAULT 0,
    lease_token TEXT, lease_until REAL, status_code INTEGER, response_headers TEXT, response_body BLOB, error TEXT,
    finished_at REAL, batch_id TEXT, custom_id TEXT, line INTEGER, owner TEXT, credentials TEXT
);
CREATE INDEX jobs_ready ON jobs (state, not_before);
CREATE INDEX jobs_batch ON jobs (batch_id, line);
CREATE UNIQUE INDEX jobs_idempotency ON jobs (owner, idempotency_key);
CREATE TABLE files (id TEXT PRIMARY KEY, created_at REAL NOT NULL, filename TEXT NOT NULL, purpose TEXT NOT NULL,
                    bytes INTEGER NOT NULL, owner TEXT);
CREATE TABLE batches (id TEXT PRIMARY KEY, created_at REAL NOT NULL, status TEXT NOT NULL, record TEXT NOT NULL,
                      owner TEXT);
CREATE TABLE meta (name TEXT PRIMARY KEY, value BLOB NOT NULL);
INSERT INTO meta VALUES ('owner_key', x'00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff');
PRAGMA user_version = 1;
"""


def test_a_version_1_database_gains_deadlines_lanes_and_provider_batches_and_keeps_its_jobs(tmp_path):
    path = tmp_path / "v1.sqlite3"
    with sqlite3.connect(path) as db:
        db.executescript(VERSION_1_JOBS)
        db.execute(
            "INSERT INTO jobs (id, created_at, state, method, target, headers, body, payload_hash, owner, credentials)"
            " VALUES ('job_1', 1.0, 'queued', 'POST', '/a', '[]', x'00', 'h', 'alice', '[]')"
        )

    async def check() -> None:
        database = SqliteDatabase(path)
        try:
            (job,) = await JobStore(database).claim(5, now=10.0, lease_s=5.0)
            assert job.id == "job_1" and job.deadline_at is None and job.lane is None and job.provider_batch is None
        finally:
            await database.close()

    asyncio.run(check())
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 3
        assert db.execute("SELECT COUNT(*) FROM provider_batches").fetchone()[0] == 0
