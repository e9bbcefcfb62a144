"""Runs stored jobs through the jobs lane, a bounded number at a time, until each has one outcome.

The runner claims due jobs from the store (router.jobs.store) and hands each
to the data plane's own entry, in process (router.proxy.Proxy.run_job),
pinned to the jobs lane (`X-Modeshift-Mode`), so a job goes through exactly
what a live request on that lane goes through: admission, the
micro-batcher where the codec merges, failover, cost attribution, metrics
and spans. No socket, no second HTTP client.

Bounds: jobs hold at most `max_share` of the lane's upstream slots
(`max_in_flight`), so they never take the whole lane from live traffic. A
job that rides the lane's micro-batcher holds 1/max_batch of a slot (it
shares a merged call); any other job holds a whole one. The runner claims
by its estimate of what the next jobs cost, starts those that fit and gives
the rest back at once. With `schedule: idle`, new jobs start only while the
lane has nobody queued.

Outcomes:
- 2xx: succeeded; any other 4xx but 408 and 429: failed, with the answer
  (the request itself is wrong; sending it again would not help);
- the router's own back-pressure (a 503 the data plane raised itself): the
  job waits for the `Retry-After` and tries again without using up an
  attempt: nothing reached an upstream;
- 408, 429, 5xx but 501, and a failure of the data plane itself: transient.
  Retried after backoff x multiplier^(attempt - 1), with jitter (x 0.5 to
  1.5), up to `attempts` tries; then failed with the last answer or error.

Deadlines: every `BACKLOG_EVERY_S` the runner counts the queued jobs due
within each horizon (policies.control.snapshot.JobsBacklog), which the capacity rule
reads to give the jobs lane the replicas that meet them.

Leases: a claim holds a job for `lease_s`, renewed every third of it while
the job runs (a heartbeat), so the lease can be short whatever the lane's
timeout: a clean stop gives running jobs back at once, and after a crash
they run again within a lease (at least once). Each job's request carries
`Idempotency-Key: <job id>`, so an upstream that deduplicates sees one
request however often a crash made it run.

What must not live here: storage (router.jobs.store), HTTP handlers (router.jobs.api).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any, NamedTuple

from configs.schema import JobsConfig, LaneConfig
from policies.control.snapshot import BACKLOG_HORIZONS_S, JobsBacklog
from router.jobs.database import StoreUnavailable
from router.jobs.store import Job, JobStore
from router.logs import event

logger = logging.getLogger("modeshift.jobs")
POLL_S = 0.2  # how often the runner looks for due retries when nothing wakes it
BACKLOG_EVERY_S = 5.0  # how often it counts the queued jobs' deadlines


class Answer(NamedTuple):
    status: int
    headers: list[tuple[str, str]]
    body: bytes
    refused: bool = False  # by the router itself, before any upstream: back-pressure


Send = Callable[[Job], Awaitable[Answer]]


def transient(status: int) -> bool:
    return status in (408, 429) or (status >= 500 and status != 501)


class JobRunner:
    def __init__(
        self,
        store: JobStore,
        config: JobsConfig,
        send: Send,
        *,
        slots: Callable[[], float],
        cost_of: Callable[[Job], float],
        lane_queued: Callable[[], int],
        lease_s: float,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
        rerouted_only: bool = False,
    ):
        self.store = store
        self.config = config
        self.send = send
        self.slots = slots  # upstream slots jobs may hold now
        self.cost_of = cost_of  # slots one job holds
        self.lane_queued = lane_queued
        self.lease_s = lease_s
        self.clock = clock
        self.rng = rng or random.Random()
        self.rerouted_only = rerouted_only  # the jobs lane is a provider's: run only what its bridge gives back
        self.running: dict[str, tuple[Job, asyncio.Task[Any]]] = {}
        self.held = 0.0  # slots the running jobs hold
        self._cost_estimate = 1.0  # of the next job: the cheapest of the last claim that ran
        self._wake = asyncio.Event()
        self._task: asyncio.Task[Any] | None = None
        self._heart: asyncio.Task[Any] | None = None
        self._counting: asyncio.Task[Any] | None = None
        self.backlog = JobsBacklog()  # the queued jobs' deadlines, as last counted
        self._said_unavailable = -math.inf

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._task = loop.create_task(self._forever())
        self._heart = loop.create_task(self._heartbeat())
        if not self.rerouted_only:  # a provider lane's jobs wait for its bridge, not for replicas
            self._counting = loop.create_task(self._count_backlog())

    async def _heartbeat(self) -> None:
        """Renew the running jobs' leases every third of a lease: a live runner never loses a job."""
        while True:
            await asyncio.sleep(self.lease_s / 3)
            jobs = [job for job, _ in self.running.values()]
            try:
                kept = await self.store.renew(jobs, self.clock() + self.lease_s)
            except Exception:  # the disk: the next beat tries again, a third of a lease later
                logger.exception("renewing job leases failed")
                continue
            for job in jobs:
                if job.id not in kept and job.id in self.running:
                    event(logger, "job_lease_lost", logging.WARNING, job=job.id)

    async def _count_backlog(self) -> None:
        while True:
            await self.count_backlog()
            await asyncio.sleep(BACKLOG_EVERY_S)

    async def count_backlog(self) -> None:
        """Count the queued jobs due within each horizon (`backlog`); the last count stands while the store
        does not answer."""
        try:
            due = await self.store.due_within(self.clock(), BACKLOG_HORIZONS_S)
        except StoreUnavailable as exc:
            self._unavailable(exc)
        except Exception:  # the disk: the next count tries again
            logger.exception("counting the jobs' deadlines failed")
        else:
            self.backlog = JobsBacklog(tuple(zip(BACKLOG_HORIZONS_S, due, strict=True)))

    def wake(self) -> None:
        self._wake.set()

    async def _forever(self) -> None:
        while True:
            free = self.slots() - self.held
            if free <= 0 or (self.config.schedule == "idle" and self.lane_queued() > 0):
                wanted = 0
            else:  # with nothing running, one job always fits, however large
                wanted = max(math.floor(free / self._cost_estimate + 1e-9), 0 if self.running else 1)
            try:
                jobs = (
                    await self.store.claim(wanted, self.clock(), self.lease_s, rerouted_only=self.rerouted_only)
                    if wanted > 0
                    else []
                )
            except StoreUnavailable as exc:  # Postgres is down: say so once a second at most, try again shortly
                self._unavailable(exc)
                jobs = []
            except Exception:  # the disk: keep the router serving, try again shortly
                logger.exception("claiming jobs failed")
                jobs = []
            if jobs and self.config.schedule == "idle" and self.lane_queued() > 0:
                # Live traffic queued while the claim was on its way (a slow store): the jobs wait for idle.
                jobs = await self._given_back(jobs)
            started = self._start(jobs)
            if not started:
                self._wake.clear()
                try:
                    async with asyncio.timeout(POLL_S):
                        await self._wake.wait()
                except TimeoutError:
                    pass

    async def _given_back(self, jobs: list[Job]) -> list[Job]:
        """Jobs claimed but not to start now, back to the queue (their attempts kept); none left to start."""
        try:
            await self.store.release(jobs)
        except Exception:  # the store: their leases run out and another claim takes them
            logger.exception("giving jobs back failed")
        return []

    def _unavailable(self, exc: StoreUnavailable) -> None:
        now = time.monotonic()
        if now - self._said_unavailable >= 1.0:
            self._said_unavailable = now
            event(logger, "job_store_unavailable", logging.WARNING, error=str(exc))

    def _start(self, jobs: list[Job]) -> int:
        """Start the claimed jobs that fit the share; give the others back. How many started."""
        fits: list[Job] = []
        back: list[Job] = []
        for job in jobs:
            cost = self.cost_of(job)
            if self.running or fits:
                if self.held + cost > self.slots() + 1e-9:
                    back.append(job)
                    continue
            fits.append(job)
            self.held += cost
            task = asyncio.get_running_loop().create_task(self._run(job))
            self.running[job.id] = (job, task)
            task.add_done_callback(functools.partial(self._ended, job.id, cost))
        if fits:
            self._cost_estimate = min(self.cost_of(job) for job in fits)
        if back:
            self._cost_estimate = max(self._cost_estimate, min(self.cost_of(job) for job in back))
            asyncio.get_running_loop().create_task(self.store.release(back))
        return len(fits)

    def _ended(self, job_id: str, cost: float, _: asyncio.Task[None]) -> None:
        self._done(job_id, cost)

    def _done(self, job_id: str, cost: float) -> None:
        self.running.pop(job_id, None)
        self.held -= cost
        self._wake.set()

    async def _run(self, job: Job) -> None:
        try:
            answer = await self.send(job)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the router's own data plane did not answer
            await self._transient(job, f"no answer: {exc!r}", None)
            return
        if answer.refused:
            await self._wait(job, answer)
        elif not transient(answer.status):
            state = "succeeded" if 200 <= answer.status < 300 else "failed"
            error = None if state == "succeeded" else f"the upstream answered {answer.status}"
            await self._finish(job, state, answer, error)
        else:
            await self._transient(job, f"the upstream answered {answer.status}", answer)

    async def _wait(self, job: Job, answer: Answer) -> None:
        """The router itself turned the job away (back-pressure): again after its Retry-After, no attempt used."""
        retry_after_s = next((float(v) for k, v in answer.headers if k.lower() == "retry-after"), 1.0)
        delay = retry_after_s * (0.5 + self.rng.random())  # spread the waiters' return
        await self.store.retry(job, self.clock() + delay, f"waiting: the lane is full ({answer.status})", counted=False)

    async def _transient(self, job: Job, error: str, answer: Answer | None) -> None:
        tried = job.attempts + 1
        if tried >= self.config.attempts:
            await self._finish(job, "failed", answer, f"{error}, {tried} attempts")
            return
        delay = self.config.backoff_s * self.config.backoff_multiplier ** (tried - 1) * (0.5 + self.rng.random())
        await self.store.retry(job, self.clock() + delay, error)

    async def _finish(self, job: Job, state: str, answer: Answer | None, error: str | None) -> None:
        kept = await self.store.finish(
            job,
            self.clock(),
            state=state,
            status_code=answer.status if answer else None,
            headers=answer.headers if answer else None,
            body=answer.body if answer else None,
            error=error,
        )
        if not kept:  # the lease ran out and another claim has the job: its outcome will be the one
            event(logger, "job_outcome_dropped", logging.WARNING, job=job.id, reason="lease lost")

    async def close(self) -> None:
        """Stop claiming; cancel what runs and give it back to the queue."""
        for task in (self._task, self._heart, self._counting):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        held = list(self.running.values())
        for _, task in held:
            task.cancel()
        await asyncio.gather(*(task for _, task in held), return_exceptions=True)
        if held:
            try:
                await self.store.release([job for job, _ in held])
            except Exception as exc:  # the database is gone: their leases run out and they run again
                event(logger, "jobs_not_given_back", logging.WARNING, jobs=len(held), error=str(exc))


def share_of(lane: LaneConfig, share: float) -> float:
    """Upstream slots jobs may hold on a lane at once: the share of its max_in_flight, at least one."""
    return max(1.0, math.floor(lane.max_in_flight * share))
