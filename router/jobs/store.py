"""The durable job store: SQLite in WAL mode, one writer thread, group commit.

A job is one HTTP request the router accepted to run later (`Prefer:
respond-async`), with its outcome once it has one. States:

    queued -> running -> succeeded | failed      (running -> queued on a transient failure)
    queued -> cancelled

Durability: `synchronous=FULL` in WAL mode, so a commit has reached the disk
when it returns, and a job is acknowledged only after its commit. All
statements run on one thread that owns the connection; whatever arrives
while a commit is on the disk goes into the next transaction together (group
commit), each operation in its own savepoint so one failure does not undo
the others.

At-least-once: a worker claims jobs with a lease (a random token and an
expiry) and renews it by heartbeat while the job runs. A job whose worker
crashed is claimed again once its lease has run out; an outcome is stored
only by the holder of the current lease, so each job ends with exactly one
outcome however often it ran.

Tenants: every job, file and batch has an owner (router.jobs.tenants); reads
name the owner, and another owner's object is not found. Credentials are
stored apart from the other headers and erased when the job ends. The
file and its WAL are readable by this user only (0600). The schema carries
its version (`PRAGMA user_version`) and is brought up to date at open.

Times are wall-clock seconds passed in by the caller (leases must survive a
restart); nothing here reads a clock.

What must not live here: HTTP (router.jobs.api), running jobs (router.jobs.runner).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import queue
import secrets
import sqlite3
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from multidict import CIMultiDict

from router.jobs.files import FileDirectory
from router.jobs.tenants import KEY_BYTES, Owners, credentials_of

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    created_at REAL NOT NULL,
    state TEXT NOT NULL,
    method TEXT NOT NULL,
    target TEXT NOT NULL,
    headers TEXT NOT NULL,
    body BLOB NOT NULL,
    idempotency_key TEXT,
    payload_hash TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,  -- tries that ended (a crash ends none)
    claims INTEGER NOT NULL DEFAULT 0,
    not_before REAL NOT NULL DEFAULT 0,
    lease_token TEXT,
    lease_until REAL,
    status_code INTEGER,
    response_headers TEXT,
    response_body BLOB,
    error TEXT,
    finished_at REAL,
    batch_id TEXT,
    custom_id TEXT,
    line INTEGER,
    owner TEXT,  -- router.jobs.tenants. NULL: made before owners existed, seen by the admin API only
    credentials TEXT  -- JSON header pairs, kept only until the job ends
);
CREATE INDEX IF NOT EXISTS jobs_ready ON jobs (state, not_before);
CREATE INDEX IF NOT EXISTS jobs_batch ON jobs (batch_id, line);
CREATE UNIQUE INDEX IF NOT EXISTS jobs_idempotency ON jobs (owner, idempotency_key);
CREATE TABLE IF NOT EXISTS files (
    id TEXT PRIMARY KEY,
    created_at REAL NOT NULL,
    filename TEXT NOT NULL,
    purpose TEXT NOT NULL,
    bytes INTEGER NOT NULL,
    owner TEXT  -- the content is in the file directory (router.jobs.files), named by id
);
CREATE TABLE IF NOT EXISTS batches (
    id TEXT PRIMARY KEY,
    created_at REAL NOT NULL,
    status TEXT NOT NULL,
    record TEXT NOT NULL,
    owner TEXT
);
CREATE TABLE IF NOT EXISTS meta (
    name TEXT PRIMARY KEY,
    value BLOB NOT NULL
);
"""
SCHEMA_VERSION = 1
_GROUP = 512  # operations per transaction at most
FINAL = ("succeeded", "failed", "cancelled")


class IdempotencyConflict(Exception):
    """The key was used before for a different request."""


@dataclass(frozen=True, slots=True)
class NewJob:
    method: str
    target: str  # path and query, as the client sent them
    headers: list[tuple[str, str]]  # the end-to-end headers to send, credentials apart
    body: bytes
    owner: str
    credentials: list[tuple[str, str]]  # stored until the job ends, then erased
    idempotency_key: str | None = None

    def payload_hash(self) -> str:
        digest = hashlib.sha256(f"{self.method} {self.target}\n".encode())
        digest.update(self.body)
        return digest.hexdigest()


@dataclass(frozen=True, slots=True)
class Job:
    id: str
    created_at: float
    state: str
    method: str
    target: str
    headers: list[tuple[str, str]]
    body: bytes
    attempts: int
    claims: int
    status_code: int | None
    response_headers: list[tuple[str, str]] | None
    response_body: bytes | None
    error: str | None
    finished_at: float | None
    lease_token: str | None
    owner: str | None
    credentials: list[tuple[str, str]]


