"""Files and batches in the job database: typed records and the operations on them.

A file is a record here and its bytes in the file store (a directory,
router.jobs.files, or the database's own rows, router.jobs.database_files).
A batch is a record (its status, its OpenAI fields, its owner) plus one job
per line (router.jobs.store), tied by `batch_id` and ordered by line
number. Every read names the owner it is for; another owner's record is
None, as if it did not exist (`EVERY_OWNER` sees all).

The batch lifecycle's storage steps are here: create (the record and all
its lines, one transaction), cancel (drop the queued lines, one
transaction), and the sweep (expire lines past the window; finish a batch
with no line left, writing its output and error files, which `render` makes
from the lines' outcomes). A batch moves on only from the status it was
read in, so replicas that share the database never move one batch twice.

What must not live here: OpenAI's request and object shapes (router.jobs.batches),
the engines (router.jobs.sqlite, router.jobs.postgres).
"""

from __future__ import annotations

import functools
import json
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from router.jobs.database import EVERY_OWNER, Database, FileStore, Owner, Tx, owned_by

OPEN = ("in_progress", "cancelling")  # statuses the sweep moves on
CANCELLABLE = ("validating", "in_progress")
_LINE_HEADERS = json.dumps([("Content-Type", "application/json")])


@dataclass(frozen=True, slots=True)
class FileRecord:
    id: str
    created_at: float
    filename: str
    purpose: str
    bytes: int
    owner: str | None


@dataclass(frozen=True, slots=True)
class LineCounts:
    total: int
    completed: int
    failed: int


@dataclass(frozen=True, slots=True)
class BatchRecord:
    id: str
    status: str
    fields: dict[str, Any]  # OpenAI's batch fields: endpoint, window, timestamps, output files, errors, metadata
    owner: str | None
    counts: LineCounts


@dataclass(frozen=True, slots=True)
class NewLine:
    number: int  # in the input file, from 1
    custom_id: str
    body: bytes


@dataclass(frozen=True, slots=True)
class LineOutcome:
    job_id: str
    custom_id: str
    state: str
    status_code: int | None
    response_body: bytes | None
    error: str | None


class NotCancellable(Exception):
    def __init__(self, status: str):
        super().__init__(status)
        self.status = status


# What a finished batch's files hold: file kind ("output" or "error") -> its JSON lines, from the lines' outcomes.
Render = Callable[[BatchRecord, list[LineOutcome]], dict[str, bytes]]


