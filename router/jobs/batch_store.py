"""Files and batches in the job database: typed records and the operations on them.

A file is a record here and its bytes in the file directory
(router.jobs.files). A batch is a record (its status, its OpenAI fields,
its owner) plus one job per line (router.jobs.store), tied by `batch_id`
and ordered by line number. Every read names the owner it is for; another
owner's record is None, as if it did not exist (`EVERY_OWNER` sees all).

The batch lifecycle's storage steps are here, each in one transaction:
create (the record and all its lines), cancel (drop the queued lines), and
the sweep (expire lines past the window; finish a batch with no line left,
writing its output and error files, which `render` makes from the lines'
outcomes).

What must not live here: OpenAI's request and object shapes (router.jobs.batches),
the connection (router.jobs.database).
"""

from __future__ import annotations

import json
import secrets
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from router.jobs.database import EVERY_OWNER, Database, Owner, owned_by
from router.jobs.files import FileDirectory

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
        await self.db.run(lambda db: _put_file(db, record))
        return record

    async def file(self, file_id: str, owner: Owner) -> FileRecord | None:
        return await self.db.run(lambda db: _file(db, file_id, owner))

    async def delete_file(self, file_id: str, owner: Owner) -> bool:
        """Forget the record (the caller removes the bytes); False when `owner` has no such file."""
        mine, mine_args = owned_by(owner)

        def delete(db: sqlite3.Connection) -> bool:
            return db.execute(f"DELETE FROM files WHERE id = ? AND {mine}", (file_id, *mine_args)).rowcount == 1

        return await self.db.run(delete)

    @property
    def files(self) -> FileDirectory:
        """The directory that holds the files' bytes (router.jobs.files)."""
        return self.db.files

    async def files_of(self, owner: Owner, limit: int) -> list[FileRecord]:
        mine, mine_args = owned_by(owner)

        def rows(db: sqlite3.Connection) -> list[FileRecord]:
            query = f"{_FILE_ROW} WHERE {mine} ORDER BY created_at DESC LIMIT ?"
            return [_file_record(row) for row in db.execute(query, (*mine_args, limit))]

        return await self.db.run(rows)

    async def create_batch(
        self, batch_id: str, now: float, fields: dict[str, Any], owner: str, *, endpoint: str,
        lines: list[NewLine], credentials: list[tuple[str, str]], failed: bool,
    ) -> BatchRecord:  # fmt: skip
        """The batch and one queued job per line, at once; `failed`: the file did not validate (no lines).

        Each line's deadline is the batch's `expires_at`: a provider batch lane runs it elsewhere before then.
        """
        stored_credentials = json.dumps(credentials)

        def create(db: sqlite3.Connection) -> BatchRecord:
            _put_batch(db, batch_id, now, "failed" if failed else "in_progress", fields, owner)
            db.executemany(
                "INSERT INTO jobs (id, created_at, state, method, target, headers, body, payload_hash, batch_id,"
                " custom_id, line, owner, credentials, deadline_at)"
                " VALUES (?, ?, 'queued', 'POST', ?, ?, ?, '', ?, ?, ?, ?, ?, ?)",
                [(f"batch_req_{secrets.token_hex(12)}", now, endpoint, _LINE_HEADERS, line.body, batch_id,
                  line.custom_id, line.number, owner, stored_credentials, fields["expires_at"]) for line in lines],
            )  # fmt: skip
            return _batch(db, batch_id, owner)

        return await self.db.run(create)

    async def batch(self, batch_id: str, owner: Owner) -> BatchRecord | None:
        return await self.db.run(lambda db: _batch_or_none(db, batch_id, owner))

    async def batches(self, owner: Owner, limit: int) -> list[BatchRecord]:
        mine, mine_args = owned_by(owner)

        def rows(db: sqlite3.Connection) -> list[BatchRecord]:
            query = f"SELECT id FROM batches WHERE {mine} ORDER BY created_at DESC LIMIT ?"
            return [_batch(db, row["id"], owner) for row in db.execute(query, (*mine_args, limit)).fetchall()]

        return await self.db.run(rows)

    async def cancel_batch(self, batch_id: str, owner: Owner, now: float) -> BatchRecord | None:
        """Drop the lines not yet started and mark the batch cancelling; NotCancellable once it has ended."""

        def cancel(db: sqlite3.Connection) -> BatchRecord | None:
            found = _batch_or_none(db, batch_id, owner)
            if found is None:
                return None
            if found.status not in CANCELLABLE:
                raise NotCancellable(found.status)
            _drop_queued(db, batch_id, now, "batch_cancelled", "the batch was cancelled before this line ran")
            _put_batch(db, batch_id, now, "cancelling", {**found.fields, "cancelling_at": int(now)}, found.owner)
            return _batch(db, batch_id, owner)

        return await self.db.run(cancel)

    async def sweep(self, now: float, render: Render) -> None:
        """Expire lines past their batch's window; finish each open batch with no line left to run."""
        files = self.files

        def sweep(db: sqlite3.Connection) -> None:
            for row in db.execute("SELECT id FROM batches WHERE status IN (?, ?)", OPEN).fetchall():
                batch = _batch(db, row["id"], EVERY_OWNER)
                if batch.status == "in_progress" and now >= batch.fields["expires_at"]:
                    _drop_queued(
                        db, batch.id, now, "batch_expired", "the completion window ran out before this line ran"
                    )
                pending = db.execute(
                    "SELECT COUNT(*) FROM jobs WHERE batch_id = ? AND state IN ('queued', 'running', 'submitted')",
                    (batch.id,),
                ).fetchone()[0]
                if pending == 0:
                    _finish(db, files, batch, now, render)

        await self.db.run(sweep)