_COLUMNS = (
    "id, created_at, state, method, target, headers, body, attempts, claims, status_code, response_headers, "
    "response_body, error, finished_at, lease_token, owner, credentials"
)


def _job(row: sqlite3.Row) -> Job:
    """A row, read by column name, with its JSON columns decoded."""
    fields = {name: row[name] for name in row.keys() if name in _JOB_FIELDS}
    fields["headers"] = _pairs(fields["headers"])
    fields["response_headers"] = _pairs(fields["response_headers"])
    fields["credentials"] = _pairs(fields["credentials"]) or []
    return Job(**fields)


_JOB_FIELDS = frozenset(Job.__slots__)


def _pairs(stored: str | None) -> list[tuple[str, str]] | None:
    return [tuple(pair) for pair in json.loads(stored)] if stored is not None else None


class _EveryOwner:
    """The admin API's view: every stored object, whoever made it."""

    def __repr__(self) -> str:
        return "EVERY_OWNER"


EVERY_OWNER = _EveryOwner()
Owner = str | _EveryOwner


def owned_by(owner: Owner) -> tuple[str, tuple]:
    """A WHERE clause (and its parameters) that keeps the objects `owner` may see."""
    return ("1 = 1", ()) if owner is EVERY_OWNER else ("owner = ?", (owner,))


