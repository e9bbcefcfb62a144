"""Provider batches in the job database, and the moves of jobs in and out of them.

A provider batch (table `provider_batches`) is one file's worth of jobs for
one (lane, endpoint, model, owner):

    gathering -> uploading -> submitted -> ended

- gathering: jobs join it (each moves queued -> submitted, tied by
  `provider_batch`) until the flush rule (policies.path.provider_batching) says
  it must go;
- uploading: it is being handed to the provider; `file_id` is kept as soon
  as the file is uploaded, so a restart never uploads it again;
- submitted: the provider has it (`remote_id`); it is polled;
- ended: its results are stored, or it had no job left.

Every move is one transaction. A job takes a result only while it is still
`submitted` in that batch, so a job given back to another lane (a late
deadline, a cancellation) never takes a second outcome. Credentials of the
batch's owner are kept until it ends, like a job's.

What must not live here: HTTP (router.jobs.provider.openai, .anthropic),
when to do what (router.jobs.provider.bridge).
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass
from typing import Any

from policies.path.provider_batching import FileGathering
from router.jobs.database import Database, Row, Tx
from router.jobs.provider.wire import LineResult
from router.jobs.store import JOB_COLUMNS, Job, job_from_row

_BATCH_COLUMNS = (
    "id, lane, api, endpoint, model, owner, credentials, status, created_at, lines, bytes, file_id, remote_id,"
    " remote_status, polls, failures, next_poll_at, submitted_at"
)


@dataclass(frozen=True, slots=True)
class ProviderBatch:
    id: str
    lane: str
    api: str
    endpoint: str
    model: str
    owner: str | None
    credentials: list[tuple[str, str]]
    status: str
    created_at: float
    lines: int
    bytes: int
    file_id: str | None
    remote_id: str | None
    remote_status: str | None
    polls: int
    failures: int
    next_poll_at: float | None
    submitted_at: float | None

    def view(self) -> dict[str, Any]:
        """What the admin API shows of it: everything but the credentials."""
        fields = {name: getattr(self, name) for name in self.__slots__ if name != "credentials"}
        return {"object": "provider_batch", **fields}


@dataclass(frozen=True, slots=True)
class Gathered:
    """A job ready to join a batch: where it goes and the size of its line."""

    job_id: str
    endpoint: str
    model: str
    line_bytes: int


@dataclass(frozen=True, slots=True)
class Applied:
    """What some of a batch's result lines did: the lines whose answers ended their jobs (the only ones to book),
    the jobs given back to run elsewhere, and the lines that matched no job waiting in the batch."""

    answered: list[LineResult]
    rerun: list[str]  # custom_ids
    unmatched: list[str]  # custom_ids


def _batch(row: Row) -> ProviderBatch:
    fields = dict(row)
    fields["credentials"] = [tuple(pair) for pair in json.loads(fields["credentials"] or "[]")]
    return ProviderBatch(**fields)


class ProviderStore:
    def __init__(self, db: Database):
        self.db = db

    async def hold(self, lane: str, token: str, now: float, lease_s: float) -> bool:
        """Take or renew the lane's bridge lease for `token`; False while another bridge holds it.

        One bridge acts for a lane at a time, however many processes share the database (`serve --workers N`,
        replicas on Postgres): two would upload the same file. The lease is a row of `leases`, taken or renewed
        by one statement, so two processes asking at once cannot both get it.
        """

        async def hold(tx: Tx) -> bool:
            held = await tx.one(
                "INSERT INTO leases (name, holder, expires_at) VALUES (?, ?, ?) ON CONFLICT (name) DO UPDATE"
                " SET holder = excluded.holder, expires_at = excluded.expires_at"
                " WHERE leases.holder = excluded.holder OR leases.expires_at <= ? RETURNING holder",
                (f"provider_bridge:{lane}", token, now + lease_s, now),
            )
            return held is not None

        return await self.db.run(hold)

    async def waiting(self, limit: int, now: float) -> list[Job]:
        """Queued jobs for the jobs lane that no provider batch holds yet, oldest first."""

        async def rows(tx: Tx) -> list[Job]:
            query = (
                f"SELECT {JOB_COLUMNS} FROM jobs WHERE state = 'queued' AND lane IS NULL AND provider_batch IS NULL"
                " AND not_before <= ? ORDER BY created_at LIMIT ?"
            )
            return [job_from_row(row) for row in await tx.all(query, (now, limit))]

        return await self.db.run(rows)

    async def gather(
        self, lane: str, api: str, jobs: list[tuple[Job, Gathered]], rule: FileGathering, now: float
    ) -> int:
        """Put each job into the gathering batch of its (endpoint, model, owner), opening one when none has
        room; a batch that is full goes to uploading at once. How many jobs joined (a job cancelled since it
        was read joins none)."""

        async def gather(tx: Tx) -> int:
            joined = 0
            for job, line in jobs:
                row = await tx.one(
                    f"SELECT {_BATCH_COLUMNS} FROM provider_batches WHERE status = 'gathering' AND lane = ?"
                    " AND endpoint = ? AND model = ? AND owner IS NOT DISTINCT FROM ? ORDER BY created_at DESC LIMIT 1",
                    (lane, line.endpoint, line.model, job.owner),
                )
                batch = _batch(row) if row is not None else None
                if batch is None or not rule.fits(batch.lines, batch.bytes, line.line_bytes):
                    if batch is not None:
                        await _uploading(tx, batch.id)
                    batch_id = f"pb_{secrets.token_hex(12)}"
                    await tx.execute(
                        "INSERT INTO provider_batches (id, lane, api, endpoint, model, owner, credentials, status,"
                        " created_at) VALUES (?, ?, ?, ?, ?, ?, ?, 'gathering', ?)",
                        (batch_id, lane, api, line.endpoint, line.model, job.owner, json.dumps(job.credentials), now),
                    )
                else:
                    batch_id = batch.id
                moved = await tx.execute(
                    "UPDATE jobs SET state = 'submitted', provider_batch = ? WHERE id = ? AND state = 'queued'"
                    " AND provider_batch IS NULL",
                    (batch_id, job.id),
                )
                if moved:
                    joined += 1
                    size = await tx.one(
                        "UPDATE provider_batches SET lines = lines + 1, bytes = bytes + ? WHERE id = ?"
                        " RETURNING lines, bytes",
                        (line.line_bytes, batch_id),
                    )
                    if size is not None and rule.full(size["lines"], size["bytes"]):
                        await _uploading(tx, batch_id)
            return joined

        return await self.db.run(gather) if jobs else 0

    async def reroute(self, job_ids: list[str], lane: str, now: float, reason: str) -> int:
        """Give jobs that have no answer yet back to the queue, to run on `lane` at once; how many moved."""

        async def reroute(tx: Tx) -> int:
            moved = 0
            for job_id in job_ids:
                moved += await tx.execute(
                    "UPDATE jobs SET state = 'queued', lane = ?,"
                    " not_before = CASE WHEN not_before < ? THEN not_before ELSE ? END, error = ?"
                    " WHERE id = ? AND state IN ('queued', 'submitted')",
                    (lane, now, now, reason, job_id),
                )
            if moved:
                tx.jobs_ready()
            return moved

        return await self.db.run(reroute) if job_ids else 0

    async def to_upload(self, lane: str, rule: FileGathering, now: float) -> list[ProviderBatch]:
        """Gathering batches that are due go to uploading; every batch of the lane being uploaded."""

        async def due(tx: Tx) -> list[ProviderBatch]:
            for row in await tx.all(
                f"SELECT {_BATCH_COLUMNS} FROM provider_batches WHERE status = 'gathering' AND lane = ?", (lane,)
            ):
                batch = _batch(row)
                if rule.due_at(batch.created_at, batch.lines, batch.bytes) <= now:
                    await _uploading(tx, batch.id)
            return await self._in(tx, lane, "uploading")

        return await self.db.run(due)

    @staticmethod
    async def _in(tx: Tx, lane: str, status: str) -> list[ProviderBatch]:
        query = f"SELECT {_BATCH_COLUMNS} FROM provider_batches WHERE status = ? AND lane = ? ORDER BY created_at"
        return [_batch(row) for row in await tx.all(query, (status, lane))]

    async def jobs_of(self, batch_id: str) -> list[Job]:
        """The jobs still waiting in a batch, in the order they joined it (the file's line order)."""

        async def rows(tx: Tx) -> list[Job]:
            query = (
                f"SELECT {JOB_COLUMNS} FROM jobs WHERE provider_batch = ? AND state = 'submitted' ORDER BY created_at"
            )
            return [job_from_row(row) for row in await tx.all(query, (batch_id,))]

        return await self.db.run(rows)

    async def staged(self, batch_id: str, file_id: str | None) -> None:
        await self.db.run(
            lambda tx: tx.execute("UPDATE provider_batches SET file_id = ? WHERE id = ?", (file_id, batch_id))
        )

    async def submitted(self, batch_id: str, remote_id: str, now: float, next_poll_at: float) -> None:
        await self.db.run(
            lambda tx: tx.execute(
                "UPDATE provider_batches SET status = 'submitted', remote_id = ?, submitted_at = ?, next_poll_at = ?,"
                " failures = 0 WHERE id = ? AND status = 'uploading'",
                (remote_id, now, next_poll_at, batch_id),
            )
        )

    async def failed_call(self, batch_id: str, error: str, next_poll_at: float) -> None:
        """A provider call for the batch failed: try again at `next_poll_at`. Its jobs say why they wait."""

        async def failed(tx: Tx) -> None:
            await tx.execute(
                "UPDATE provider_batches SET failures = failures + 1, error = ?, next_poll_at = ? WHERE id = ?",
                (error, next_poll_at, batch_id),
            )
            await tx.execute(
                "UPDATE jobs SET error = ? WHERE provider_batch = ? AND state = 'submitted'",
                (f"waiting: a call to the provider failed and is tried again ({error})", batch_id),
            )

        await self.db.run(failed)

    async def to_poll(self, lane: str, now: float) -> list[ProviderBatch]:
        async def due(tx: Tx) -> list[ProviderBatch]:
            query = (
                f"SELECT {_BATCH_COLUMNS} FROM provider_batches WHERE status = 'submitted' AND lane = ?"
                " AND next_poll_at <= ? ORDER BY next_poll_at"
            )
            return [_batch(row) for row in await tx.all(query, (lane, now))]

        return await self.db.run(due)

    async def polled(self, batch_id: str, remote_status: str, next_poll_at: float) -> None:
        await self.db.run(
            lambda tx: tx.execute(
                "UPDATE provider_batches SET polls = polls + 1, failures = 0, remote_status = ?, next_poll_at = ?"
                " WHERE id = ?",
                (remote_status, next_poll_at, batch_id),
            )
        )

    async def apply(self, batch: ProviderBatch, results: list[LineResult], fallback: str, now: float) -> Applied:
        """Store some of the batch's result lines, in one transaction: each answer ends its job and each rerun
        gives its job back to the queue for `fallback`, while the job still waits in this batch. A line for
        a job that does not (an unknown custom_id, a second line for one job) changes nothing.

        The lines of one result file come in several calls as the file streams in; `finish` ends the batch.
        A crash between two calls loses nothing: the file is read again, and the lines already stored match
        no waiting job any more.
        """

        async def apply(tx: Tx) -> Applied:
            answered: list[LineResult] = []
            rerun: list[str] = []
            unmatched: list[str] = []
            for result in results:
                if result.rerun:
                    moved = await _give_back(tx, result.custom_id, batch.id, fallback, now, result.error)
                    (rerun if moved else unmatched).append(result.custom_id)
                    continue
                state = "succeeded" if result.status is not None and 200 <= result.status < 300 else "failed"
                headers = json.dumps([("Content-Type", "application/json")]) if result.body is not None else None
                stored = await tx.execute(
                    "UPDATE jobs SET state = ?, status_code = ?, response_headers = ?, response_body = ?, error = ?,"
                    " finished_at = ?, attempts = attempts + 1, credentials = NULL"
                    " WHERE id = ? AND state = 'submitted' AND provider_batch = ?",
                    (state, result.status, headers, result.body, result.error, now, result.custom_id, batch.id),
                )
                if stored:
                    answered.append(result)
                else:
                    unmatched.append(result.custom_id)
            if rerun:
                tx.jobs_ready()
            return Applied(answered, rerun, unmatched)

        return await self.db.run(apply)

    async def finish(self, batch: ProviderBatch, fallback: str, now: float, remote_status: str) -> int:
        """End a batch whose results were all applied: every job still waiting in it (the results had no line
        for it) goes back to the queue for `fallback`; how many."""

        async def finish(tx: Tx) -> int:
            rerun = 0
            waiting = "SELECT id FROM jobs WHERE provider_batch = ? AND state = 'submitted'"
            for row in await tx.all(waiting, (batch.id,)):
                rerun += await _give_back(tx, row["id"], batch.id, fallback, now, "the provider's results had no line")
            await _end(tx, batch.id, now, remote_status)
            if rerun:
                tx.jobs_ready()
            return rerun

        return await self.db.run(finish)

    async def overdue(self, lane: str, submitted_before: float) -> list[ProviderBatch]:
        """The lane's batches at the provider since before `submitted_before` that have not ended."""

        async def rows(tx: Tx) -> list[ProviderBatch]:
            query = (
                f"SELECT {_BATCH_COLUMNS} FROM provider_batches WHERE status = 'submitted' AND lane = ?"
                " AND submitted_at < ?"
            )
            return [_batch(row) for row in await tx.all(query, (lane, submitted_before))]

        return await self.db.run(rows)

    async def late(self, lane: str, before: float) -> list[str]:
        """Jobs waiting in the lane's provider batches whose deadline falls before `before`."""

        async def rows(tx: Tx) -> list[str]:
            query = (
                "SELECT jobs.id FROM jobs JOIN provider_batches ON provider_batches.id = jobs.provider_batch"
                " WHERE jobs.state = 'submitted' AND provider_batches.lane = ? AND jobs.deadline_at < ?"
            )
            return [row["id"] for row in await tx.all(query, (lane, before))]

        return await self.db.run(rows)

    async def emptied(self, lane: str) -> list[ProviderBatch]:
        """Open batches of the lane with no job left waiting in them (all given back or cancelled)."""

        async def rows(tx: Tx) -> list[ProviderBatch]:
            query = (
                f"SELECT {_BATCH_COLUMNS} FROM provider_batches b WHERE status != 'ended' AND lane = ?"
                " AND NOT EXISTS (SELECT 1 FROM jobs WHERE provider_batch = b.id AND state = 'submitted')"
            )
            return [_batch(row) for row in await tx.all(query, (lane,))]

        return await self.db.run(rows)

    async def end(self, batch_id: str, now: float, remote_status: str | None) -> None:
        await self.db.run(lambda tx: _end(tx, batch_id, now, remote_status))

    async def batches(self, lane: str | None = None) -> list[ProviderBatch]:
        """Every provider batch (of `lane`), newest first: for the admin API and the tests."""

        async def rows(tx: Tx) -> list[ProviderBatch]:
            where, args = ("WHERE lane = ?", (lane,)) if lane is not None else ("", ())
            query = f"SELECT {_BATCH_COLUMNS} FROM provider_batches {where} ORDER BY created_at DESC"
            return [_batch(row) for row in await tx.all(query, args)]

        return await self.db.run(rows)


async def _give_back(tx: Tx, job_id: str, batch_id: str, lane: str, now: float, reason: str | None) -> int:
    return await tx.execute(
        "UPDATE jobs SET state = 'queued', lane = ?, not_before = ?, error = ?"
        " WHERE id = ? AND state = 'submitted' AND provider_batch = ?",
        (lane, now, f"given back by the provider batch: {reason}", job_id, batch_id),
    )


async def _uploading(tx: Tx, batch_id: str) -> None:
    await tx.execute("UPDATE provider_batches SET status = 'uploading' WHERE id = ?", (batch_id,))


async def _end(tx: Tx, batch_id: str, now: float, remote_status: str | None) -> None:
    await tx.execute(
        "UPDATE provider_batches SET status = 'ended', ended_at = ?, remote_status = COALESCE(?, remote_status),"
        " credentials = NULL WHERE id = ?",
        (now, remote_status, batch_id),
    )
