"""The durable jobs: what a job is, and the operations on it (router.jobs.database stores them).

A job is one HTTP request the router accepted to run later (`Prefer:
respond-async`, or a line of a batch), with its outcome once it has one.
States:

    queued -> running -> succeeded | failed      (running -> queued on a transient failure)
    queued -> submitted -> succeeded | failed    (in a provider batch: router.jobs.provider;
                        -> queued                 given back to run on another lane)
    queued | submitted -> cancelled

A job is acknowledged only after its commit (router.jobs.database).

At-least-once: a worker claims jobs with a lease (a random token and an
expiry) and renews it by heartbeat while the job runs. A job whose worker
crashed is claimed again once its lease has run out; an outcome is stored
only by the holder of the current lease, so each job ends with exactly one
outcome however often it ran.

Tenants: every job has an owner (router.jobs.tenants); reads name the
owner, and another owner's job is not found. Credentials are stored apart
from the other headers and erased when the job ends.

Times are wall-clock seconds passed in by the caller (leases must survive a
restart); nothing here reads a clock.

What must not live here: HTTP (router.jobs.api), running jobs (router.jobs.runner),
the database and its engines (router.jobs.database).
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import json
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from router.jobs.database import FINAL, Database, Owner, Row, Tx, owned_by

__all__ = ["FINAL", "IdempotencyConflict", "Job", "JobStore", "NewJob"]
_GROUP = 512  # jobs stored in one transaction at most


class IdempotencyConflict(Exception):
    """The key was used before for a different request."""


@dataclass(frozen=True, slots=True)
class NewJob:
    method: str
    target: str  # path and query, as the client sent them
    headers: list[tuple[str, str]]  # the end-to-end headers to send, credentials apart
    body: bytes
    owner: str
    credentials: list[tuple[str, str]]  # stored until the job ends, then erased
    idempotency_key: str | None = None
    deadline_at: float | None = None  # wall-clock seconds by which it must have its answer

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
    owner: str | None
    credentials: list[tuple[str, str]]
    deadline_at: float | None
    lane: str | None  # the lane it must run on; None: the jobs lane
    provider_batch: str | None


JOB_COLUMNS = (
    "id, created_at, state, method, target, headers, body, attempts, claims, status_code, response_headers, "
    "response_body, error, finished_at, lease_token, owner, credentials, deadline_at, lane, provider_batch"
)


def job_from_row(row: Row) -> Job:
    """A row, read by column name, with its JSON columns decoded."""
    fields = {name: value for name, value in row.items() if name in _JOB_FIELDS}
    fields["headers"] = _pairs(fields["headers"])
    fields["response_headers"] = _pairs(fields["response_headers"])
    fields["credentials"] = _pairs(fields["credentials"]) or []
    return Job(**fields)


_JOB_FIELDS = frozenset(Job.__slots__)


def _pairs(stored: str | None) -> list[tuple[str, str]] | None:
    return [tuple(pair) for pair in json.loads(stored)] if stored is not None else None


class JobStore:
    def __init__(self, db: Database):
        self.db = db
        self._arriving: list[tuple[NewJob, float, asyncio.Future[Job]]] = []  # to store in the next group
        self._storing: asyncio.Task[Any] | None = None

    async def submit(self, job: NewJob, now: float) -> tuple[Job, bool]:
        """Store `job`; (the job, True) when new, (the earlier job, False) for its owner's repeated idempotency key.

        Jobs without a key that arrive while a group is being stored are stored together in the next group,
        one transaction for all of them (each is acknowledged only once its group is committed).
        """
        if job.idempotency_key is None:
            loop = asyncio.get_running_loop()
            stored = loop.create_future()
            self._arriving.append((job, now, stored))
            if self._storing is None or self._storing.done():
                self._storing = loop.create_task(self._store_arrivals())
            return await stored, True
        payload_hash = job.payload_hash()

        async def insert(tx: Tx) -> tuple[Job, bool]:
            row = await tx.one(
                f"SELECT {JOB_COLUMNS}, payload_hash FROM jobs WHERE owner = ? AND idempotency_key = ?",
                (job.owner, job.idempotency_key),
            )
            if row is not None:
                if row["payload_hash"] != payload_hash:
                    raise IdempotencyConflict(job.idempotency_key)
                return job_from_row(row), False
            return (await _insert(tx, [(job, now)]))[0], True

        return await self.db.run(insert)

    async def _store_arrivals(self) -> None:
        while self._arriving:
            group, self._arriving = self._arriving[:_GROUP], self._arriving[_GROUP:]
            try:
                arrived = [(job, now) for job, now, _ in group]
                jobs = await self.db.run(functools.partial(_insert, jobs=arrived))
            except Exception as exc:  # the database: nothing of this group was stored
                for _, _, stored in group:
                    if not stored.done():
                        stored.set_exception(exc)
            else:
                for job, (_, _, stored) in zip(jobs, group, strict=True):
                    if not stored.done():  # its client may have gone: the job is stored all the same
                        stored.set_result(job)

    async def get(self, job_id: str, owner: Owner) -> Job | None:
        """The job, when `owner` may see it; None otherwise, as for a job that does not exist."""
        return await self.db.run(lambda tx: _get(tx, job_id, owner))

    async def cancel(self, job_id: str, owner: Owner, now: float) -> Job | None:
        """Cancel a job that has not started (queued, or waiting in a provider batch); the job as it is
        afterwards (unchanged when it had started), or None."""
        mine, mine_args = owned_by(owner)

        async def cancel(tx: Tx) -> Job | None:
            await tx.execute(
                f"UPDATE jobs SET state = 'cancelled', finished_at = ?, credentials = NULL WHERE id = ?"
                f" AND state IN ('queued', 'submitted') AND {mine}",
                (now, job_id, *mine_args),
            )
            return await _get(tx, job_id, owner)

        return await self.db.run(cancel)

    async def claim(self, limit: int, now: float, lease_s: float, *, rerouted_only: bool = False) -> list[Job]:
        """Up to `limit` jobs that are due, or whose lease ran out, oldest first, leased until now + lease_s.

        `rerouted_only`: only jobs a provider batch gave back to run on another lane (when the jobs lane is a
        provider batch lane, its bridge takes the others: router.jobs.provider.bridge).
        """
        token = secrets.token_hex(8)
        rerouted = " AND lane IS NOT NULL" if rerouted_only else ""

        async def claim(tx: Tx) -> list[Job]:
            rows = await tx.all(
                # A running job whose lease ran out was started and never ended (a crash, a lost lease, a
                # database restart): that start counts as an attempt, so a job that ran twice says 2.
                "UPDATE jobs SET attempts = attempts + CASE WHEN state = 'running' THEN 1 ELSE 0 END,"
                " state = 'running', lease_token = ?, lease_until = ?, claims = claims + 1"
                f" WHERE id IN (SELECT id FROM jobs WHERE ((state = 'queued' AND not_before <= ?)"
                f" OR (state = 'running' AND lease_until < ?)){rerouted} ORDER BY created_at LIMIT ?{tx.skip_locked})"
                f" RETURNING {JOB_COLUMNS}",
                (token, now + lease_s, now, now, limit),
            )
            return sorted((job_from_row(row) for row in rows), key=lambda j: j.created_at)

        return await self.db.run(claim) if limit > 0 else []

    async def finish(
        self,
        job: Job,
        now: float,
        *,
        state: str,
        status_code: int | None = None,
        headers: list[tuple[str, str]] | None = None,
        body: bytes | None = None,
        error: str | None = None,
    ) -> bool:
        """Store the job's one outcome; False when the lease was lost (another worker has the job now)."""
        assert state in ("succeeded", "failed")

        async def finish(tx: Tx) -> bool:
            changed = await tx.execute(
                "UPDATE jobs SET state = ?, status_code = ?, response_headers = ?, response_body = ?, error = ?,"
                " finished_at = ?, attempts = attempts + 1, lease_token = NULL, lease_until = NULL, credentials = NULL"
                " WHERE id = ? AND state = 'running' AND lease_token = ?",
                (
                    state,
                    status_code,
                    json.dumps(headers) if headers is not None else None,
                    body,
                    error,
                    now,
                    job.id,
                    job.lease_token,
                ),
            )
            return changed == 1

        return await self.db.run(finish)

    async def retry(self, job: Job, not_before: float, error: str, *, counted: bool = True) -> bool:
        """Back to the queue after a transient failure, due again at `not_before`.

        `counted=False` for a try that never reached an upstream (the router's
        own back-pressure): the job waits without using up an attempt.
        """

        async def retry(tx: Tx) -> bool:
            changed = await tx.execute(
                "UPDATE jobs SET state = 'queued', attempts = attempts + ?, not_before = ?, error = ?,"
                " lease_token = NULL, lease_until = NULL WHERE id = ? AND state = 'running' AND lease_token = ?",
                (int(counted), not_before, error, job.id, job.lease_token),
            )
            return changed == 1

        return await self.db.run(retry)

    async def renew(self, jobs: list[Job], until: float) -> set[str]:
        """Extend the leases of running jobs to `until` (a heartbeat); the ids whose lease was still theirs."""

        async def renew(tx: Tx) -> set[str]:
            kept = set()
            for job in jobs:
                if await tx.execute(
                    "UPDATE jobs SET lease_until = ? WHERE id = ? AND state = 'running' AND lease_token = ?",
                    (until, job.id, job.lease_token),
                ):
                    kept.add(job.id)
            return kept

        return await self.db.run(renew) if jobs else set()

    async def due_within(self, now: float, horizons_s: Sequence[float]) -> list[int]:
        """For each horizon, how many queued jobs are due (their deadline) before now + that horizon."""
        if not horizons_s:
            return []
        counts = ", ".join(
            f"SUM(CASE WHEN deadline_at < ? THEN 1 ELSE 0 END) AS due{k}" for k in range(len(horizons_s))
        )

        async def due(tx: Tx) -> list[int]:
            row = await tx.one(
                f"SELECT {counts} FROM jobs WHERE state = 'queued' AND deadline_at IS NOT NULL",
                [now + h for h in horizons_s],
            )
            return [int(row[f"due{k}"] or 0) if row else 0 for k in range(len(horizons_s))]

        return await self.db.run(due)

    async def release(self, jobs: list[Job]) -> None:
        """Give jobs back to the queue at once (a clean shutdown), keeping their attempts."""

        async def release(tx: Tx) -> None:
            await tx.many(
                "UPDATE jobs SET state = 'queued', lease_token = NULL, lease_until = NULL"
                " WHERE id = ? AND state = 'running' AND lease_token = ?",
                [(job.id, job.lease_token) for job in jobs],
            )
            tx.jobs_ready()

        await self.db.run(release)