class BatchStore:
    def __init__(self, db: Database):
        self.db = db

    async def put_file(self, record: FileRecord) -> FileRecord:
        await self.db.run(lambda tx: _put_file(tx, record))
        return record

    async def file(self, file_id: str, owner: Owner) -> FileRecord | None:
        return await self.db.run(lambda tx: _file(tx, file_id, owner))

    async def delete_file(self, file_id: str, owner: Owner) -> bool:
        """Forget the record (the caller removes the bytes); False when `owner` has no such file."""
        mine, mine_args = owned_by(owner)

        return (
            await self.db.run(
                lambda tx: tx.execute(f"DELETE FROM files WHERE id = ? AND {mine}", (file_id, *mine_args))
            )
            == 1
        )

    @property
    def files(self) -> FileStore:
        """Where the files' bytes are (router.jobs.files, router.jobs.database_files)."""
        return self.db.files

    async def files_of(self, owner: Owner, limit: int) -> list[FileRecord]:
        mine, mine_args = owned_by(owner)

        async def rows(tx: Tx) -> list[FileRecord]:
            query = f"{_FILE_ROW} WHERE {mine} ORDER BY created_at DESC LIMIT ?"
            return [FileRecord(**row) for row in await tx.all(query, (*mine_args, limit))]

        return await self.db.run(rows)

    async def create_batch(
        self,
        batch_id: str,
        now: float,
        fields: dict[str, Any],
        owner: str,
        *,
        endpoint: str,
        lines: list[NewLine],
        credentials: list[tuple[str, str]],
        failed: bool,
    ) -> BatchRecord:
        """The batch and one queued job per line, at once; `failed`: the file did not validate (no lines).

        Each line's deadline is the batch's `expires_at`: a provider batch lane runs it elsewhere before then.
        """
        stored_credentials = json.dumps(credentials)

        async def create(tx: Tx) -> BatchRecord:
            await _put_batch(tx, batch_id, now, "failed" if failed else "in_progress", fields, owner)
            await tx.many(
                "INSERT INTO jobs (id, created_at, state, method, target, headers, body, payload_hash, batch_id,"
                " custom_id, line, owner, credentials, deadline_at)"
                " VALUES (?, ?, 'queued', 'POST', ?, ?, ?, '', ?, ?, ?, ?, ?, ?)",
                [
                    (
                        f"batch_req_{secrets.token_hex(12)}",
                        now,
                        endpoint,
                        _LINE_HEADERS,
                        line.body,
                        batch_id,
                        line.custom_id,
                        line.number,
                        owner,
                        stored_credentials,
                        fields["expires_at"],
                    )
                    for line in lines
                ],
            )
            if lines:
                tx.jobs_ready()
            return await _batch(tx, batch_id, owner)

        return await self.db.run(create)

    async def batch(self, batch_id: str, owner: Owner) -> BatchRecord | None:
        return await self.db.run(lambda tx: _batch_or_none(tx, batch_id, owner))

    async def batches(self, owner: Owner, limit: int) -> list[BatchRecord]:
        mine, mine_args = owned_by(owner)

        async def rows(tx: Tx) -> list[BatchRecord]:
            query = f"SELECT id FROM batches WHERE {mine} ORDER BY created_at DESC LIMIT ?"
            return [await _batch(tx, row["id"], owner) for row in await tx.all(query, (*mine_args, limit))]

        return await self.db.run(rows)

    async def cancel_batch(self, batch_id: str, owner: Owner, now: float) -> BatchRecord | None:
        """Drop the lines not yet started and mark the batch cancelling; NotCancellable once it has ended."""

        async def cancel(tx: Tx) -> BatchRecord | None:
            found = await _batch_or_none(tx, batch_id, owner)
            if found is None:
                return None
            if found.status not in CANCELLABLE:
                raise NotCancellable(found.status)
            await _drop_queued(tx, batch_id, now, "batch_cancelled", "the batch was cancelled before this line ran")
            if not await _move_batch(tx, found, "cancelling", {**found.fields, "cancelling_at": int(now)}):
                raise NotCancellable((await _batch(tx, batch_id, owner)).status)  # ended by a sweep just now
            return await _batch(tx, batch_id, owner)

        return await self.db.run(cancel)

    async def sweep(self, now: float, render: Render) -> None:
        """Expire lines past their batch's window; finish each open batch with no line left to run.

        Three steps, so that no transaction waits on the writing of a file: find the batches that are done
        (with their lines' outcomes); write their output files; end each one that is still open. Two replicas
        sweeping at once: one ends the batch, the other finds it ended and removes the files it wrote.
        """
        for batch, outcomes in await self.db.run(lambda tx: _done(tx, now)):
            stamp = int(now)
            made: dict[str, FileRecord] = {}  # "output" or "error" -> its file
            for kind, content in render(batch, outcomes).items():
                file_id = f"file-{secrets.token_hex(12)}"
                await self.files.write(file_id, content)  # before the record: at worst an orphan, never dangling
                name = f"{batch.id}_{kind}.jsonl"
                made[kind] = FileRecord(file_id, stamp, name, "batch_output", len(content), batch.owner)
            if not await self.db.run(functools.partial(_end, batch=batch, now=now, files=made)):
                for record in made.values():
                    await self.files.remove(record.id)


_FILE_ROW = "SELECT id, created_at, filename, purpose, bytes, owner FROM files"


async def _file(tx: Tx, file_id: str, owner: Owner) -> FileRecord | None:
    mine, mine_args = owned_by(owner)
    row = await tx.one(f"{_FILE_ROW} WHERE id = ? AND {mine}", (file_id, *mine_args))
    return FileRecord(**row) if row is not None else None


async def _put_file(tx: Tx, record: FileRecord) -> None:
    await tx.execute(
        "INSERT INTO files (id, created_at, filename, purpose, bytes, owner) VALUES (?, ?, ?, ?, ?, ?)",
        (record.id, record.created_at, record.filename, record.purpose, record.bytes, record.owner),
    )


