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
expiry). A job whose worker crashed is claimed again once its lease has run
out; an outcome is stored only by the holder of the current lease, so each
job ends with exactly one outcome however often it ran.

Times are wall-clock seconds passed in by the caller (leases must survive a
restart); nothing here reads a clock.

What must not live here: HTTP (router.jobs_api), running jobs (router.job_runner).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import queue
import secrets
import sqlite3
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    created_at REAL NOT NULL,
    state TEXT NOT NULL,
    method TEXT NOT NULL,
    target TEXT NOT NULL,
    headers TEXT NOT NULL,
    body BLOB NOT NULL,
    idempotency_key TEXT UNIQUE,
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
    line INTEGER
);
CREATE INDEX IF NOT EXISTS jobs_ready ON jobs (state, not_before);
CREATE INDEX IF NOT EXISTS jobs_batch ON jobs (batch_id, line);
CREATE TABLE IF NOT EXISTS files (
    id TEXT PRIMARY KEY,
    created_at REAL NOT NULL,
    filename TEXT NOT NULL,
    purpose TEXT NOT NULL,
    bytes INTEGER NOT NULL,
    content BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS batches (
    id TEXT PRIMARY KEY,
    created_at REAL NOT NULL,
    status TEXT NOT NULL,
    record TEXT NOT NULL
);
"""
_GROUP = 512  # operations per transaction at most
FINAL = ("succeeded", "failed", "cancelled")


class IdempotencyConflict(Exception):
    """The key was used before for a different request."""


@dataclass(frozen=True, slots=True)
class NewJob:
    method: str
    target: str  # path and query, as the client sent them
    headers: list[tuple[str, str]]  # the end-to-end headers to send (credentials too: guard the file)
    body: bytes
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


_COLUMNS = (
    "id, created_at, state, method, target, headers, body, attempts, claims, status_code, response_headers, "
    "response_body, error, finished_at, lease_token"
)


def _job(row: tuple) -> Job:
    values = list(row)
    values[5] = json.loads(values[5])
    values[10] = json.loads(values[10]) if values[10] is not None else None
    return Job(*values)


class JobStore:
    def __init__(self, path: str | Path):
        self.path = str(path)
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
            db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            db.executescript(_SCHEMA)
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
        """Store `job`; (the job, True) when new, (the earlier job, False) for a repeated idempotency key."""
        payload_hash = job.payload_hash()

        def insert(db: sqlite3.Connection) -> tuple[Job, bool]:
            if job.idempotency_key is not None:
                row = db.execute(
                    f"SELECT {_COLUMNS}, payload_hash FROM jobs WHERE idempotency_key = ?", (job.idempotency_key,)
                ).fetchone()
                if row is not None:
                    if row[-1] != payload_hash:
                        raise IdempotencyConflict(job.idempotency_key)
                    return _job(row[:-1]), False
            job_id = f"job_{secrets.token_hex(12)}"
            db.execute(
                "INSERT INTO jobs (id, created_at, state, method, target, headers, body, idempotency_key, payload_hash)"
                " VALUES (?, ?, 'queued', ?, ?, ?, ?, ?, ?)",
                (job_id, now, job.method, job.target, json.dumps(job.headers), job.body, job.idempotency_key,
                 payload_hash),
            )  # fmt: skip
            return _get(db, job_id), True

        return await self._do(insert)

    async def get(self, job_id: str) -> Job | None:
        return await self._do(lambda db: _get(db, job_id))

    async def cancel(self, job_id: str, now: float) -> Job | None:
        """Cancel a queued job; the job as it is afterwards (unchanged when it had started), or None."""

        def cancel(db: sqlite3.Connection) -> Job | None:
            db.execute(
                "UPDATE jobs SET state = 'cancelled', finished_at = ? WHERE id = ? AND state = 'queued'", (now, job_id)
            )
            return _get(db, job_id)

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
                " finished_at = ?, attempts = attempts + 1, lease_token = NULL, lease_until = NULL"
                " WHERE id = ? AND state = 'running' AND lease_token = ?",
                (state, status_code, json.dumps(headers) if headers is not None else None, body, error, now,
                 job.id, job.lease_token),
            )  # fmt: skip
            return cursor.rowcount == 1

        return await self._do(finish)

    async def retry(self, job: Job, not_before: float, error: str) -> bool:
        """Back to the queue after a transient failure, due again at `not_before`."""

        def retry(db: sqlite3.Connection) -> bool:
            cursor = db.execute(
                "UPDATE jobs SET state = 'queued', attempts = attempts + 1, not_before = ?, error = ?,"
                " lease_token = NULL, lease_until = NULL WHERE id = ? AND state = 'running' AND lease_token = ?",
                (not_before, error, job.id, job.lease_token),
            )
            return cursor.rowcount == 1

        return await self._do(retry)

    async def release(self, jobs: list[Job]) -> None:
        """Give jobs back to the queue at once (a clean shutdown), keeping their attempts."""

        def release(db: sqlite3.Connection) -> None:
            db.executemany(
                "UPDATE jobs SET state = 'queued', lease_token = NULL, lease_until = NULL"
                " WHERE id = ? AND state = 'running' AND lease_token = ?",
                [(job.id, job.lease_token) for job in jobs],
            )

        await self._do(release)


def _get(db: sqlite3.Connection, job_id: str) -> Job | None:
    row = db.execute(f"SELECT {_COLUMNS} FROM jobs WHERE id = ?", (job_id,)).fetchone()
    return _job(row) if row is not None else None


def _settle(future: asyncio.Future, result: Any, error: BaseException | None) -> None:
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)
