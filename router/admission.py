"""A lane's admission gate, live: policies.path.admission.Gate with asyncio futures as tickets.

The rules (slots, the priority queue with aging, who gets a released slot,
the predicted wait) are the sans-I/O Gate's, shared with the simulator; this
module only waits. A request either takes a free slot at once or waits in
the queue for at most `queue_timeout_s`; `enter` raises `LaneFull` when the
queue has no room (or a more urgent request took its place) and
`QueueTimedOut` when the wait ran out. Whether a request should wait here
at all is decided before, by policies.path.admission.place (router.proxy asks it).

What must not live here: what to do when a lane is full (router.proxy).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable

from policies.path.admission import Gate


class LaneFull(Exception):
    """The lane has no free slot and no room left in its queue."""


class QueueTimedOut(Exception):
    """The request waited `queue_timeout_s` in the lane's queue without a slot."""


class _Shed(Exception):
    """A more urgent request took this one's place in the full queue."""


class LaneGate:
    def __init__(
        self,
        max_in_flight: int,
        queue_depth: int,
        queue_timeout_s: float,
        aging_s: float = math.inf,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.core: Gate[asyncio.Future[None]] = Gate(max_in_flight, queue_depth, aging_s)
        self.queue_timeout_s = queue_timeout_s
        self.clock = clock
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def max_in_flight(self) -> int:
        return self.core.slots

    @property
    def queue_depth(self) -> int:
        return self.core.depth

    @property
    def in_flight(self) -> int:
        return self.core.in_flight

    @property
    def waiting(self) -> int:
        return self.core.waiting

    @property
    def idle(self) -> bool:
        return self.core.idle

    def try_enter(self) -> bool:
        """Take a free slot if there is one, without waiting."""
        if self.core.try_enter():
            self._idle.clear()
            return True
        return False

    async def enter(self, priority: int = 1) -> None:
        """Take a slot, queueing for it at `priority` if need be; LaneFull or QueueTimedOut."""
        if self.try_enter():
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        shed = self.core.make_room(priority)
        if shed is not None and not shed.ticket.done():
            shed.ticket.set_exception(_Shed())
        waiter = self.core.enqueue(future, priority, self.clock())
        if waiter is None:
            raise LaneFull
        try:
            async with asyncio.timeout(self.queue_timeout_s):
                await future
        except _Shed:
            raise LaneFull from None
        except TimeoutError:
            if self.core.withdraw(waiter):
                raise QueueTimedOut from None
            # the slot arrived together with the timeout: keep it
        except asyncio.CancelledError:
            if not self.core.withdraw(waiter):
                self.leave()  # the slot arrived as we were cancelled: pass it on
            raise

    def leave(self) -> None:
        """Give a slot back: to the best waiter, or to the pool."""
        waiter = self.core.release(self.clock())
        if waiter is not None:
            if not waiter.ticket.done():
                waiter.ticket.set_result(None)  # the slot moves to the waiter; in_flight is unchanged
        elif self.core.idle:
            self._idle.set()

    async def wait_idle(self) -> None:
        """Return once no slot is taken and nobody waits."""
        await self._idle.wait()