async def _insert(tx: Tx, jobs: list[tuple[NewJob, float]]) -> list[Job]:
    """New queued jobs, each stored at its own time; as they are now stored."""
    made = [
        Job(
            id=f"job_{secrets.token_hex(12)}",
            created_at=now,
            state="queued",
            method=job.method,
            target=job.target,
            headers=job.headers,
            body=job.body,
            attempts=0,
            claims=0,
            status_code=None,
            response_headers=None,
            response_body=None,
            error=None,
            finished_at=None,
            lease_token=None,
            owner=job.owner,
            credentials=job.credentials,
            deadline_at=job.deadline_at,
            lane=None,
            provider_batch=None,
        )
        for job, now in jobs
    ]
    await tx.many(
        "INSERT INTO jobs (id, created_at, state, method, target, headers, body, idempotency_key, payload_hash, owner,"
        " credentials, deadline_at) VALUES (?, ?, 'queued', ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [
            (
                new.id,
                new.created_at,
                job.method,
                job.target,
                json.dumps(job.headers),
                job.body,
                job.idempotency_key,
                job.payload_hash(),
                job.owner,
                json.dumps(job.credentials),
                job.deadline_at,
            )
            for new, (job, _) in zip(made, jobs, strict=True)
        ],
    )
    tx.jobs_ready()
    return made


async def _get(tx: Tx, job_id: str, owner: Owner) -> Job | None:
    mine, mine_args = owned_by(owner)
    row = await tx.one(f"SELECT {JOB_COLUMNS} FROM jobs WHERE id = ? AND {mine}", (job_id, *mine_args))
    return job_from_row(row) if row is not None else None
