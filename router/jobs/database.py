"""The job database: SQLite in WAL mode, one writer thread, group commit, its schema and its owners' key.

Everything the jobs package stores (jobs: router.jobs.store; files and
batches: router.jobs.batch_store) goes through `Database.run`: a function
of the connection, run on the one thread that owns it. Whatever arrives
while a commit is on the disk goes into the next transaction together
(group commit), each operation in its own savepoint so one failure does not
undo the others. Durability: `synchronous=FULL` in WAL mode, so a commit
has reached the disk when `run` returns.

The file and its WAL are readable by this user only (0600): they hold
requests and, until their jobs end, credentials. The schema carries its
version (`PRAGMA user_version`) and is brought up to date at open; the key
owners are hashed with (router.jobs.tenants) is made then and kept here.

What must not live here: what a job, a file or a batch is (the stores), HTTP.
"""

from __future__ import annotations

import asyncio
import json
import os
import queue
import secrets
import sqlite3
import threading
from collections.abc import Callable
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
    credentials TEXT,  -- JSON header pairs, kept only until the job ends
    deadline_at REAL,  -- wall-clock seconds by which the job must have its answer, if it has a deadline
    lane TEXT,  -- the lane it must run on, set when a provider batch gives it back (NULL: the jobs lane)
    provider_batch TEXT  -- the provider batch (provider_batches) it was gathered into, while it is there
);
CREATE INDEX IF NOT EXISTS jobs_ready ON jobs (state, not_before);
CREATE INDEX IF NOT EXISTS jobs_batch ON jobs (batch_id, line);
CREATE UNIQUE INDEX IF NOT EXISTS jobs_idempotency ON jobs (owner, idempotency_key);
CREATE INDEX IF NOT EXISTS jobs_provider ON jobs (provider_batch, state) WHERE provider_batch IS NOT NULL;
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
CREATE TABLE IF NOT EXISTS provider_batches (
    id TEXT PRIMARY KEY,  -- ours (pb_...): the input file's name and the batch's metadata at the provider
    lane TEXT NOT NULL,
    api TEXT NOT NULL,
    endpoint TEXT NOT NULL,
    model TEXT NOT NULL,
    owner TEXT,
    credentials TEXT,  -- JSON header pairs of its jobs' owner, erased when the batch ends
    status TEXT NOT NULL,  -- gathering -> uploading -> submitted -> ended
    created_at REAL NOT NULL,
    lines INTEGER NOT NULL DEFAULT 0,
    bytes INTEGER NOT NULL DEFAULT 0,
    file_id TEXT,
    remote_id TEXT,
    remote_status TEXT,
    polls INTEGER NOT NULL DEFAULT 0,
    failures INTEGER NOT NULL DEFAULT 0,  -- provider calls that failed in a row
    next_poll_at REAL,
    submitted_at REAL,
    ended_at REAL,
    error TEXT
);
CREATE INDEX IF NOT EXISTS provider_batches_open ON provider_batches (status, lane);
CREATE TABLE IF NOT EXISTS meta (
    name TEXT PRIMARY KEY,
    value BLOB NOT NULL
);
"""
SCHEMA_VERSION = 2  # 1: owners; 2: deadlines, lanes and provider batches
_GROUP = 512  # operations per transaction at most
FINAL = ("succeeded", "failed", "cancelled")


class _EveryOwner:
    """The admin API's view: every stored object, whoever made it."""

    def __repr__(self) -> str:
        return "EVERY_OWNER"


EVERY_OWNER = _EveryOwner()
Owner = str | _EveryOwner


def owned_by(owner: Owner) -> tuple[str, tuple]:
    """A WHERE clause (and its parameters) that keeps the objects `owner` may see."""
    return ("1 = 1", ()) if owner is EVERY_OWNER else ("owner = ?", (owner,))


class Database:
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

    async def run(self, fn: Callable[[sqlite3.Connection], Any]) -> Any:
        """`fn(connection)` on the writer thread, in its own savepoint of the next group commit; its result."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._ops.put((fn, future, loop))
        return await future

    async def close(self) -> None:
        self._ops.put(None)
        await asyncio.to_thread(self._thread.join)


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
    db.execute("PRAGMA busy_timeout=10000")  # `serve --workers N`: the processes take the write lock in turn
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
    elif version == 1:
        for column in ("deadline_at REAL", "lane TEXT", "provider_batch TEXT"):
            db.execute(f"ALTER TABLE jobs ADD COLUMN {column}")
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
