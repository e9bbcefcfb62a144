"""The contents of /v1/files in a directory: one file per id, streamed in under a size limit.

A batch input file may be 200 MB (OpenAI's limit), too large to hold in
memory or to write through the job store's single writer thread, so the
database keeps a file's record and this directory keeps its bytes. An
upload goes to a temporary name as it arrives, is flushed to the disk and
renamed to its id only when it is whole and within the limit; a refused or
broken upload leaves nothing behind. The directory is 0700 and every file
0600: they hold other tenants' requests.

The directory is the default beside a SQLite database and may be named for
Postgres too (`jobs.files`: a volume every replica mounts); otherwise
Postgres keeps contents in its own rows (router.jobs.database_files).

What must not live here: records and owners (router.jobs.batch_store), HTTP
(router.jobs.batches).
"""

from __future__ import annotations

import asyncio
import os
import secrets
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import BinaryIO

# Bytes gathered in memory before one write to the disk (a thread hop each).
CHUNK_BYTES = 1 << 20


class TooLarge(Exception):
    """The upload went past the limit."""


class FileDirectory:
    def __init__(self, path: str | Path):
        self.path = Path(path)

    def _ensure(self) -> None:
        self.path.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(self.path, 0o700)

    def path_of(self, file_id: str) -> Path:
        if not file_id.replace("-", "").replace("_", "").isalnum():  # ids are ours: no separators, no dots
            raise ValueError(f"not a file id: {file_id!r}")
        return self.path / file_id

    async def receive(
        self,
        file_id: str,
        chunks: AsyncIterator[bytes],
        *,
        limit: int,
        on_stall: Callable[[], Exception],
        stall_s: float,
    ) -> int:
        """Write the chunks as `file_id`; its size.

        TooLarge past `limit`; the exception `on_stall()` makes when no chunk comes for `stall_s`.
        """
        await asyncio.to_thread(self._ensure)
        temporary = self.path / f".upload-{secrets.token_hex(8)}"
        handle = await asyncio.to_thread(_open_private, temporary)
        size, pending = 0, bytearray()
        try:
            async for chunk in within_limits(chunks, limit=limit, on_stall=on_stall, stall_s=stall_s):
                size += len(chunk)
                pending += chunk
                if len(pending) >= CHUNK_BYTES:
                    await asyncio.to_thread(handle.write, bytes(pending))
                    pending.clear()
            await asyncio.to_thread(_finish, handle, bytes(pending), temporary, self.path_of(file_id))
        except BaseException:
            handle.close()
            temporary.unlink(missing_ok=True)
            raise
        return size

    async def write(self, file_id: str, content: bytes) -> None:
        """Store `content` as `file_id` at once (files the router makes itself: batch output)."""
        await asyncio.to_thread(self.write_now, file_id, content)

    def write_now(self, file_id: str, content: bytes) -> None:
        """`write`, on this thread (a schema migration moving old contents here)."""
        self._ensure()
        temporary = self.path / f".write-{secrets.token_hex(8)}"
        _finish(_open_private(temporary), content, temporary, self.path_of(file_id))

    async def read(self, file_id: str) -> bytes:
        return await asyncio.to_thread(self.path_of(file_id).read_bytes)

    async def chunks(self, file_id: str) -> AsyncIterator[bytes]:
        handle = await asyncio.to_thread(self.path_of(file_id).open, "rb")
        try:
            while chunk := await asyncio.to_thread(handle.read, CHUNK_BYTES):
                yield chunk
        finally:
            handle.close()

    async def remove(self, file_id: str) -> None:
        await asyncio.to_thread(self.path_of(file_id).unlink, missing_ok=True)


async def within_limits(
    chunks: AsyncIterator[bytes], *, limit: int, on_stall: Callable[[], Exception], stall_s: float
) -> AsyncIterator[bytes]:
    """The chunks of an upload as they come; TooLarge once they pass `limit` bytes, `on_stall()` when none comes
    for `stall_s` (every file store receives through this)."""
    size = 0
    while True:
        try:
            async with asyncio.timeout(stall_s):
                chunk = await anext(chunks, None)
        except TimeoutError:
            raise on_stall() from None
        if chunk is None:
            return
        size += len(chunk)
        if size > limit:
            raise TooLarge(limit)
        yield chunk


def _open_private(path: Path) -> BinaryIO:
    return os.fdopen(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600), "wb")


def _finish(handle: BinaryIO, tail: bytes, temporary: Path, final: Path) -> None:
    with handle:
        handle.write(tail)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, final)
