"""The contents of /v1/files as rows of the job database: for replicas that share Postgres and no disk.

A file is a run of chunks (`file_chunks`: id, sequence number, at most
CHUNK_BYTES each), so a 200 MB upload never sits whole in memory or in one
statement. An upload is written under a temporary id, chunk by chunk, each
its own short transaction, and takes its real id in one last transaction
only when it is whole and within the limit: a refused or broken upload
leaves no file, and the rows it wrote are deleted. (A process killed in the
middle of an upload leaves its `upload-` rows; nothing ever reads them.)

What must not live here: the records of files and their owners
(router.jobs.batch_store), HTTP (router.jobs.batches).
"""

from __future__ import annotations

import asyncio
import functools
import secrets
from collections.abc import AsyncIterator, Callable

from router.jobs.database import Database, Row, Tx
from router.jobs.files import CHUNK_BYTES, within_limits


class DatabaseFiles:
    def __init__(self, db: Database):
        self.db = db

    async def receive(
        self,
        file_id: str,
        chunks: AsyncIterator[bytes],
        *,
        limit: int,
        on_stall: Callable[[], Exception],
        stall_s: float,
    ) -> int:
        temporary = f"upload-{secrets.token_hex(8)}"
        size, sequence, pending = 0, 0, bytearray()
        try:
            async for chunk in within_limits(chunks, limit=limit, on_stall=on_stall, stall_s=stall_s):
                size += len(chunk)
                pending += chunk
                while len(pending) >= CHUNK_BYTES:
                    await self._put(temporary, sequence, bytes(pending[:CHUNK_BYTES]))
                    del pending[:CHUNK_BYTES]
                    sequence += 1
            if pending or sequence == 0:
                await self._put(temporary, sequence, bytes(pending))
            await self.db.run(
                lambda tx: tx.execute("UPDATE file_chunks SET file_id = ? WHERE file_id = ?", (file_id, temporary))
            )
        except BaseException:
            await asyncio.shield(self.remove(temporary))
            raise
        return size

    async def _put(self, file_id: str, sequence: int, data: bytes) -> None:
        await self.db.run(
            lambda tx: tx.execute(
                "INSERT INTO file_chunks (file_id, seq, data) VALUES (?, ?, ?)", (file_id, sequence, data)
            )
        )

    async def write(self, file_id: str, content: bytes) -> None:
        pieces = [content[at : at + CHUNK_BYTES] for at in range(0, len(content), CHUNK_BYTES)] or [b""]

        async def write(tx: Tx) -> None:
            await tx.many(
                "INSERT INTO file_chunks (file_id, seq, data) VALUES (?, ?, ?)",
                [(file_id, sequence, piece) for sequence, piece in enumerate(pieces)],
            )

        await self.db.run(write)

    async def read(self, file_id: str) -> bytes:
        return b"".join([chunk async for chunk in self.chunks(file_id)])

    async def chunks(self, file_id: str) -> AsyncIterator[bytes]:
        sequence = 0
        while True:
            row = await self.db.run(functools.partial(_chunk, file_id=file_id, sequence=sequence))
            if row is None:
                if sequence == 0:
                    raise FileNotFoundError(file_id)
                return
            yield bytes(row["data"])
            sequence += 1

    async def remove(self, file_id: str) -> None:
        await self.db.run(lambda tx: tx.execute("DELETE FROM file_chunks WHERE file_id = ?", (file_id,)))


async def _chunk(tx: Tx, file_id: str, sequence: int) -> Row | None:
    return await tx.one("SELECT data FROM file_chunks WHERE file_id = ? AND seq = ?", (file_id, sequence))
