"""Admission to a lane: at most `max_in_flight` upstream calls, then a bounded queue.

A request either takes a free slot at once, waits in the lane's queue (at
most `queue_depth` waiting, each for at most `queue_timeout_s`), or is turned
away with `LaneFull`, which the proxy answers with 503 + Retry-After or
spills to another lane. A released slot passes straight to the oldest
waiter, so a queued request cannot be overtaken by one that arrives later.

What must not live here: what to do when a lane is full (router.proxy).
"""

from __future__ import annotations

import asyncio
from collections import deque


class LaneFull(Exception):
    """The lane has no free slot and no room (or no time) left in its queue."""


class LaneGate:
    def __init__(self, max_in_flight: int, queue_depth: int, queue_timeout_s: float):
        self.max_in_flight = max_in_flight
        self.queue_depth = queue_depth
        self.queue_timeout_s = queue_timeout_s
        self.in_flight = 0
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    @property
    def idle(self) -> bool:
        return self.in_flight == 0 and not self._waiters

    def try_enter(self) -> bool:
        """Take a free slot if there is one, without waiting."""
        if self.in_flight < self.max_in_flight and not self._waiters:
            self.in_flight += 1
            self._idle.clear()
            return True
        return False

    async def enter(self) -> None:
        """Take a slot, queueing for it if need be; raises LaneFull."""
        if self.try_enter():
            return
        if len(self._waiters) >= self.queue_depth:
            raise LaneFull
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            async with asyncio.timeout(self.queue_timeout_s):
                await waiter
        except TimeoutError:
            if _handed_over(waiter):
                return  # the slot arrived together with the timeout: keep it
            self._discard(waiter)
            raise LaneFull from None
        except asyncio.CancelledError:
            if _handed_over(waiter):
                self.leave()  # the slot arrived as we were cancelled: pass it on
            else:
                self._discard(waiter)
            raise

    def leave(self) -> None:
        """Give a slot back: to the oldest waiter, or to the pool."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)  # the slot moves to the waiter; in_flight is unchanged
                return
        self.in_flight -= 1
        if self.in_flight == 0:
            self._idle.set()

    async def wait_idle(self) -> None:
        """Return once no slot is taken and nobody waits."""
        await self._idle.wait()

    def _discard(self, waiter: asyncio.Future[None]) -> None:
        try:
            self._waiters.remove(waiter)
        except ValueError:
            pass


def _handed_over(waiter: asyncio.Future[None]) -> bool:
    return waiter.done() and not waiter.cancelled()
