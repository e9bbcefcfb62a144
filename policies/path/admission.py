"""Admission to a lane, as rules: a gate of slots with a priority queue, and where a request may wait.

`Gate` is one lane's admission state, sans-I/O: `slots` calls at once, then
at most `depth` waiters (a full queue sheds its least urgent waiter for a
more urgent newcomer), ordered by priority (a lower number first: pinned
and priority classes before switchable, switchable before sheddable) and,
within a priority, by arrival. Aging stops starvation: a waiter's priority
improves by one level for every `aging_s` it has waited, so a switchable
request that waited `aging_s` goes before a pinned one that just came. A
released slot passes straight to the best waiter (its in-flight count never
drops in between), so nobody can overtake the queue by arriving at the
right moment.

`place` decides where one request goes before it waits anywhere (late
binding, Little's law): a lane with a free slot predicts its recent service
time (a switchable request leaves a free but slow lane for one that meets
its objective, and otherwise takes the slot); a full one predicts a wait:
the waiters ahead of the
request, plus itself, over the rate at which slots free up for it, less the
rate at which more urgent classes join the queue (those keep overtaking it
while it waits). Both rates are measured by the gate itself, so they follow
a rush or an upstream that slows down at once, where the metrics window
still holds the calm before: slots freeing up between releases while every
slot was taken, and each class joining between its arrivals in the queue
(averages of the last twenty or so gaps). Before any such gap, they are the
slots over the lane's mean service time, and the more urgent classes' rate
of service, in the metrics window. A request that can take a
free slot, or whose wait plus service on its drawn lane meets its
objective, stays there. A switchable one that would miss goes to the
cheapest lane predicted to meet it. With none, it spills when its lane has
`spill` set (the operator chose a late answer over none) to a lane that can
take it before its queue timeout, and is otherwise refused at once, with a
Retry-After from the drawn lane's predicted drain time: never after a long
wait that was bound to fail. "No data" never
counts as "too slow": a lane with no service time measured yet is predicted
to meet any objective.

The router (router.admission, with asyncio futures as tickets) and the
simulator (integers, with events for timeouts) drive the same Gate and call
the same `place`, so overload plays out alike in both. Nothing here reads a
clock: time is the `now_s` of each call.
"""

from __future__ import annotations

import itertools
import math
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from policies.control.snapshot import Snapshot
from policies.path.batching import Pace

T = TypeVar("T")

# A prediction is a mean; the request's own wait and service scatter around it. To count as meeting an
# objective, the predicted wait plus service must stay within this share of the objective's latency.
HEADROOM = 0.8

# Weight of the newest gap in the gate's release-gap average: about the last 20 releases count.
GAP_WEIGHT = 0.1


@dataclass(slots=True)
class Waiter(Generic[T]):
    """A place in a gate's queue; `ticket` is whatever the driver wakes when the slot comes."""

    ticket: T
    priority: int
    since_s: float
    seq: int
    waiting: bool = True


