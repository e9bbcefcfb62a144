"""The job database on Postgres, for several replicas: a connection pool, LISTEN/NOTIFY, its versioned schema.

Every store operation (router.jobs.database.Tx) runs in its own transaction
on a pooled connection (psycopg 3, async). Replicas share the tables: claims
take rows `FOR UPDATE SKIP LOCKED`, so two runners never wait on, or take,
the same job; an operation that lost a race (a deadlock, a serialization
failure, two inserts of one idempotency key) runs again from its start, up
to _TRIES times. A transaction that made jobs due sends NOTIFY on
`modeshift_jobs` as it commits, and every replica's listener wakes its
runner at once instead of at its next poll.

Postgres out of reach: an operation raises StoreUnavailable (the API
answers 503; nothing is stored that was not acknowledged), and nothing
else changes: jobs already stored wait in Postgres. Refused at once, not
after a wait: after a failure, operations fail without trying for
_PROBE_S, then the next one tries again; a pooled connection is waited for
_WAIT_S at most (longer means the store is overloaded, and a 503 is the
answer then too). The pool and the listener reconnect by themselves.

The schema (router.jobs.schema) is made or brought up to date at open,
under an advisory lock so replicas starting together do it once; its
version is the row `schema_version` of `meta`.

What must not live here: what a job, a file or a batch is (the stores), HTTP.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import secrets
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, TypeVar, cast

import psycopg
from psycopg import errors
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from router.jobs.database import FileStore, Row, StoreUnavailable, Tx
from router.jobs.database_files import DatabaseFiles
from router.jobs.files import FileDirectory
from router.jobs.schema import SCHEMA_VERSION, for_postgres
from router.jobs.tenants import KEY_BYTES, Owners

T = TypeVar("T")
logger = logging.getLogger("modeshift.jobs")
CHANNEL = "modeshift_jobs"
_POOL_SIZE = 8  # connections per process
_WAIT_S = 1.0  # for a pooled connection
_CONNECT_S = 5  # for Postgres to answer a new connection (a refused one fails at once)
_PROBE_S = 1.0  # after a failure, operations are refused this long before one tries again
_CLOSE_S = 5.0  # the longest closing waits for a task or a pooled connection
_RECONNECT_S = 10.0  # a pool connection given up after failing this long is tried afresh on the next demand
_TRIES = 3  # of an operation that lost a race
_LISTEN_RETRY_S = 2.0
_MIGRATION_LOCK = 0x6D6F6465  # pg_advisory_xact_lock key: one replica at a time brings the schema up to date
_RACES = (errors.SerializationFailure, errors.DeadlockDetected, errors.UniqueViolation)


class PostgresDatabase:
    def __init__(self, url: str, pool: AsyncConnectionPool, owners: Owners, files: str | None):
        self.url = url
        self.pool = pool
        self.owners = owners
        self.files: FileStore = FileDirectory(files) if files is not None else DatabaseFiles(self)
        self._wakers: list[Callable[[], None]] = []
        self._listener: asyncio.Task[Any] | None = None
        self._failed_at: float | None = None  # monotonic time of the last failure to reach Postgres
        self._failure = ""
        self._checking: asyncio.Task[Any] | None = None

    @classmethod
    async def open(cls, url: str, files: str | None = None) -> PostgresDatabase:
        """Connect, bring the schema up to date; StoreUnavailable when Postgres does not answer.

        The schema is made on a connection of its own first, so a Postgres that is down is known at once (a
        refused connection) instead of after the pool's wait.
        """
        try:
            async with (
                await psycopg.AsyncConnection.connect(
                    url, autocommit=True, row_factory=dict_row, connect_timeout=_CONNECT_S
                ) as conn,
                conn.transaction(),
            ):
                key = await _migrate(conn)
        except psycopg.OperationalError as exc:
            raise StoreUnavailable(f"the job database does not answer: {_quiet(exc)}") from None
        pool = AsyncConnectionPool(
            url,
            min_size=1,
            max_size=_POOL_SIZE,
            timeout=_WAIT_S,
            open=False,
            reconnect_timeout=_RECONNECT_S,
            kwargs={"autocommit": True, "row_factory": dict_row},
            name="modeshift-jobs",
        )
        await pool.open(wait=False)
        return cls(url, pool, Owners(key), files)

    async def run(self, op: Callable[[Tx], Awaitable[T]]) -> T:
        loop = asyncio.get_running_loop()
        if self._failed_at is not None and loop.time() - self._failed_at < _PROBE_S:
            raise StoreUnavailable(self._failure)
        for attempt in range(1, _TRIES + 1):
            try:
                async with self.pool.connection() as conn, conn.transaction():
                    tx = _PostgresTx(conn)
                    result = await op(tx)
                    if tx.ready:
                        await conn.execute(f"NOTIFY {CHANNEL}")  # delivered when this transaction commits
                self._failed_at = None
                return result
            except _RACES:
                if attempt == _TRIES:
                    raise
            except (PoolTimeout, psycopg.OperationalError) as exc:
                self._failed_at, self._failure = loop.time(), f"the job database does not answer: {_quiet(exc)}"
                if not isinstance(exc, PoolTimeout) and (self._checking is None or self._checking.done()):
                    self._checking = loop.create_task(self.pool.check())  # drop the others that broke with it
                raise StoreUnavailable(self._failure) from None
        raise AssertionError("unreachable")

    def on_jobs_ready(self, wake: Callable[[], None]) -> None:
        self._wakers.append(wake)
        if self._listener is None:
            self._listener = asyncio.get_running_loop().create_task(self._listen())

    async def _listen(self) -> None:
        """LISTEN on its own connection (a pooled one goes back between operations); reconnect when it drops."""
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(self.url, autocommit=True) as conn:
                    await conn.execute(f"LISTEN {CHANNEL}")
                    self._wake()  # whatever was notified while nobody listened
                    async for _ in conn.notifies():
                        self._wake()
            except psycopg.Error as exc:
                logger.warning("listening for new jobs failed (%s); runners poll until it is back", _quiet(exc))
            await asyncio.sleep(_LISTEN_RETRY_S)

    def _wake(self) -> None:
        for wake in self._wakers:
            wake()

    async def close(self) -> None:
        """Stop listening and close the pool, within a bounded time: a connection whose server went silent
        can hold a cancelled task for ever (psycopg/psycopg#1371), and closing must not wait on it."""
        tasks = [task for task in (self._listener, self._checking) if task is not None and not task.done()]
        for task in tasks:
            task.cancel()
        if tasks:
            _, stuck = await asyncio.wait(tasks, timeout=_CLOSE_S)
            if stuck:
                logger.warning("closing the job database: %d task(s) did not stop in %g s", len(stuck), _CLOSE_S)
        await self.pool.close(timeout=_CLOSE_S)


class _PostgresTx:
    skip_locked = " FOR UPDATE SKIP LOCKED"

    def __init__(self, conn: psycopg.AsyncConnection):
        self.conn = conn
        self.ready = False

    async def execute(self, sql: str, args: Sequence[Any] = ()) -> int:
        cursor = await self.conn.execute(_placeholders(sql), args)
        return cursor.rowcount

    async def one(self, sql: str, args: Sequence[Any] = ()) -> Row | None:
        cursor = await self.conn.execute(_placeholders(sql), args)
        return cast(Row | None, await cursor.fetchone())  # the pool's connections make dict rows (dict_row)

    async def all(self, sql: str, args: Sequence[Any] = ()) -> list[Row]:
        cursor = await self.conn.execute(_placeholders(sql), args)
        return cast(list[Row], await cursor.fetchall())

    async def many(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        async with self.conn.cursor() as cursor:
            await cursor.executemany(_placeholders(sql), list(rows))

    def jobs_ready(self) -> None:
        self.ready = True


@functools.lru_cache(maxsize=1024)
def _placeholders(sql: str) -> str:
    """The stores write SQLite's `?`; psycopg takes `%s` (no store's SQL holds a literal `?` or `%`)."""
    return sql.replace("?", "%s")


async def _migrate(conn: psycopg.AsyncConnection[Row]) -> bytes:
    """Make the tables or bring them up to date, once however many replicas start together; the owners' key."""
    await conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
    await conn.execute("CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value BYTEA NOT NULL)")
    row = await (await conn.execute("SELECT value FROM meta WHERE name = 'schema_version'")).fetchone()
    version = int(bytes(row["value"])) if row is not None else 0
    if version > SCHEMA_VERSION:
        raise RuntimeError(
            f"the job database is at schema version {version}, newer than this router's {SCHEMA_VERSION}: "
            "upgrade the router"
        )
    if version < SCHEMA_VERSION:  # every table is made whole at SCHEMA_VERSION: later versions add steps here
        for statement in for_postgres():
            await conn.execute(statement)
        await conn.execute(
            "INSERT INTO meta (name, value) VALUES ('schema_version', %s)"
            " ON CONFLICT (name) DO UPDATE SET value = excluded.value",
            (str(SCHEMA_VERSION).encode(),),
        )
    row = await (await conn.execute("SELECT value FROM meta WHERE name = 'owner_key'")).fetchone()
    if row is not None:
        return bytes(row["value"])
    key = secrets.token_bytes(KEY_BYTES)
    await conn.execute("INSERT INTO meta (name, value) VALUES ('owner_key', %s)", (key,))
    return key


def _quiet(exc: BaseException) -> str:
    """An error's first line, without the connection string psycopg may quote (it can hold a password)."""
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__
