"""Runs a micro-batch queue on asyncio: the timers and the flush calls.

The decisions (what goes into the next batch, when it is due, which items
expired) belong to policies.path.batching.Batcher and its flush rule; this loop
only carries them out. One task waits for the batch to be due, takes it and
hands it to `run_batch`; at most `concurrency` batches run at once, and while
they all run the queue keeps filling, so a busy device gets larger batches
(the dynamic batching of Triton and TorchServe).

Each `BatchItem.payload` is whatever the caller needs to answer its request
(usually a future); `run_batch` answers the items it is given and
`on_expired` those whose deadline passed in the queue. Both must not raise:
an exception there is logged and the loop goes on.

Time is the event loop's unless a `clock` is given (the router gives its
own, so queue waits and busy times are on the clock its metrics use), and
timers are the event loop's unless a `call_at(when_s, callback)` on that
clock is given: a test's fake clock then decides when a batch is due, and
the loop runs in virtual time like the simulator (tests/router/test_parity.py).

Used by the reference model server's batch mode and by the router's
micro-batcher. What must not live here: the flush rule (policies.path.flush),
how a batch is merged or split (the codecs).
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from policies.path.batching import Batcher, BatchItem

logger = logging.getLogger("modeshift.batching")

RunBatch = Callable[[list[BatchItem], list[float]], Awaitable[None]]


class Slots(Protocol):
    """What bounds the batches running at once: a semaphore, or anything acquired and released like one."""

    async def acquire(self) -> Any: ...

    def release(self) -> None: ...


OnExpired = Callable[[list[BatchItem]], None]


class Cancellable(Protocol):
    def cancel(self) -> None: ...


CallAt = Callable[[float, Callable[[], None]], Cancellable]


class BatchLoop:
    def __init__(
        self,
        batcher: Batcher,
        run_batch: RunBatch,
        *,
        on_expired: OnExpired | None = None,
        concurrency: int = 1,
        slots: Slots | None = None,
        clock: Callable[[], float] | None = None,
        call_at: CallAt | None = None,
    ):
        """`slots`, when given, is shared with other loops (one lane's cap over all its queues)."""
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        self.batcher = batcher
        self._run_batch = run_batch
        self._on_expired = on_expired or (lambda items: None)
        self._slots: Slots = slots or asyncio.Semaphore(concurrency)
        self._changed = asyncio.Event()
        self._running: set[asyncio.Task[None]] = set()
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None  # bound on the first offer
        self._clock = clock
        self._call_at = call_at

    @property
    def _bound(self) -> asyncio.AbstractEventLoop:
        """The event loop the first offer bound this loop to."""
        assert self._loop is not None, "a batch loop runs only once something was offered"
        return self._loop

    def _now(self) -> float:
        return self._clock() if self._clock is not None else self._bound.time()

    def _wake_at(self, due: float, callback: Callable[[], None]) -> Cancellable:
        if self._call_at is not None:
            return self._call_at(due, callback)
        if self._clock is not None:
            return self._bound.call_later(max(due - self._clock(), 0.0), callback)
        return self._bound.call_at(due, callback)

    def offer(self, item: BatchItem) -> bool:
        """Queue `item`; False when the queue is full (the caller answers 503)."""
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        if not self.batcher.offer(item, self._now()):
            return False
        if self._task is None:
            self._task = self._loop.create_task(self._serve())
        self._changed.set()
        return True

    @property
    def waiting(self) -> int:
        return len(self.batcher)

    @property
    def waiting_items(self) -> int:
        return self.batcher.items

    @property
    def idle(self) -> bool:
        """Nothing queued and no batch running."""
        return not len(self.batcher) and not self._running

    async def _serve(self) -> None:
        while True:
            await self._slots.acquire()
            try:
                batch, waited = await self._next_batch()
            except BaseException:
                self._slots.release()
                raise
            task = self._bound.create_task(self._run(batch, waited))
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    async def _next_batch(self) -> tuple[list[BatchItem], list[float]]:
        """Wait until the queue's batch is due, then take it."""
        while True:
            self._changed.clear()
            due = self.batcher.due_at()
            if due is None or due == math.inf:  # empty, or a size rule still short of its batch
                await self._changed.wait()
                continue
            now = self._now()
            if due > now:
                # Wake at `due`, or sooner when a new item may make it due:
                # a timer that sets the event, so no cancellation is involved.
                timer = self._wake_at(due, self._changed.set)
                try:
                    await self._changed.wait()
                finally:
                    timer.cancel()
                continue
            taken = self.batcher.take(now)
            if taken.expired:
                self._answer_expired(taken.expired)
            if taken.batch:
                return taken.batch, taken.waited_s

    async def _run(self, batch: list[BatchItem], waited: list[float]) -> None:
        started = self._now()
        try:
            await self._run_batch(batch, waited)
        except Exception:
            logger.exception("a batch of %d items failed outside its own error handling", len(batch))
        finally:
            self.batcher.rule.observe(sum(item.items for item in batch), self._now() - started)
            self._slots.release()

    def _answer_expired(self, items: list[BatchItem]) -> None:
        try:
            self._on_expired(items)
        except Exception:
            logger.exception("answering %d expired items failed", len(items))

    async def close(self) -> list[BatchItem]:
        """Stop taking batches, let running ones finish; returns what was still queued."""
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        if self._running:
            await asyncio.gather(*self._running, return_exceptions=True)
        return self.batcher.drain()