async def _put_batch(tx: Tx, batch_id: str, now: float, status: str, fields: dict[str, Any], owner: str) -> None:
    await tx.execute(
        "INSERT INTO batches (id, created_at, status, record, owner) VALUES (?, ?, ?, ?, ?)",
        (batch_id, now, status, json.dumps(fields), owner),
    )


async def _move_batch(tx: Tx, batch: BatchRecord, status: str, fields: dict[str, Any]) -> bool:
    """The batch to `status`, only if it is still as `batch` read it; False when another replica moved it first."""
    changed = await tx.execute(
        "UPDATE batches SET status = ?, record = ? WHERE id = ? AND status = ?",
        (status, json.dumps(fields), batch.id, batch.status),
    )
    return changed == 1


async def _batch_or_none(tx: Tx, batch_id: str, owner: Owner) -> BatchRecord | None:
    mine, mine_args = owned_by(owner)
    row = await tx.one(f"SELECT id, status, record, owner FROM batches WHERE id = ? AND {mine}", (batch_id, *mine_args))
    if row is None:
        return None
    counts = {
        line["state"]: line["n"]
        for line in await tx.all(
            "SELECT state, COUNT(*) AS n FROM jobs WHERE batch_id = ? GROUP BY state", (row["id"],)
        )
    }
    total = sum(counts.values())
    succeeded = counts.get("succeeded", 0)
    unfinished = counts.get("queued", 0) + counts.get("running", 0)
    return BatchRecord(
        row["id"],
        row["status"],
        json.loads(row["record"]),
        row["owner"],
        LineCounts(total=total, completed=succeeded, failed=total - succeeded - unfinished),
    )


async def _batch(tx: Tx, batch_id: str, owner: Owner) -> BatchRecord:
    found = await _batch_or_none(tx, batch_id, owner)
    assert found is not None, batch_id  # read in the transaction that made or found it
    return found


async def _drop_queued(tx: Tx, batch_id: str, now: float, code: str, message: str) -> None:
    await tx.execute(
        "UPDATE jobs SET state = 'cancelled', finished_at = ?, error = ?, credentials = NULL"
        " WHERE batch_id = ? AND state IN ('queued', 'submitted')",
        (now, json.dumps({"code": code, "message": message}), batch_id),
    )


async def _done(tx: Tx, now: float) -> list[tuple[BatchRecord, list[LineOutcome]]]:
    """Expire the lines of batches past their window; the open batches with no line left, and their outcomes."""
    done = []
    for row in await tx.all("SELECT id FROM batches WHERE status IN (?, ?)", OPEN):
        batch = await _batch(tx, row["id"], EVERY_OWNER)
        if batch.status == "in_progress" and now >= batch.fields["expires_at"]:
            await _drop_queued(tx, batch.id, now, "batch_expired", "the completion window ran out before this line ran")
        pending = await tx.one(
            "SELECT COUNT(*) AS n FROM jobs WHERE batch_id = ? AND state IN ('queued', 'running', 'submitted')",
            (batch.id,),
        )
        if pending is not None and pending["n"] == 0:
            done.append(
                (
                    batch,
                    [
                        LineOutcome(**line)
                        for line in await tx.all(
                            "SELECT id AS job_id, custom_id, state, status_code, response_body, error FROM jobs"
                            " WHERE batch_id = ? ORDER BY line",
                            (batch.id,),
                        )
                    ],
                )
            )
    return done


async def _end(tx: Tx, batch: BatchRecord, now: float, files: dict[str, FileRecord]) -> bool:
    """A done batch to its final status with its output files' records; False when another replica ended it."""
    stamp = int(now)
    fields = dict(batch.fields)
    for kind, record in files.items():
        fields[f"{kind}_file_id"] = record.id
    fields["finalizing_at"] = fields["finalizing_at"] or stamp
    if batch.status == "cancelling":
        final = "cancelled"
    elif now >= fields["expires_at"]:
        final = "expired"
    else:
        final = "completed"
    fields[f"{final}_at"] = stamp
    if not await _move_batch(tx, batch, final, fields):
        return False
    for record in files.values():
        await _put_file(tx, record)
    return True