class Gate(Generic[T]):
    def __init__(self, slots: int, depth: int, aging_s: float = math.inf):
        if slots < 1 or depth < 0 or aging_s <= 0:
            raise ValueError(f"need slots >= 1, depth >= 0, aging_s > 0; got {slots}, {depth}, {aging_s}")
        self.slots = slots
        self.depth = depth
        self.aging_s = aging_s
        self.in_flight = 0
        self.waiting = 0
        self._queues: dict[int, deque[Waiter[T]]] = {}
        self._waiting_by_priority: dict[int, int] = {}
        self._seq = itertools.count()
        # Seconds between slots freeing up while all were taken (EWMA); NaN until measured.
        self._gap_s = math.nan
        self._last_full_release_s = math.nan
        # Per priority, seconds between requests joining the queue (EWMA), and when the last one joined.
        self._joining_gap_s: dict[int, float] = {}
        self._last_joined_s: dict[int, float] = {}
        self._latest_s = -math.inf  # the gate's latest event: an arrival in its queue or a release

    @property
    def free(self) -> bool:
        """A newcomer could take a slot now (nobody waits and a slot is free)."""
        return self.in_flight < self.slots and not self.waiting

    @property
    def room(self) -> bool:
        return self.waiting < self.depth

    def room_for(self, priority: int) -> bool:
        """The queue can take a request of `priority`: it has room, or a less urgent waiter to shed."""
        return self.room or any(n for p, n in self._waiting_by_priority.items() if p > priority)

    def make_room(self, priority: int) -> Waiter[T] | None:
        """A full queue sheds its newest waiter of the least urgent class below `priority`, for the driver to refuse.

        Under overload the queue keeps what matters most: a pinned request is
        not turned away because late switchable ones filled the queue first.
        """
        if self.room:
            return None
        lower = [p for p, n in self._waiting_by_priority.items() if n and p > priority]
        if not lower:
            return None
        queue = self._queues[max(lower)]
        for waiter in reversed(queue):
            if waiter.waiting:
                self.withdraw(waiter)
                return waiter
        return None  # pragma: no cover - the counts say one waits

    @property
    def idle(self) -> bool:
        return self.in_flight == 0 and not self.waiting

    def try_enter(self) -> bool:
        """Take a free slot if there is one and nobody waits for it."""
        if self.free:
            self.in_flight += 1
            return True
        return False

    def enqueue(self, ticket: T, priority: int, now_s: float) -> Waiter[T] | None:
        """Wait for a slot; None when the queue is full (see `make_room`)."""
        if not self.room:
            return None
        waiter = Waiter(ticket, priority, now_s, next(self._seq))
        self._queues.setdefault(priority, deque()).append(waiter)
        self._counted(priority, 1)
        self._measure_joining(priority, now_s)
        return waiter

    def withdraw(self, waiter: Waiter[T]) -> bool:
        """Leave the queue (a timeout, a client gone); False when the slot had already passed to it."""
        if not waiter.waiting:
            return False
        waiter.waiting = False
        self._counted(waiter.priority, -1)
        return True

    def release(self, now_s: float) -> Waiter[T] | None:
        """A slot is given back: the waiter it passes to, or None when it returns to the pool."""
        self._measure_gap(now_s)
        self._latest_s = max(self._latest_s, now_s)
        best = None
        for queue in self._queues.values():
            while queue and not queue[0].waiting:
                queue.popleft()  # withdrawn: dropped lazily
            if queue and (best is None or self._rank(queue[0], now_s) < self._rank(best, now_s)):
                best = queue[0]
        if best is None:
            self.in_flight -= 1
            return None
        self._queues[best.priority].popleft()
        best.waiting = False
        self._counted(best.priority, -1)
        return best

    def _counted(self, priority: int, change: int) -> None:
        self.waiting += change
        self._waiting_by_priority[priority] = self._waiting_by_priority.get(priority, 0) + change

    def _measure_gap(self, now_s: float) -> None:
        """The time between releases of a full gate: how fast slots free up now, whatever the window says."""
        if self.in_flight < self.slots:
            self._last_full_release_s = math.nan  # a slot stood free: the next gap is not a service time
            return
        if not math.isnan(self._last_full_release_s):
            gap = now_s - self._last_full_release_s
            self._gap_s = gap if math.isnan(self._gap_s) else self._gap_s + GAP_WEIGHT * (gap - self._gap_s)
        self._last_full_release_s = now_s

    def _measure_joining(self, priority: int, now_s: float) -> None:
        """The time between requests of `priority` joining the queue: how fast that class arrives while the
        gate is full, whatever the window says."""
        last = self._last_joined_s.get(priority)
        if last is not None:
            gap = now_s - last
            average = self._joining_gap_s.get(priority)
            self._joining_gap_s[priority] = gap if average is None else average + GAP_WEIGHT * (gap - average)
        self._last_joined_s[priority] = now_s
        self._latest_s = max(self._latest_s, now_s)

    def joining_per_s(self, priority: int) -> float:
        """Requests per second of classes more urgent than `priority` joining the queue now (they overtake a
        waiter of `priority`): each class at its recent pace, or slower when its last came longer ago than
        that (a class that stopped coming overtakes nobody). NaN before any such class joined twice."""
        rates = [
            1.0 / max(gap_s, self._latest_s - self._last_joined_s[p])
            for p, gap_s in self._joining_gap_s.items()
            if p < priority and gap_s > 0
        ]
        return sum(rates) if rates else math.nan

    def _rank(self, waiter: Waiter[T], now_s: float) -> tuple[float, int]:
        # The head of each priority's queue is its oldest, so it ranks best there: comparing heads is enough.
        return waiter.priority - (now_s - waiter.since_s) / self.aging_s, waiter.seq

    def ahead(self, priority: int) -> int:
        """Waiters that would be served before a newcomer of `priority` (aging aside)."""
        return sum(n for p, n in self._waiting_by_priority.items() if p <= priority)

    def freed_per_s(self, service_s: float) -> float:
        """How fast slots free up: measured between releases of the full gate, else slots over the service time."""
        if not math.isnan(self._gap_s) and self._gap_s > 0:
            return 1.0 / self._gap_s
        if service_s == 0:
            return math.inf
        return self.slots / service_s  # NaN when nothing was measured

    def wait_s(self, priority: int, service_s: float, overtaking_per_s: float = 0.0) -> float:
        """Predicted wait for a slot: nothing when one is free, else those ahead and itself over the
        rate slots free up for it (inf when more urgent traffic takes them all)."""
        if self.free:
            return 0.0
        freed_per_s = self.freed_per_s(service_s) - overtaking_per_s
        if math.isnan(freed_per_s):
            return math.nan  # unknown, which is not too slow
        return (self.ahead(priority) + 1) / freed_per_s if freed_per_s > 0 else math.inf

    def drain_s(self, service_s: float) -> float:
        """Predicted time until everyone waiting now has a slot, and one more."""
        return (self.waiting + 1) / self.freed_per_s(service_s)