class JobStore:
    def __init__(self, path: str | Path):
        self.path = str(path)
        self.files = FileDirectory(f"{self.path}.files")  # the contents of /v1/files
        self._ops: queue.SimpleQueue = queue.SimpleQueue()
        self._ready = threading.Event()
        self._failed: BaseException | None = None
        self._thread = threading.Thread(target=self._serve, name="modeshift-jobs", daemon=True)
        self._thread.start()
        self._ready.wait()
        if self._failed is not None:
            raise self._failed

    # The writer thread.

    def _serve(self) -> None:
        try:
            db = _connect(self.path)
            self.owners = Owners(_migrate(db, self.files))
        except BaseException as exc:  # a bad path: the constructor raises it
            self._failed = exc
            self._ready.set()
            return
        self._ready.set()
        while True:
            ops = [self._ops.get()]
            while len(ops) < _GROUP:
                try:
                    ops.append(self._ops.get_nowait())
                except queue.Empty:
                    break
            if any(op is None for op in ops):
                self._run(db, [op for op in ops if op is not None])
                db.close()
                return
            self._run(db, ops)

    @staticmethod
    def _run(db: sqlite3.Connection, ops: list) -> None:
        outcomes = []
        try:
            db.execute("BEGIN IMMEDIATE")
            for fn, future, loop in ops:
                db.execute("SAVEPOINT op")
                try:
                    outcomes.append((future, loop, fn(db), None))
                    db.execute("RELEASE op")
                except Exception as exc:  # this operation's own failure: the others still commit
                    db.execute("ROLLBACK TO op")
                    db.execute("RELEASE op")
                    outcomes.append((future, loop, None, exc))
            db.execute("COMMIT")  # durable from here: only now are the callers answered
        except Exception as exc:  # the disk, not one operation: nothing of this group was stored
            if db.in_transaction:
                db.execute("ROLLBACK")
            outcomes = [(future, loop, None, exc) for _, future, loop in ops]
        for future, loop, result, error in outcomes:
            loop.call_soon_threadsafe(_settle, future, result, error)

    async def _do(self, fn: Callable[[sqlite3.Connection], Any]) -> Any:
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._ops.put((fn, future, loop))
        return await future

    async def close(self) -> None:
        self._ops.put(None)
        await asyncio.to_thread(self._thread.join)

    # Operations.

    async def submit(self, job: NewJob, now: float) -> tuple[Job, bool]:
        """Store `job`; (the job, True) when new, (the earlier job, False) for its owner's repeated idempotency key."""
        payload_hash = job.payload_hash()

        def insert(db: sqlite3.Connection) -> tuple[Job, bool]:
            if job.idempotency_key is not None:
                row = db.execute(
                    f"SELECT {_COLUMNS}, payload_hash FROM jobs WHERE owner = ? AND idempotency_key = ?",
                    (job.owner, job.idempotency_key),
                ).fetchone()
                if row is not None:
                    if row["payload_hash"] != payload_hash:
                        raise IdempotencyConflict(job.idempotency_key)
                    return _job(row), False
            job_id = f"job_{secrets.token_hex(12)}"
            db.execute(
                "INSERT INTO jobs (id, created_at, state, method, target, headers, body, idempotency_key, payload_hash,"
                " owner, credentials) VALUES (?, ?, 'queued', ?, ?, ?, ?, ?, ?, ?, ?)",
                (job_id, now, job.method, job.target, json.dumps(job.headers), job.body, job.idempotency_key,
                 payload_hash, job.owner, json.dumps(job.credentials)),
            )  # fmt: skip
            return _get(db, job_id, job.owner), True

        return await self._do(insert)

    async def get(self, job_id: str, owner: Owner) -> Job | None:
        """The job, when `owner` may see it; None otherwise, as for a job that does not exist."""
        return await self._do(lambda db: _get(db, job_id, owner))

    async def cancel(self, job_id: str, owner: Owner, now: float) -> Job | None:
        """Cancel a queued job; the job as it is afterwards (unchanged when it had started), or None."""
        mine, mine_args = owned_by(owner)

        def cancel(db: sqlite3.Connection) -> Job | None:
            db.execute(
                f"UPDATE jobs SET state = 'cancelled', finished_at = ?, credentials = NULL WHERE id = ?"
                f" AND state = 'queued' AND {mine}",
                (now, job_id, *mine_args),
            )
            return _get(db, job_id, owner)

        return await self._do(cancel)

    async def claim(self, limit: int, now: float, lease_s: float) -> list[Job]:
        """Up to `limit` jobs that are due, or whose lease ran out, oldest first, leased until now + lease_s."""
        token = secrets.token_hex(8)

        def claim(db: sqlite3.Connection) -> list[Job]:
            rows = db.execute(
                "UPDATE jobs SET state = 'running', lease_token = ?, lease_until = ?, claims = claims + 1"
                " WHERE id IN (SELECT id FROM jobs WHERE (state = 'queued' AND not_before <= ?)"
                " OR (state = 'running' AND lease_until < ?) ORDER BY created_at LIMIT ?)"
                f" RETURNING {_COLUMNS}",
                (token, now + lease_s, now, now, limit),
            ).fetchall()
            return sorted((_job(row) for row in rows), key=lambda j: j.created_at)

        return await self._do(claim) if limit > 0 else []

    async def finish(
        self, job: Job, now: float, *, state: str, status_code: int | None = None,
        headers: list[tuple[str, str]] | None = None, body: bytes | None = None, error: str | None = None,
    ) -> bool:  # fmt: skip
        """Store the job's one outcome; False when the lease was lost (another worker has the job now)."""
        assert state in ("succeeded", "failed")

        def finish(db: sqlite3.Connection) -> bool:
            cursor = db.execute(
                "UPDATE jobs SET state = ?, status_code = ?, response_headers = ?, response_body = ?, error = ?,"
                " finished_at = ?, attempts = attempts + 1, lease_token = NULL, lease_until = NULL, credentials = NULL"
                " WHERE id = ? AND state = 'running' AND lease_token = ?",
                (state, status_code, json.dumps(headers) if headers is not None else None, body, error, now,
                 job.id, job.lease_token),
            )  # fmt: skip
            return cursor.rowcount == 1

        return await self._do(finish)

    async def retry(self, job: Job, not_before: float, error: str, *, counted: bool = True) -> bool:
        """Back to the queue after a transient failure, due again at `not_before`.

        `counted=False` for a try that never reached an upstream (the router's
        own back-pressure): the job waits without using up an attempt.
        """

        def retry(db: sqlite3.Connection) -> bool:
            cursor = db.execute(
                "UPDATE jobs SET state = 'queued', attempts = attempts + ?, not_before = ?, error = ?,"
                " lease_token = NULL, lease_until = NULL WHERE id = ? AND state = 'running' AND lease_token = ?",
                (int(counted), not_before, error, job.id, job.lease_token),
            )
            return cursor.rowcount == 1

        return await self._do(retry)

    async def renew(self, jobs: list[Job], until: float) -> set[str]:
        """Extend the leases of running jobs to `until` (a heartbeat); the ids whose lease was still theirs."""

        def renew(db: sqlite3.Connection) -> set[str]:
            kept = set()
            for job in jobs:
                cursor = db.execute(
                    "UPDATE jobs SET lease_until = ? WHERE id = ? AND state = 'running' AND lease_token = ?",
                    (until, job.id, job.lease_token),
                )
                if cursor.rowcount == 1:
                    kept.add(job.id)
            return kept

        return await self._do(renew) if jobs else set()

    async def release(self, jobs: list[Job]) -> None:
        """Give jobs back to the queue at once (a clean shutdown), keeping their attempts."""

        def release(db: sqlite3.Connection) -> None:
            db.executemany(
                "UPDATE jobs SET state = 'queued', lease_token = NULL, lease_until = NULL"
                " WHERE id = ? AND state = 'running' AND lease_token = ?",
                [(job.id, job.lease_token) for job in jobs],
            )

        await self._do(release)


