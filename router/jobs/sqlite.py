"""The job database on SQLite, the embedded default: WAL mode, one writer thread, group commit, its schema.

Every store operation (router.jobs.database.Tx) runs on the one thread that
owns the connection. Whatever arrives while a commit is on the disk goes
into the next transaction together (group commit), each operation in its
own savepoint so one failure does not undo the others. Durability:
`synchronous=FULL` in WAL mode, so a commit has reached the disk when `run`
returns. Processes on one host (`serve --workers N`) share the file and
take the write lock in turn.

The file and its WAL are readable by this user only (0600): they hold
requests and, until their jobs end, credentials. The schema carries its
version (`PRAGMA user_version`) and is brought up to date at open; the key
owners are hashed with (router.jobs.tenants) is made then and kept here.
File contents live in a directory beside it (router.jobs.files).

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
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from multidict import CIMultiDict

from router.jobs.database import FINAL, Row, Tx
from router.jobs.files import FileDirectory
from router.jobs.schema import SCHEMA_VERSION, TABLES
from router.jobs.tenants import KEY_BYTES, Owners, credentials_of

T = TypeVar("T")
_GROUP = 512  # operations per transaction at most


class SqliteDatabase:
    def __init__(self, path: str | Path, files: str | Path | None = None):
        self.path = str(path)
        self.files = FileDirectory(files if files is not None else f"{self.path}.files")
        self._ops: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._ready = threading.Event()
        self._failed: BaseException | None = None
        self._thread = threading.Thread(target=self._serve, name="modeshift-jobs", daemon=True)
        self._thread.start()
        self._ready.wait()
        if self._failed is not None:
            raise self._failed

    @classmethod
    async def open(cls, path: str | Path, files: str | Path | None = None) -> SqliteDatabase:
        return await asyncio.to_thread(cls, path, files)

    def _serve(self) -> None:
        try:
            db = _connect(self.path)
            self.owners = Owners(_migrate(db, self.files))
        except BaseException as exc:  # a bad path: the constructor raises it
            self._failed = exc
            self._ready.set()
            return
        self._ready.set()
        tx = _SqliteTx(db)
        while True:
            ops = [self._ops.get()]
            while len(ops) < _GROUP:
                try:
                    ops.append(self._ops.get_nowait())
                except queue.Empty:
                    break
            if any(op is None for op in ops):
                self._run(db, tx, [op for op in ops if op is not None])
                db.close()
                return
            self._run(db, tx, ops)

    @staticmethod
    def _run(db: sqlite3.Connection, tx: _SqliteTx, ops: list[Any]) -> None:
        outcomes: list[tuple[Any, Any, Any, Exception | None]] = []
        try:
            db.execute("BEGIN IMMEDIATE")
            for op, future, loop in ops:
                db.execute("SAVEPOINT op")
                try:
                    outcomes.append((future, loop, _at_once(op(tx)), None))
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

    async def run(self, op: Callable[[Tx], Awaitable[T]]) -> T:
        """`op` on the writer thread, in its own savepoint of the next group commit; its result."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._ops.put((op, future, loop))
        return await future

    def on_jobs_ready(self, wake: Callable[[], None]) -> None:
        """Nothing to listen to: processes sharing the file find each other's jobs when their runners poll."""

    async def close(self) -> None:
        self._ops.put(None)
        await asyncio.to_thread(self._thread.join)


class _SqliteTx:
    """The transaction the writer thread has open. Its methods never wait: an operation runs start to end at once."""

    skip_locked = ""

    def __init__(self, db: sqlite3.Connection):
        self.db = db

    async def execute(self, sql: str, args: Sequence[Any] = ()) -> int:
        return self.db.execute(sql, args).rowcount

    async def one(self, sql: str, args: Sequence[Any] = ()) -> Row | None:
        row: Row | None = self.db.execute(sql, args).fetchone()  # rows are dicts (_as_dict)
        return row

    async def all(self, sql: str, args: Sequence[Any] = ()) -> list[Row]:
        rows: list[Row] = self.db.execute(sql, args).fetchall()
        return rows

    async def many(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        self.db.executemany(sql, rows)

    def jobs_ready(self) -> None:
        pass


def _at_once(operation: Coroutine[Any, Any, T]) -> T:
    """Run a store operation to its end on this thread: with _SqliteTx nothing in it waits, so one step ends it."""
    try:
        operation.send(None)
    except StopIteration as done:
        value: T = done.value
        return value
    operation.close()
    raise RuntimeError("a job store operation waited on something other than its SQLite transaction")


def _as_dict(cursor: sqlite3.Cursor, row: tuple[Any, ...]) -> Row:
    return {column[0]: value for column, value in zip(cursor.description, row, strict=True)}


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
    db.row_factory = _as_dict
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.execute("PRAGMA busy_timeout=10000")  # `serve --workers N`: the processes take the write lock in turn
    return db


def _migrate(db: sqlite3.Connection, files: FileDirectory) -> bytes:
    """Bring the schema to SCHEMA_VERSION in one transaction; the key owners are hashed with."""
    db.execute("BEGIN IMMEDIATE")
    version = db.execute("PRAGMA user_version").fetchone()["user_version"]
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
    for statement in TABLES.split(";"):
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
        fields = dict(row)
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
        files.write_now(row["id"], row["content"])
        db.execute(
            "INSERT INTO files (id, created_at, filename, purpose, bytes) VALUES (?, ?, ?, ?, ?)",
            (row["id"], row["created_at"], row["filename"], row["purpose"], row["bytes"]),
        )
    db.execute("DROP TABLE files_v0")


def _settle(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)