@dataclass(frozen=True, slots=True)
class Outlook:
    """One lane as `place` sees it, for one request."""

    lane: str
    free: bool  # a slot (or a place in a micro-batch) is open now
    room: bool  # the queue can take one more
    wait_s: float  # predicted wait for this request's priority; 0 when free
    service_s: float  # predicted time once in; NaN when nothing was measured yet
    queue_timeout_s: float
    cost_usd: float  # estimated cost per request; NaN when unknown
    spill: bool
    drain_s: float = math.nan  # predicted time until the queue has emptied, for Retry-After

    @property
    def latency_s(self) -> float:
        """Predicted wait plus service; NaN (unknown) counts as fast enough."""
        return self.wait_s + self.service_s

    def meets(self, latency_s: float) -> bool:
        """Predicted to answer within `latency_s`, with HEADROOM (NaN compares False: unknown is not too slow)."""
        if self.free:
            return takes_at_once(self.service_s, latency_s)
        return self.room and not self.wait_s > self.queue_timeout_s and not self.latency_s > HEADROOM * latency_s


def takes_at_once(service_s: float, latency_s: float) -> bool:
    """A lane with a free slot meets `latency_s` when its service time fits (unknown fits)."""
    return not service_s > HEADROOM * latency_s


def outlook(
    lane: str,
    snapshot: Snapshot | None,
    *,
    gate: Gate[Any] | None,
    priority: int,
    queue_timeout_s: float,
    spill: bool,
    batch_room: bool = False,
    batch_waiting: int = 0,
    batch_saturated: bool = False,
    batch_pace: Pace | None = None,
) -> Outlook:
    """A lane's outlook from its gate and the last snapshot; `gate` None: the request would be micro-batched
    (`batch_waiting`: the items in the micro-batcher's queues, which its `batch_pace` drains).

    Service time is the lane's mean time from admission to answer over the
    metrics window (its upstream's queue included, so slots over service
    time is its throughput, by Little's law). A micro-batched request waits
    for no slot of its own: its predicted time is `batched_latency_s`.
    """
    figures = snapshot.lanes.get(lane) if snapshot is not None else None
    cost = figures.estimated_cost_per_request_usd if figures is not None else math.nan
    if gate is None:
        expected = batched_latency_s(snapshot, lane, batch_waiting, batch_saturated, batch_pace)
        drain = retry_drain_s(snapshot, lane, batch_waiting, batch_pace)
        return Outlook(lane, False, batch_room, 0.0, expected, queue_timeout_s, cost, spill, drain_s=drain)
    service = figures.mean_latency_s if figures is not None else math.nan
    if gate.free:  # the common case: no wait to predict
        return Outlook(lane, True, gate.room, 0.0, service, queue_timeout_s, cost, spill, drain_s=0.0)
    return Outlook(
        lane=lane,
        free=gate.free,
        room=gate.room_for(priority),
        wait_s=gate.wait_s(priority, service, _overtaking_per_s(snapshot, lane, gate, priority)),
        service_s=service,
        queue_timeout_s=queue_timeout_s,
        cost_usd=cost,
        spill=spill,
        drain_s=gate.drain_s(service),
    )


