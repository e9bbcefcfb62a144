"""The bridge from the job queue to a provider's Batch API: gather, upload, poll, map back, fall back.

When the jobs lane is a provider batch lane (`batch_api:`), its jobs are not
sent one by one: every tick the bridge

1. gathers queued jobs into batch files, one per (endpoint, model, owner),
   by the flush rule shared with the simulator (policies.path.provider_batching);
   a job the provider cannot take (another endpoint, a body that is not a
   JSON object with a model) goes to the fallback lane at once;
2. gives back to the fallback lane every job still waiting at the provider
   whose deadline is within `deadline_margin` (a job's own
   `X-Modeshift-Deadline-Ms`, or a /v1/batches line's completion window);
3. cancels at the provider a batch none of whose jobs still wait for it
   (all cancelled by their clients, or given back);
4. uploads the batches that are due (file, then batch; each step stored as
   it is done, so a restart continues where it stopped and never uploads a
   file twice);
5. polls each submitted batch every `poll` (with jitter; a failed call backs
   off), and once it has ended stores each line's result in its job by
   custom_id as the result files stream in (APPLY_LINES lines a
   transaction, so memory is bounded whatever a file's size): an answer
   ends the job; an expired, cancelled or transient line runs again on the
   fallback lane, as does a line the results do not have. A line for no job
   of the batch (an unknown custom_id, a second line for one job) and a line
   that is not JSON change nothing and are counted and logged; only lines
   that ended a job are booked;
6. cancels a batch the provider has not ended within its completion window
   and `deadline_margin`, and runs its jobs on the fallback lane.

A batch whose upload fails `upload_attempts` times in a row (backing off
between tries, each failure written on its jobs) goes to the fallback lane
too, as does one the provider refuses outright. Every such fallback runs at
the fallback lane's price, without the batch discount, so it is said where
an operator looks: an error line naming the lane, the reason and the jobs,
`modeshift_provider_fallbacks{lane,reason}`, and `/status` (`provider`).
A provider that cannot list its batches or files (404, 405) only loses the
look for what a crash left half-made, never the discount.

Jobs given back are queued with their `lane` set; the job runner
(router.jobs.runner) runs them through the data plane on that lane. Each
answered line is recorded on the provider lane (latency from its job's
arrival, tokens, and the cost at the lane's price, its batch discount
included) through `record`.

Every state is in the job store (router.jobs.provider.store); this loop
keeps none of its own. One bridge acts per lane at a time, by a lease in the
store renewed every second: processes sharing the database (`serve
--workers N`) would otherwise upload the same file twice; when the holder
dies, another takes over within LEASE_S. What must not live here: HTTP shapes (the clients),
SQL (the store).
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import secrets
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from policies.path.provider_batching import BatchApiParams, FileGathering, poll_delay_s
from router.jobs.database import Database
from router.jobs.provider.anthropic import AnthropicBatchApi
from router.jobs.provider.openai import OpenAIBatchApi
from router.jobs.provider.store import Gathered, ProviderBatch, ProviderStore
from router.jobs.provider.wire import Line, LineResult, ProviderError
from router.jobs.store import Job
from router.logs import event

logger = logging.getLogger("modeshift.jobs")
TICK_S = 0.25  # how often the bridge looks for work when nothing wakes it
LEASE_S = 5.0  # the lane's bridge lease (one bridge acts per lane), renewed every second while held
GATHER_LIMIT = 5000  # jobs gathered per tick at most
APPLY_LINES = 200  # result lines stored per transaction as a result file streams in
CALLS_AT_ONCE = 4  # provider calls in flight at most
_CARRIED = ("anthropic-", "openai-")  # a job's headers the provider's batch calls carry too (versions, betas)
CLIENTS: dict[str, type[OpenAIBatchApi] | type[AnthropicBatchApi]] = {
    "openai": OpenAIBatchApi,
    "anthropic": AnthropicBatchApi,
}

# (latency_s, ok, input_tokens, output_tokens) of one line the provider answered
Record = Callable[[float, bool, int, int], None]


@dataclass(slots=True)
class BridgeCounts:
    """What the bridge did since the router started, for the metrics (router.telemetry.figures) and /status."""

    lane: str
    batches: Counter[str] = field(default_factory=Counter)  # submitted, ended, refused, dropped, overdue
    # answered, rerun (at the fallback lane); unknown, duplicate, malformed: result lines that changed nothing
    lines: Counter[str] = field(default_factory=Counter)
    fallbacks: Counter[str] = field(default_factory=Counter)  # jobs sent to the fallback lane at its price, by why
    last_fallback: dict[str, Any] | None = None  # {"at", "reason", "jobs", "to"}
    failed_calls: int = 0  # provider calls that failed and are tried again

    def view(self) -> dict[str, Any]:
        return {
            "lane": self.lane,
            "batches": dict(self.batches),
            "lines": dict(self.lines),
            "fallbacks": dict(self.fallbacks),
            "last_fallback": self.last_fallback,
            "failed_calls": self.failed_calls,
        }


class ProviderBridge:
    def __init__(
        self,
        db: Database,
        *,
        lane: str,
        params: BatchApiParams,
        base_url: str,
        fallback: str,
        record: Record,
        connect_timeout_s: float = 10.0,
        timeout_s: float = 300.0,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
    ):
        self.store = ProviderStore(db)
        self.counts = BridgeCounts(lane)
        self.lane = lane
        self.params = params
        self.rule = FileGathering.of(params)
        self.base_url = base_url
        self.fallback = fallback
        self.record = record
        self.clock = clock
        self.rng = rng or random.Random()
        self._timeout = aiohttp.ClientTimeout(total=timeout_s, connect=connect_timeout_s)
        self._session: aiohttp.ClientSession | None = None
        self._client: OpenAIBatchApi | AnthropicBatchApi | None = None
        self._calls = asyncio.Semaphore(CALLS_AT_ONCE)
        self._wake = asyncio.Event()
        self._task: asyncio.Task[Any] | None = None
        self._heart: asyncio.Task[Any] | None = None
        self.token = secrets.token_hex(8)  # this bridge, in the lane's lease
        self.holding = False

    def start(self) -> None:
        self._session = aiohttp.ClientSession(timeout=self._timeout)
        self._client = CLIENTS[self.params.api](self._session, self.base_url, self.params.completion_window)
        self._task = asyncio.get_running_loop().create_task(self._forever())
        self._heart = asyncio.get_running_loop().create_task(self._heartbeat())

    @property
    def client(self) -> OpenAIBatchApi | AnthropicBatchApi:
        """The provider's batch API, once the bridge started."""
        assert self._client is not None, "the bridge talks to the provider only once started"
        return self._client

    def wake(self) -> None:
        self._wake.set()

    async def _forever(self) -> None:
        while True:
            try:
                if not self.holding:
                    self.holding = await self.store.hold(self.lane, self.token, self.clock(), LEASE_S)
                if self.holding:
                    await self.step(self.clock())
            except Exception:  # the disk or a bug: keep the router serving, try again next tick
                logger.exception("the provider batch bridge failed a step")
            self._wake.clear()
            try:
                async with asyncio.timeout(TICK_S):
                    await self._wake.wait()
            except TimeoutError:
                pass

    async def _heartbeat(self) -> None:
        """Renew the lane's lease every second while this bridge holds it, a long upload included."""
        while True:
            await asyncio.sleep(LEASE_S / 5)
            if self.holding:
                try:
                    self.holding = await self.store.hold(self.lane, self.token, self.clock(), LEASE_S)
                except Exception:  # the disk: the lease may run out, and another bridge take over
                    logger.exception("renewing the provider bridge's lease failed")

    async def step(self, now: float) -> None:
        """One round of the six steps in the module docstring."""
        await self._gather(now)
        late = await self.store.late(self.lane, now + self.params.deadline_margin_s)
        if late:
            moved = await self.store.reroute(late, self.fallback, now, "its deadline is near: run on the fallback lane")
            event(logger, "provider_lines_late", logging.INFO, lane=self.lane, jobs=moved, to=self.fallback)
        for batch in await self.store.emptied(self.lane):
            await self._close_emptied(batch, now)
        await asyncio.gather(*(self._upload(b, now) for b in await self.store.to_upload(self.lane, self.rule, now)))
        await asyncio.gather(*(self._poll(b, now) for b in await self.store.to_poll(self.lane, now)))
        window_s = self.params.window_s + self.params.deadline_margin_s
        for batch in await self.store.overdue(self.lane, now - window_s):
            await self._overdue(batch, now)

    async def _gather(self, now: float) -> None:
        jobs = await self.store.waiting(GATHER_LIMIT, now)
        ready, refused = [], []
        for job in jobs:
            line = self._line(job)
            if line is None or (job.deadline_at is not None and job.deadline_at - self.params.deadline_margin_s <= now):
                refused.append(job.id)
                continue
            size = len(self.client.encode(line))
            ready.append((job, Gathered(job.id, line.url, str(line.body["model"]), size)))
        if refused:
            await self.store.reroute(refused, self.fallback, now, "the provider's batch API cannot take it in time")
        await self.store.gather(self.lane, self.params.api, ready, self.rule, now)

    def _line(self, job: Job) -> Line | None:
        """The job as a batch line, or None when the provider's batch API cannot take it."""
        path = job.target.partition("?")[0]
        if job.method != "POST" or path not in self.client.endpoints:
            return None
        try:
            body = json.loads(job.body)
        except ValueError:
            return None
        if not isinstance(body, dict) or not isinstance(body.get("model"), str):
            return None
        return Line(job.id, path, body)

    async def _close_emptied(self, batch: ProviderBatch, now: float) -> None:
        """Nobody waits for the batch any more: cancel it at the provider (when it is there) and end it."""
        if batch.remote_id is not None:
            try:
                async with self._calls:
                    await self.client.cancel(batch.remote_id, self._headers(batch, []))
            except (ProviderError, aiohttp.ClientError, TimeoutError) as exc:
                if isinstance(exc, ProviderError) and not exc.transient:
                    pass  # it has ended there already, or cannot be cancelled: nothing waits for it here
                else:
                    event(logger, "provider_cancel_failed", logging.WARNING, batch=batch.id, error=str(exc))
                    return  # the next tick tries again
        await self.store.end(batch.id, now, "cancelled" if batch.remote_id else None)
        self.counts.batches["dropped"] += 1
        event(logger, "provider_batch_dropped", logging.INFO, batch=batch.id, remote=batch.remote_id)

    async def _upload(self, batch: ProviderBatch, now: float) -> None:
        if batch.next_poll_at is not None and batch.next_poll_at > now:  # backing off after a failed call
            return
        jobs = await self.store.jobs_of(batch.id)
        if not jobs:
            await self.store.end(batch.id, now, None)
            return
        lines = [line for line in map(self._line, jobs) if line is not None]
        content = b"".join(self.client.encode(line) for line in lines)
        headers = self._headers(batch, jobs)
        try:
            async with self._calls:
                remote = await self.client.find(batch.id, headers)
                if remote is None:
                    staged = await self.client.stage(batch.id, content, headers, batch.file_id)
                    if staged != batch.file_id:
                        await self.store.staged(batch.id, staged)
                    remote = await self.client.create(batch.id, batch.endpoint, content, staged, headers)
        except (ProviderError, aiohttp.ClientError, TimeoutError) as exc:
            await self._call_failed(batch, exc, now)
            return
        await self.store.submitted(batch.id, remote, now, now + poll_delay_s(self.params.poll_s, 0, self.rng.random()))
        self.counts.batches["submitted"] += 1
        event(logger, "provider_batch_submitted", logging.INFO, batch=batch.id, remote=remote, lines=len(lines))

    async def _poll(self, batch: ProviderBatch, now: float) -> None:
        headers = self._headers(batch, [])
        lines: Counter[str] = Counter()
        remote_id = batch.remote_id
        assert remote_id is not None, "only a batch the provider took is polled"
        try:
            async with self._calls:
                state = await self.client.state(remote_id, headers)
                if state.ended:
                    await self._apply(batch, self.client.results(remote_id, headers), lines, now)
        except (ProviderError, aiohttp.ClientError, TimeoutError) as exc:
            await self._call_failed(batch, exc, now)  # lines applied so far stay: the file is read again
            return
        if not state.ended:
            await self.store.polled(
                batch.id, state.status, now + poll_delay_s(self.params.poll_s, 0, self.rng.random())
            )
            return
        lines["rerun"] += await self.store.finish(batch, self.fallback, now, state.status)
        self.counts.batches["ended"] += 1
        self.counts.lines.update(lines)
        stray = {kind: lines[kind] for kind in ("unknown", "duplicate", "malformed") if lines[kind]}
        event(
            logger,
            "provider_batch_ended",
            logging.WARNING if stray else logging.INFO,
            batch=batch.id,
            remote=batch.remote_id,
            status=state.status,
            answered=lines["answered"],
            rerun=lines["rerun"],
            **({"ignored_lines": stray} if stray else {}),
        )

    async def _apply(
        self, batch: ProviderBatch, results: AsyncIterator[LineResult | None], lines: Counter[str], now: float
    ) -> None:
        """Store a batch's result lines as they stream in, APPLY_LINES at a time; book only those that ended a
        job, and count the rest by kind into `lines`."""
        seen: set[str] = set()  # custom_ids of lines that matched a job: a second line for one is a duplicate
        chunk: list[LineResult] = []

        async def flush() -> None:
            applied = await self.store.apply(batch, chunk, self.fallback, now)
            self._record(batch, applied.answered, now)
            lines["answered"] += len(applied.answered)
            lines["rerun"] += len(applied.rerun)
            seen.update(result.custom_id for result in applied.answered)
            seen.update(applied.rerun)
            for custom_id in applied.unmatched:
                lines["duplicate" if custom_id in seen else "unknown"] += 1
            chunk.clear()

        async for result in results:
            if result is None:
                lines["malformed"] += 1
                continue
            chunk.append(result)
            if len(chunk) >= APPLY_LINES:
                await flush()
        if chunk:
            await flush()

    async def _overdue(self, batch: ProviderBatch, now: float) -> None:
        """The provider has not ended the batch within its completion window and the margin: cancel it there
        (best effort) and run its jobs on the fallback lane."""
        try:
            if batch.remote_id is not None:
                async with self._calls:
                    await self.client.cancel(batch.remote_id, self._headers(batch, []))
        except (ProviderError, aiohttp.ClientError, TimeoutError) as exc:
            event(logger, "provider_cancel_failed", logging.WARNING, batch=batch.id, error=str(exc))
        window = self.params.completion_window
        await self._fall_back(
            batch,
            now,
            "completion_window",
            f"the provider did not end the batch within its completion window ({window}) and the margin",
        )
        await self.store.end(batch.id, now, "overdue")
        self.counts.batches["overdue"] += 1

    async def _fall_back(self, batch: ProviderBatch, now: float, kind: str, reason: str) -> int:
        """Every job still waiting in the batch goes to the fallback lane, at its price: said loudly."""
        job_ids = [job.id for job in await self.store.jobs_of(batch.id)]
        moved = await self.store.reroute(job_ids, self.fallback, now, reason)
        self.counts.fallbacks[kind] += moved
        self.counts.lines["rerun"] += moved
        self.counts.last_fallback = {"at": now, "reason": reason, "jobs": moved, "to": self.fallback, "batch": batch.id}
        event(
            logger,
            "provider_fallback",
            logging.ERROR,
            lane=self.lane,
            to=self.fallback,
            jobs=moved,
            reason=reason,
            batch=batch.id,
            cost=f"at lane {self.fallback}'s price, without the batch discount",
        )
        return moved

    async def _call_failed(self, batch: ProviderBatch, exc: Exception, now: float) -> None:
        """A transient failure is tried again later, backing off; any other (the provider refused the file,
        or no longer knows the batch), or an upload failing `upload_attempts` times, gives the batch's jobs to
        the fallback lane and ends it."""
        refused = isinstance(exc, ProviderError) and not exc.transient
        gave_up = batch.remote_id is None and batch.failures + 1 >= self.params.upload_attempts
        if refused or gave_up:
            why = (
                f"the provider refused the batch: {exc}"
                if refused
                else f"the provider failed {batch.failures + 1} times to take the batch; the last: {exc}"
            )
            await self._fall_back(batch, now, "refused", why)
            await self.store.end(batch.id, now, "refused")
            self.counts.batches["refused"] += 1
            return
        self.counts.failed_calls += 1
        delay = poll_delay_s(self.params.poll_s, batch.failures + 1, self.rng.random())
        await self.store.failed_call(batch.id, str(exc) or type(exc).__name__, now + delay)
        event(logger, "provider_call_failed", logging.WARNING, batch=batch.id, error=str(exc), retry_in_s=round(delay))

    def _record(self, batch: ProviderBatch, answered: list[LineResult], now: float) -> None:
        """Book the lines that ended a job, once each: on the lane's window, at the lane's price."""
        latency_s = max(now - batch.created_at, 0.0)
        for result in answered:
            ok = result.status is not None and result.status < 500
            self.record(latency_s, ok, result.input_tokens, result.output_tokens)

    @staticmethod
    def _headers(batch: ProviderBatch, jobs: list[Job]) -> list[tuple[str, str]]:
        """The batch's calls carry its owner's credentials and the provider headers its jobs were sent with."""
        carried = [(k, v) for k, v in (jobs[0].headers if jobs else []) if k.lower().startswith(_CARRIED)]
        return [*batch.credentials, *carried]

    async def close(self) -> None:
        for task in (self._task, self._heart):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        if self._session is not None:
            await self._session.close()