_FILE_ROW = "SELECT id, created_at, filename, purpose, bytes, owner FROM files"


def _file_record(row: sqlite3.Row) -> FileRecord:
    return FileRecord(**{name: row[name] for name in row.keys()})


def _file(db: sqlite3.Connection, file_id: str, owner: Owner) -> FileRecord | None:
    mine, mine_args = owned_by(owner)
    row = db.execute(f"{_FILE_ROW} WHERE id = ? AND {mine}", (file_id, *mine_args)).fetchone()
    return _file_record(row) if row is not None else None


def _put_file(db: sqlite3.Connection, record: FileRecord) -> None:
    db.execute(
        "INSERT INTO files (id, created_at, filename, purpose, bytes, owner) VALUES (?, ?, ?, ?, ?, ?)",
        (record.id, record.created_at, record.filename, record.purpose, record.bytes, record.owner),
    )


def _put_batch(
    db: sqlite3.Connection, batch_id: str, now: float, status: str, fields: dict[str, Any], owner: str | None
) -> None:
    db.execute(
        "INSERT INTO batches (id, created_at, status, record, owner) VALUES (?, ?, ?, ?, ?)"
        " ON CONFLICT (id) DO UPDATE SET status = excluded.status, record = excluded.record",
        (batch_id, now, status, json.dumps(fields), owner),
    )


def _batch_or_none(db: sqlite3.Connection, batch_id: str, owner: Owner) -> BatchRecord | None:
    mine, mine_args = owned_by(owner)
    row = db.execute(
        f"SELECT id, status, record, owner FROM batches WHERE id = ? AND {mine}", (batch_id, *mine_args)
    ).fetchone()
    if row is None:
        return None
    counts = {
        line["state"]: line["n"]
        for line in db.execute(
            "SELECT state, COUNT(*) AS n FROM jobs WHERE batch_id = ? GROUP BY state", (row["id"],)
        ).fetchall()
    }
    total = sum(counts.values())
    succeeded = counts.get("succeeded", 0)
    unfinished = counts.get("queued", 0) + counts.get("running", 0)
    return BatchRecord(
        row["id"], row["status"], json.loads(row["record"]), row["owner"],
        LineCounts(total=total, completed=succeeded, failed=total - succeeded - unfinished),
    )  # fmt: skip


def _batch(db: sqlite3.Connection, batch_id: str, owner: Owner) -> BatchRecord:
    found = _batch_or_none(db, batch_id, owner)
    assert found is not None, batch_id  # read in the transaction that made or found it
    return found


def _drop_queued(db: sqlite3.Connection, batch_id: str, now: float, code: str, message: str) -> None:
    db.execute(
        "UPDATE jobs SET state = 'cancelled', finished_at = ?, error = ?, credentials = NULL"
        " WHERE batch_id = ? AND state IN ('queued', 'submitted')",
        (now, json.dumps({"code": code, "message": message}), batch_id),
    )


def _finish(db: sqlite3.Connection, files: FileDirectory, batch: BatchRecord, now: float, render: Render) -> None:
    outcomes = [
        LineOutcome(row["id"], row["custom_id"], row["state"], row["status_code"], row["response_body"], row["error"])
        for row in db.execute(
            "SELECT id, custom_id, state, status_code, response_body, error FROM jobs WHERE batch_id = ? ORDER BY line",
            (batch.id,),
        ).fetchall()
    ]
    stamp = int(now)
    fields = dict(batch.fields)
    for kind, content in render(batch, outcomes).items():
        file_id = f"file-{secrets.token_hex(12)}"
        files.write(file_id, content)  # before the commit: at worst an orphan file, never a dangling record
        _put_file(db, FileRecord(file_id, stamp, f"{batch.id}_{kind}.jsonl", "batch_output", len(content), batch.owner))
        fields[f"{kind}_file_id"] = file_id
    fields["finalizing_at"] = fields["finalizing_at"] or stamp
    if batch.status == "cancelling":
        final = "cancelled"
    elif now >= fields["expires_at"]:
        final = "expired"
    else:
        final = "completed"
    fields[f"{final}_at"] = stamp
    _put_batch(db, batch.id, now, final, fields, batch.owner)