def batched_latency_s(
    snapshot: Snapshot | None, lane: str, waiting: int, saturated: bool, pace: Pace | None = None
) -> float:
    """Predicted time of a request joining a micro-batch queue where `waiting` items wait.

    The lane's mean time over the metrics window (merged calls, batching wait
    and all). When every merged-call slot is taken (`saturated`), the items
    waiting are a backlog rather than a batch gathering company, and the
    request waits for the queue ahead of it to be served at the lane's
    `pace` (`retry_drain_s`), if that is longer: the queue is known now,
    where the window's mean lags behind. NaN before anything was measured.
    """
    figures = snapshot.lanes.get(lane) if snapshot is not None else None
    if figures is None or not figures.completions:
        return math.nan
    if not saturated:
        return figures.mean_latency_s
    return max(figures.mean_latency_s, retry_drain_s(snapshot, lane, waiting, pace))


def retry_drain_s(snapshot: Snapshot | None, lane: str, waiting: int, pace: Pace | None = None) -> float:
    """Time until the lane has served what waits for it now, and one more, at its `pace`
    (policies.path.batching.Pace); the window's items per second where it has none."""
    figures = snapshot.lanes.get(lane) if snapshot is not None else None
    if figures is None:
        return math.nan
    per_s = pace.items_per_s(figures.items_per_busy_s) if pace is not None else math.nan
    if not per_s > 0:
        per_s = figures.items_per_s
    if not per_s > 0:
        return math.nan
    return (waiting + 1) / per_s


def _overtaking_per_s(snapshot: Snapshot | None, lane: str, gate: Gate[Any], priority: int) -> float:
    """Requests per second of classes more urgent than `priority` that will pass a waiter of `priority`: as
    they join the gate's queue now (`Gate.joining_per_s`), else as they were served over the metrics window
    (which, at the start of a rush, still holds the calm before it)."""
    joining = gate.joining_per_s(priority)
    if not math.isnan(joining):
        return joining
    if snapshot is None or lane not in snapshot.lanes:
        return 0.0
    span_s = max(snapshot.lanes[lane].span_s, 1.0)
    objectives = snapshot.objectives
    return sum(
        outcome.window.completions / span_s
        for (traffic_class, on), outcome in snapshot.outcomes.items()
        if on == lane and traffic_class in objectives and objectives[traffic_class].priority < priority
    )


@dataclass(frozen=True, slots=True)
class Placed:
    lane: str
    how: str  # "drawn" (its own lane), "moved" (the cheapest lane meeting its objective), "spilled"


@dataclass(frozen=True, slots=True)
class Refused:
    lane: str
    kind: str  # "lane_full" (no room) or "predicted_miss" (it would wait past its objective or timeout)
    wait_s: float  # the drawn lane's predicted wait, for the message
    retry_after_s: int  # from the drawn lane's predicted drain time, at least 1 s


def place(
    drawn: str,
    lanes: Iterable[str],
    outlook_of: Callable[[str], Outlook],
    *,
    movable: bool,
    latency_s: float,
    visited: Sequence[str] = (),
    weights: Mapping[str, float] | None = None,
) -> Placed | Refused:
    """Where a request drawn to `drawn` should wait, given its objective's latency (inf: none).

    `outlook_of(lane)` is asked for the drawn lane first; `lanes` is read, and
    the others asked, only when the drawn lane would not do (the common case
    costs one outlook).
    """
    own = outlook_of(drawn)
    if own.meets(latency_s):
        return Placed(drawn, "drawn")
    others = [outlook_of(name) for name in lanes if name != drawn and name not in visited]
    if movable:
        for other in sorted(others, key=lambda o: (_nan_last(o.cost_usd), _nan_last(o.latency_s))):
            if other.meets(latency_s):
                return Placed(other.lane, "moved")
    if own.free:
        return Placed(drawn, "drawn")  # slow, but a slot is open and no lane does better: never refuse that
    if movable and own.spill and others:
        weights = weights or {}
        takers = [o for o in others if o.free or (o.room and not o.wait_s > o.queue_timeout_s)]
        if takers:  # a late answer, never a wait that the queue timeout would end anyway
            return Placed(max(takers, key=lambda o: weights.get(o.lane, 0.0)).lane, "spilled")
    kind = "predicted_miss" if own.room else "lane_full"
    return Refused(drawn, kind, own.wait_s, retry_after_s(own.drain_s))


def retry_after_s(drain_s: float) -> int:
    """Whole seconds for Retry-After: the predicted drain time, at least 1 (1 when unknown)."""
    return 1 if math.isnan(drain_s) or drain_s <= 1 else math.ceil(drain_s)


def _nan_last(x: float) -> float:
    return math.inf if math.isnan(x) else x