def _get(db: sqlite3.Connection, job_id: str, owner: Owner) -> Job | None:
    mine, mine_args = owned_by(owner)
    row = db.execute(f"SELECT {_COLUMNS} FROM jobs WHERE id = ? AND {mine}", (job_id, *mine_args)).fetchone()
    return _job(row) if row is not None else None


def _connect(path: str) -> sqlite3.Connection:
    """The database, made readable by this user only: it holds requests and, until their jobs end, credentials.

    SQLite gives the -wal and -shm files the mode of the database file.
    """
    if path != ":memory:" and not path.startswith("file:"):
        os.close(os.open(path, os.O_CREAT | os.O_RDWR, 0o600))
        for existing in (path, f"{path}-wal", f"{path}-shm"):
            if os.path.exists(existing):
                os.chmod(existing, 0o600)
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    db.row_factory = sqlite3.Row
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    return db


def _migrate(db: sqlite3.Connection, files: FileDirectory) -> bytes:
    """Bring the schema to SCHEMA_VERSION in one transaction; the key owners are hashed with."""
    db.execute("BEGIN IMMEDIATE")
    version = db.execute("PRAGMA user_version").fetchone()[0]
    before_owners = version == 0 and db.execute("SELECT 1 FROM sqlite_master WHERE name = 'jobs'").fetchone()
    if before_owners:
        # Version 0 had a table-wide unique idempotency key: the table is made again with one per owner.
        db.execute("ALTER TABLE jobs RENAME TO jobs_v0")
        db.execute("DROP INDEX jobs_ready")
        db.execute("DROP INDEX jobs_batch")
        db.execute("ALTER TABLE files RENAME TO files_v0")
        db.execute("ALTER TABLE batches ADD COLUMN owner TEXT")
    for statement in _SCHEMA.split(";"):
        db.execute(statement)
    row = db.execute("SELECT value FROM meta WHERE name = 'owner_key'").fetchone()
    key = row["value"] if row is not None else secrets.token_bytes(KEY_BYTES)
    if row is None:
        db.execute("INSERT INTO meta (name, value) VALUES ('owner_key', ?)", (key,))
    if before_owners:
        _move_unowned_jobs(db, Owners(key))
        _move_file_contents(db, files)
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
    db.execute("COMMIT")
    return key


def _move_unowned_jobs(db: sqlite3.Connection, owners: Owners) -> None:
    """Version 0 rows into the new table, their owner read from the credentials they were stored with."""
    for row in db.execute("SELECT * FROM jobs_v0").fetchall():
        fields = {name: row[name] for name in row.keys()}
        headers = CIMultiDict(json.loads(fields["headers"]))
        credentials = credentials_of(headers)
        for name, _ in credentials:
            del headers[name]
        fields.update(
            headers=json.dumps(list(headers.items())),
            owner=owners.of(dict(credentials)) if fields["batch_id"] is None else None,  # lines: as their batch
            credentials=json.dumps(credentials) if fields["state"] not in FINAL else None,
        )
        names = ", ".join(fields)
        db.execute(f"INSERT INTO jobs ({names}) VALUES ({', '.join('?' * len(fields))})", tuple(fields.values()))
    db.execute("DROP TABLE jobs_v0")


def _move_file_contents(db: sqlite3.Connection, files: FileDirectory) -> None:
    """Version 0 kept file contents in the database; they move to the file directory, unowned."""
    for row in db.execute("SELECT id, created_at, filename, purpose, bytes, content FROM files_v0").fetchall():
        files.write(row["id"], row["content"])
        db.execute(
            "INSERT INTO files (id, created_at, filename, purpose, bytes) VALUES (?, ?, ?, ?, ?)",
            (row["id"], row["created_at"], row["filename"], row["purpose"], row["bytes"]),
        )
    db.execute("DROP TABLE files_v0")


def _settle(future: asyncio.Future, result: Any, error: BaseException | None) -> None:
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)
