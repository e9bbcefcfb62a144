"""Runs stored jobs through the jobs lane, a bounded number at a time, until each has one outcome.

The runner claims due jobs from the store (router.job_store) and sends each
to the router's own data plane, pinned to the jobs lane
(`X-Modeshift-Mode`), so a job goes through exactly what a live request on
that lane goes through: admission, the micro-batcher where the codec
merges, failover, cost attribution, metrics and spans.

Bounds: at most `max_share` of the lane's `max_in_flight` jobs at once, so
jobs never take the whole lane from live traffic; with `schedule: idle`,
new jobs start only while the lane has nobody queued.

Outcomes:
- 2xx: succeeded; any other 4xx but 408 and 429: failed, with the answer
  (the request itself is wrong; sending it again would not help);
- 408, 429, 5xx but 501, and a router that cannot be reached: transient.
  Retried after backoff x multiplier^(attempt - 1), with jitter (x 0.5 to
  1.5), up to `attempts` tries; then failed with the last answer or error.

A clean stop gives running jobs back to the queue at once; after a crash
they run again when their lease runs out (at least once).

What must not live here: storage (router.job_store), HTTP handlers (router.jobs_api).
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import time
from collections.abc import Awaitable, Callable
from typing import NamedTuple

from configs.schema import JobsConfig, LaneConfig
from router.job_store import Job, JobStore
from router.logs import event

logger = logging.getLogger("modeshift.jobs")
POLL_S = 0.2  # how often the runner looks for due retries when nothing wakes it


class Answer(NamedTuple):
    status: int
    headers: list[tuple[str, str]]
    body: bytes


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
        slots: Callable[[], int],
        lane_queued: Callable[[], int],
        lease_s: float,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
    ):
        self.store = store
        self.config = config
        self.send = send
        self.slots = slots
        self.lane_queued = lane_queued
        self.lease_s = lease_s
        self.clock = clock
        self.rng = rng or random.Random()
        self.running: dict[str, tuple[Job, asyncio.Task]] = {}
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._forever())

    def wake(self) -> None:
        self._wake.set()

    async def _forever(self) -> None:
        while True:
            free = self.slots() - len(self.running)
            if self.config.schedule == "idle" and self.lane_queued() > 0:
                free = 0
            try:
                jobs = await self.store.claim(free, self.clock(), self.lease_s) if free > 0 else []
            except Exception:  # the disk: keep the router serving, try again shortly
                logger.exception("claiming jobs failed")
                jobs = []
            for job in jobs:
                task = asyncio.get_running_loop().create_task(self._run(job))
                self.running[job.id] = (job, task)
                task.add_done_callback(lambda _, job_id=job.id: self._done(job_id))
            if not jobs:
                self._wake.clear()
                try:
                    async with asyncio.timeout(POLL_S):
                        await self._wake.wait()
                except TimeoutError:
                    pass

    def _done(self, job_id: str) -> None:
        self.running.pop(job_id, None)
        self._wake.set()

    async def _run(self, job: Job) -> None:
        try:
            answer = await self.send(job)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the router's own data plane did not answer
            await self._transient(job, f"no answer: {exc!r}", None)
            return
        if not transient(answer.status):
            state = "succeeded" if 200 <= answer.status < 300 else "failed"
            error = None if state == "succeeded" else f"the upstream answered {answer.status}"
            await self._finish(job, state, answer, error)
        else:
            await self._transient(job, f"the upstream answered {answer.status}", answer)

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
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        held = list(self.running.values())
        for _, task in held:
            task.cancel()
        await asyncio.gather(*(task for _, task in held), return_exceptions=True)
        if held:
            await self.store.release([job for job, _ in held])


def share_of(lane: LaneConfig, share: float) -> int:
    """Jobs allowed at once on a lane: the share of the requests it holds at once, at least one.

    A micro-batching lane's slots are merged calls of up to max_batch requests each.
    """
    per_slot = lane.batching.max_batch if lane.batching is not None else 1
    return max(1, math.floor(lane.max_in_flight * per_slot * share))
