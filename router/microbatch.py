"""A lane's router-side micro-batcher: many client requests, one upstream call.

For a lane with a `batching:` section, requests on a batchable route
(backends.codecs) are read into parts and queued by key: the codec's key
(model, encoding, tensor layout), the upstream target, and the client's
credentials, so no request rides on another client's API key. Each key has
its own queue (policies.path.batching, run by backends.batch_loop) with the
lane's flush rule; all keys share the lane's `max_in_flight` as the cap on
merged calls at once, and a full queue answers 503. Jobs (router.jobs.runner)
queue apart from live requests, and their merged calls hold at most the
jobs' share (`jobs.max_share`) of those slots, however many jobs wait.

A merged call goes to the lane's least-loaded upstream; a connect failure
tries the lane's other upstreams, then fails every part with NothingSent so
the proxy can fail each over to another lane. A 2xx answer is split back by
the codec. Any other answer that is about the request (a 4xx or a 500) is
bisected: each half is sent again, down to single requests, so one bad input
fails only its own request and the others still get their answers. An
answer about the upstream (429, 502, 503, 504) goes to every part as it is,
since sending more would not help.

Each part is charged its share (by items) of the attributed cost of every
call it rode in. What must not live here: merging and splitting (the codecs),
the flush rule (policies.path.flush), the timers (backends.batch_loop).
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from multidict import CIMultiDict

from backends.batch_loop import BatchLoop, RunBatch
from backends.codecs import Codec, CodecError, Part, Reply
from configs.schema import LaneConfig
from policies.path.batching import Batcher, BatchItem, Pace, bisects
from policies.path.upstream_pool import ReplicaWalk, UpstreamPool
from policies.pricing import item_shares
from router.errors import (
    NothingSent,
    ProxyError,
    batch_queue_full,
    unsplittable_answer,
    upstream_failed,
    upstream_timeout,
)
from router.headers import CREDENTIAL_HEADERS, JOB_HEADER, REQUEST_ID_HEADER, Headers
from router.jobs.runner import share_of
from router.upstream_client import ConnectFailed, UpstreamBrokeOff, UpstreamClient

# Queues kept before the idle ones are dropped: one per (route, options, credentials).
MAX_QUEUES = 256

# Cost of a call: (input tokens, busy seconds) -> USD.
CallCost = Callable[[int, float], float]


class Batched(NamedTuple):
    reply: Reply
    cost_usd: float
    batch: str  # "<batch id>/<requests in the call that answered>"
    wait_s: float  # time in the queue before the first call it rode in
    busy_s: float  # its share (by items) of the upstream time of the calls it rode in


@dataclass(slots=True)
class _Waiting:
    part: Part
    done: asyncio.Future[Batched]
    cost: CallCost
    cost_usd: float = field(default=0.0)
    wait_s: float = field(default=0.0)
    busy_s: float = field(default=0.0)


class _BothSlots:
    """A semaphore-like pair: a share's slot, then the lane's; released together."""

    def __init__(self, share: asyncio.Semaphore, lane: asyncio.Semaphore):
        self.share = share
        self.lane = lane

    async def acquire(self) -> None:
        await self.share.acquire()
        try:
            await self.lane.acquire()
        except BaseException:
            self.share.release()
            raise

    def release(self) -> None:
        self.lane.release()
        self.share.release()


_batch_ids = itertools.count(1)
_BATCH_PREFIX = f"mb-{int(time.time()) % 100000:05d}-"


class MicroBatcher:
    def __init__(
        self,
        lane: str,
        config: LaneConfig,
        pool: UpstreamPool,
        client: UpstreamClient,
        clock: Callable[[], float],
        *,
        job_share: float = 1.0,
    ):
        assert config.batching is not None
        self.lane = lane
        self.clock = clock  # the router's: the pool's ejection times and the calls' busy times are on it
        self.params = config.batching
        self.timeout_s = config.timeout_s
        self.pool = pool
        self.client = client
        self._slots = asyncio.Semaphore(config.max_in_flight)
        # Merged calls of jobs take one of their share's slots, then one of the lane's (router.jobs.runner).
        self._job_slots = _BothSlots(asyncio.Semaphore(int(share_of(config, job_share))), self._slots)
        self.running = 0  # merged calls under way (at most max_in_flight)
        self.max_calls = config.max_in_flight
        self.pace = Pace(config.max_in_flight)  # items per second at full stretch, for admission
        self._loops: dict[Hashable, BatchLoop] = {}
        self._closing: set[asyncio.Task[Any]] = set()

    @property
    def saturated(self) -> bool:
        """Every merged-call slot is taken: what waits now waits for calls to finish, not for company."""
        return self.running >= self.max_calls

    @property
    def waiting(self) -> int:
        """Requests waiting in the lane's queues."""
        return sum(loop.waiting for loop in self._loops.values())

    @property
    def waiting_items(self) -> int:
        """Items waiting in them (a request may carry several): what the lane's pace drains."""
        return sum(loop.waiting_items for loop in self._loops.values())

    async def submit(self, codec: Codec, target: str, part: Part, headers: Headers, cost: CallCost) -> Batched:
        """Queue `part`; its share of the merged answer, or NothingSent / ProxyError."""
        credentials = tuple(headers.get(name, "") for name in CREDENTIAL_HEADERS)
        is_job = JOB_HEADER in headers
        key = (codec.name, target, credentials, part.key, is_job)
        loop = self._loops.get(key)
        if loop is None:
            if len(self._loops) >= MAX_QUEUES:
                self._drop_idle()
            run = self._runner(codec, target, credentials)
            batcher = Batcher(
                self.params.build(), capacity=self.params.queue_capacity, max_tokens=self.params.max_batch_tokens
            )
            # A clock that can schedule (a test's, in virtual time) runs the batch timers; else the event loop does.
            call_at = getattr(self.clock, "call_at", None)
            loop = self._loops[key] = BatchLoop(
                batcher,
                run,
                slots=self._job_slots if is_job else self._slots,
                clock=self.clock if call_at else None,
                call_at=call_at,
            )
        done: asyncio.Future[Batched] = asyncio.get_running_loop().create_future()
        item = BatchItem(payload=_Waiting(part, done, cost), items=part.items, tokens=part.tokens)
        if not loop.offer(item):
            raise batch_queue_full(self.lane, self.waiting)
        return await done

    def _runner(self, codec: Codec, target: str, credentials: tuple[str, ...]) -> RunBatch:
        headers = CIMultiDict({"Content-Type": "application/json"})
        for name, value in zip(CREDENTIAL_HEADERS, credentials):
            if value:
                headers[name] = value

        async def run(batch: list[BatchItem], waited: list[float]) -> None:
            for item, wait_s in zip(batch, waited):
                item.payload.wait_s = wait_s
            waiting = [item.payload for item in batch if not item.payload.done.done()]
            self.running += 1
            try:
                if waiting:
                    await self._call(codec, target, headers, waiting)
            finally:
                self.pace.ended(sum(item.items for item in batch), self.clock(), self.running)
                self.running -= 1

        return run

    async def _call(self, codec: Codec, target: str, headers: CIMultiDict[str], waiting: list[_Waiting]) -> None:
        parts = [w.part for w in waiting]
        batch = f"{_BATCH_PREFIX}{next(_batch_ids)}"
        call_headers = CIMultiDict(headers)
        call_headers[REQUEST_ID_HEADER] = batch
        started = self.clock()
        try:
            status, body, content_type = await self._send(target, call_headers, codec.merge(parts))
        except (NothingSent, ProxyError) as exc:
            _fail(waiting, exc)
            return
        busy_s = self.clock() - started
        label = f"{batch}/{len(waiting)}"
        if 200 <= status < 300:
            try:
                replies = codec.split(body, parts)
            except CodecError as exc:
                _fail(waiting, unsplittable_answer(self.lane, str(exc)))
                return
            self._charge(waiting, sum(r.input_tokens for r in replies), busy_s)
            for w, reply in zip(waiting, replies):
                _deliver(w, reply, label)
        elif bisects(status, len(waiting)):
            self._charge(waiting, 0, busy_s)
            half = len(waiting) // 2
            await asyncio.gather(
                self._call(codec, target, headers, waiting[:half]),
                self._call(codec, target, headers, waiting[half:]),
            )
        else:
            self._charge(waiting, 0, busy_s)
            for w in waiting:
                _deliver(w, Reply(status, body, content_type), label)

    async def _send(self, target: str, headers: CIMultiDict[str], body: bytes) -> tuple[int, bytes, str]:
        """One merged call, on the first upstream of the lane that takes the connection."""
        walk = ReplicaWalk(self.pool)
        failure = "no upstream left to try"
        now = self.clock
        while (upstream := walk.next(now())) is not None:
            upstream.in_flight += 1
            try:
                answer = await self.client.request(upstream.base, "POST", target, headers, body)
                try:
                    data = await answer.read()
                finally:
                    answer.release()
            except ConnectFailed as exc:
                walk.refused(upstream, now())
                failure = str(exc)
                continue
            except TimeoutError:
                self.pool.failed(upstream, now())
                raise upstream_timeout(self.lane, self.timeout_s) from None
            except UpstreamBrokeOff as exc:
                self.pool.failed(upstream, now())
                raise upstream_failed(self.lane, str(exc)) from None
            finally:
                upstream.in_flight -= 1
            if answer.status < 500:
                self.pool.succeeded(upstream, now())
            else:
                self.pool.failed(upstream, now())
            return answer.status, data, answer.headers.get("Content-Type", "application/json")
        raise NothingSent(failure)

    def _drop_idle(self) -> None:
        """Forget the queues with nothing in them (many clients' keys must not pile up)."""
        for key, loop in list(self._loops.items()):
            if loop.idle:
                del self._loops[key]
                self._closing.add(task := asyncio.get_running_loop().create_task(loop.close()))
                task.add_done_callback(self._closing.discard)

    def _charge(self, waiting: list[_Waiting], input_tokens: int, busy_s: float) -> None:
        total = waiting[0].cost(input_tokens, busy_s)
        for w, share in zip(waiting, item_shares([w.part.items for w in waiting])):
            w.cost_usd += total * share
            w.busy_s += busy_s * share

    async def close(self) -> None:
        """Stop the queues; requests still waiting get 503."""
        for loop in self._loops.values():
            for item in await loop.close():
                _fail([item.payload], batch_queue_full(self.lane, 0))
        self._loops.clear()


def _deliver(w: _Waiting, reply: Reply, label: str) -> None:
    if not w.done.done():
        w.done.set_result(Batched(reply, w.cost_usd, label, w.wait_s, w.busy_s))


def _fail(waiting: list[_Waiting], error: Exception) -> None:
    for w in waiting:
        if not w.done.done():
            w.done.set_exception(error)
