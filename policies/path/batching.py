"""The micro-batcher's queue: bounded, by priority, with per-item deadlines.

`Batcher` decides what goes into the next upstream batch and when; the
router's timers and sockets carry it out (decide, then act):

    if batcher.offer(item, now_s):           # False: queue full -> 503
        arm_timer(batcher.due_at())
    ...                                      # when the timer fires:
    taken = batcher.take(now_s)              # .batch to send, .expired to answer 504

Order: a lower `priority` number is more urgent (Triton's convention); equal
priorities leave in arrival order. A batch takes items in that order until
the rule's `limit()` in items, or `max_tokens` in input tokens, would be
passed; an item larger than either goes alone rather than waiting forever.
The token bound keeps one huge input from slowing every request merged with
it (a 3 MB text made 31 small ones 40 times slower): it rides a call of its
own.

Deadlines: an item's `deadline_s` is the latest time it may be dispatched
(the router computes it from the client's deadline less the expected service
time). The batch is due no later than the earliest deadline in the queue, and
an item still queued after its deadline is expired, not sent.

The queue holds at most `capacity` requests; `offer` refuses more (Triton's
REJECT policy) rather than letting latency grow without bound.

`Pace` is how fast the lane serves items with every merged-call slot
taken: what a backlog drains at, for admission (policies.path.admission).

After a merged call fails, `bisects(status, parts)` says whether its halves
are sent again: yes for an answer about the request (a 4xx or a 500: one bad
input fails only its own request), no for one about the upstream (429, 502,
503, 504: sending more would not help) or a call of one part.
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from policies.path.flush import FlushRule

UPSTREAM_TROUBLE = frozenset({429, 502, 503, 504})

# Weight of the newest call in a Pace's averages: about the last twenty calls count.
PACE_WEIGHT = 0.1


def bisects(status: int, parts: int) -> bool:
    """Whether a merged call of `parts` answered `status` (not 2xx) is split in two and each half sent again."""
    return parts > 1 and status not in UPSTREAM_TROUBLE


class Pace:
    """How fast a micro-batch lane serves items while all its `slots` merged calls are under way.

    Measured between the ends of calls that each ended at full stretch (every
    slot taken), so a gap is the time the lane took to serve that call's
    items when nothing stood idle, its upstream's queue included; averaged
    over the last twenty or so calls (gaps and items apart: items over time,
    not a mean of ratios). That is the rate a backlog drains at, which the
    metrics window's items per second is not: a lane that took traffic only
    in the last second of a ten-second window shows a tenth of its pace.
    Until two calls in a row have ended at full stretch, `items_per_s` takes
    `slots` calls as large and as long as the metrics window's (Little's law:
    what was not measured is not taken for slow).
    """

    def __init__(self, slots: int):
        if slots < 1:
            raise ValueError(f"need slots >= 1, got {slots}")
        self.slots = slots
        self._gap_s = math.nan
        self._items = math.nan
        self._last_end_s = math.nan

    def ended(self, items: int, now_s: float, running: int) -> None:
        """A merged call of `items` ended at `now_s`, `running` calls under way just before (itself included)."""
        if running < self.slots:
            self._last_end_s = math.nan  # a slot stood free: the next gap is not the lane at full stretch
            return
        if not math.isnan(self._last_end_s):
            gap = now_s - self._last_end_s
            if math.isnan(self._gap_s):
                self._gap_s, self._items = gap, float(items)
            else:
                self._gap_s += PACE_WEIGHT * (gap - self._gap_s)
                self._items += PACE_WEIGHT * (items - self._items)
        self._last_end_s = now_s

    def items_per_s(self, items_per_busy_s: float = math.nan) -> float:
        """Items served per second at full stretch; before it was measured, `slots` times `items_per_busy_s`
        (the window's items per second of calls). NaN when neither is known."""
        if self._gap_s > 0:
            return self._items / self._gap_s
        return self.slots * items_per_busy_s


@dataclass(frozen=True, slots=True)
class BatchItem:
    payload: Any
    items: int = 1
    tokens: int = 0  # input tokens (estimated where not known), for the call's size bound
    priority: int = 0
    deadline_s: float | None = None


@dataclass(slots=True)
class _Entry:
    seq: int
    item: BatchItem
    enqueued_s: float
    gone: bool = False


@dataclass(frozen=True, slots=True)
class Taken:
    batch: list[BatchItem] = field(default_factory=list)
    expired: list[BatchItem] = field(default_factory=list)
    waited_s: list[float] = field(default_factory=list)


class Batcher:
    def __init__(self, rule: FlushRule, capacity: int = 1024, max_tokens: float = float("inf")):
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.rule = rule
        self.capacity = capacity
        self.max_tokens = max_tokens
        self._classes: dict[int, deque[_Entry]] = {}
        self._arrivals: deque[_Entry] = deque()  # arrival order, for the oldest item
        self._deadlines: list[tuple[float, int, _Entry]] = []
        self._seq = itertools.count()
        self._requests = 0
        self._items = 0

    def __len__(self) -> int:
        """Requests waiting."""
        return self._requests

    @property
    def items(self) -> int:
        """Items waiting (a request may carry several): what a merged call's size counts."""
        return self._items

    def offer(self, item: BatchItem, now_s: float) -> bool:
        """Queue `item`; False when the queue is full."""
        if self._requests >= self.capacity:
            return False
        entry = _Entry(next(self._seq), item, now_s)
        self._classes.setdefault(item.priority, deque()).append(entry)
        self._arrivals.append(entry)
        if item.deadline_s is not None:
            heapq.heappush(self._deadlines, (item.deadline_s, entry.seq, entry))
        self._requests += 1
        self._items += item.items
        return True

    def due_at(self) -> float | None:
        """When `take` must next be called; None when nothing waits."""
        oldest = self._head(self._arrivals)
        if oldest is None:
            return None
        due = self.rule.due_at(oldest.enqueued_s, self._items)
        deadline = self._earliest_deadline()
        return min(due, deadline) if deadline is not None else due

    def take(self, now_s: float) -> Taken:
        """Expire late items; if the batch is due, take it."""
        expired = self._expire(now_s)
        due = self.due_at()
        if due is None or due > now_s:
            return Taken(expired=expired)
        limit = self.rule.limit()
        batch: list[BatchItem] = []
        waited: list[float] = []
        size = tokens = 0
        for priority in sorted(self._classes):
            queue = self._classes[priority]
            while (entry := self._head(queue)) is not None:
                item = entry.item
                if batch and (size + item.items > limit or tokens + item.tokens > self.max_tokens):
                    # The next item in order does not fit: the batch is full.
                    # (Skipping it for a smaller, less urgent one would break the order.)
                    return Taken(batch=batch, expired=expired, waited_s=waited)
                queue.popleft()
                self._remove(entry)
                batch.append(item)
                waited.append(now_s - entry.enqueued_s)
                size += item.items
                tokens += item.tokens
                if tokens > self.max_tokens:  # an outsized item, alone: nothing rides with it
                    return Taken(batch=batch, expired=expired, waited_s=waited)
        return Taken(batch=batch, expired=expired, waited_s=waited)

    def drain(self) -> list[BatchItem]:
        """Everything still queued, in priority order (shutdown)."""
        items = [e.item for p in sorted(self._classes) for e in self._classes[p] if not e.gone]
        for p in self._classes.values():
            for e in p:
                e.gone = True
            p.clear()
        self._arrivals.clear()
        self._deadlines.clear()
        self._requests = self._items = 0
        return items

    def _expire(self, now_s: float) -> list[BatchItem]:
        expired = []
        while self._deadlines and self._deadlines[0][0] < now_s:
            _, _, entry = heapq.heappop(self._deadlines)
            if not entry.gone:
                self._remove(entry)
                expired.append(entry.item)
        return expired

    def _remove(self, entry: _Entry) -> None:
        entry.gone = True
        self._requests -= 1
        self._items -= entry.item.items

    def _earliest_deadline(self) -> float | None:
        heap = self._deadlines
        while heap and heap[0][2].gone:
            heapq.heappop(heap)
        return heap[0][0] if heap else None

    @staticmethod
    def _head(queue: deque[_Entry]) -> _Entry | None:
        while queue and queue[0].gone:
            queue.popleft()
        return queue[0] if queue else None
