"""The job database, whichever engine holds it: the transaction the stores write to, owners, and opening one.

Every store (router.jobs.store, .batch_store, .provider.store) writes an
operation as `async def op(tx: Tx) -> T` and hands it to `Database.run`,
which runs it as one transaction and returns its result once it is durable:

- SQLite (router.jobs.sqlite), the embedded default: a savepoint of the
  writer thread's next group commit;
- Postgres (router.jobs.postgres), for several replicas: its own
  transaction on a pooled connection, retried when it lost a race.

The SQL is what both engines speak: `?` placeholders, `ON CONFLICT`,
`RETURNING`, `IS NOT DISTINCT FROM`, rows read by column name. The one
difference a store sees is `tx.skip_locked`, the clause that lets claims
from several replicas pass each other's locked rows (empty on SQLite, where
one writer at a time holds the whole file).

Which engine a setting names, and opening it: router.jobs.engines.

What must not live here: what a job, a file or a batch is (the stores), an
engine's connections and schema (router.jobs.sqlite, router.jobs.postgres).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from typing import Any, Protocol, TypeVar

from router.jobs.tenants import Owners

FINAL = ("succeeded", "failed", "cancelled")
Row = dict[str, Any]
T = TypeVar("T")


class StoreUnavailable(Exception):
    """The database cannot be reached: the caller answers 503, and nothing it was asked to store was stored."""


class _EveryOwner:
    """The admin API's view: every stored object, whoever made it."""

    def __repr__(self) -> str:
        return "EVERY_OWNER"


EVERY_OWNER = _EveryOwner()
Owner = str | _EveryOwner


def owned_by(owner: Owner) -> tuple[str, tuple[Any, ...]]:
    """A WHERE clause (and its parameters) that keeps the objects `owner` may see."""
    return ("1 = 1", ()) if owner is EVERY_OWNER else ("owner = ?", (owner,))


class Tx(Protocol):
    """One transaction, as a store's operation sees it."""

    skip_locked: str  # appended to a claim's SELECT: " FOR UPDATE SKIP LOCKED" on Postgres, "" on SQLite

    async def execute(self, sql: str, args: Sequence[Any] = ()) -> int:
        """Run a statement; how many rows it changed."""

    async def one(self, sql: str, args: Sequence[Any] = ()) -> Row | None: ...

    async def all(self, sql: str, args: Sequence[Any] = ()) -> list[Row]: ...

    async def many(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        """One statement for each of `rows`."""

    def jobs_ready(self) -> None:
        """Jobs became due in this transaction: once it commits, wake the runners of every replica."""


class FileStore(Protocol):
    """Where the contents of /v1/files live: a directory (router.jobs.files) or the database (.database_files)."""

    async def receive(
        self,
        file_id: str,
        chunks: AsyncIterator[bytes],
        *,
        limit: int,
        on_stall: Callable[[], Exception],
        stall_s: float,
    ) -> int:
        """Store the chunks as `file_id`, whole or not at all; its size. TooLarge past `limit`."""

    async def write(self, file_id: str, content: bytes) -> None: ...

    async def read(self, file_id: str) -> bytes:
        """The whole content; FileNotFoundError when there is none."""

    def chunks(self, file_id: str) -> AsyncIterator[bytes]:
        """The content in pieces, to stream an answer; FileNotFoundError when there is none."""

    async def remove(self, file_id: str) -> None: ...


class Database(Protocol):
    @property
    def owners(self) -> Owners:
        """The key request credentials are hashed with, made with the database."""

    @property
    def files(self) -> FileStore:
        """Where the contents of /v1/files live."""

    async def run(self, op: Callable[[Tx], Awaitable[T]]) -> T:
        """`op` in one transaction; its result once committed. StoreUnavailable when the database is out of reach."""

    def on_jobs_ready(self, wake: Callable[[], None]) -> None:
        """Call `wake` when another process made jobs due (Postgres: LISTEN/NOTIFY; SQLite: never, they poll)."""

    async def close(self) -> None: ...
