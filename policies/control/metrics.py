"""Per-lane measurement: cumulative totals and a sliding window over `now_s`.

A LaneWindow counts what happens on one lane: arrivals, completions, errors,
items, tokens, attributed cost and a latency histogram. Recording only adds to
cumulative totals (O(1), no allocation). At every slot boundary the window
keeps a frozen copy of those totals (a mark); the figures of the last
`window_s` are the current totals minus the oldest mark still inside the
window. This keeps the hot path to a handful of additions while the window
read, done once per control tick, costs one histogram subtraction.

Window at time t: the events in (M, t], where M is the earliest slot boundary
at or after t - window_s; its span t - M is between window_s - slot_s and
window_s, and rates divide by that exact span. A mark is kept for every
boundary, including boundaries crossed while the lane was idle, so an idle
gap counts as time with no events rather than shrinking the span.

In-flight and queue depth are gauges: `arrived` raises in-flight and
`completed` (or `abandoned`) lowers it; the driver sets `queue_depth` directly,
to what waits for the lane when it ticks (both drivers read it at the tick, so
the snapshot sees the same queue in both).

What must not live here: cost models, policies, or any clock. Time is the
`now_s` argument of each call, and it must not go backwards.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

from policies.histogram import Histogram


@dataclass(slots=True)
class LaneTotals:
    """Cumulative counters of one lane since it was created."""

    arrivals: int = 0
    pinned_arrivals: int = 0  # arrivals that could not have gone to another lane
    completions: int = 0
    errors: int = 0
    items: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0
    busy_s: float = 0.0
    latency: Histogram = field(default_factory=Histogram)

    def copy(self) -> LaneTotals:
        return LaneTotals(
            self.arrivals,
            self.pinned_arrivals,
            self.completions,
            self.errors,
            self.items,
            self.input_tokens,
            self.output_tokens,
            self.cost_usd,
            self.busy_s,
            self.latency.copy(),
        )

    def minus(self, earlier: LaneTotals) -> LaneTotals:
        """What happened since `earlier`, a copy of these totals taken before."""
        return LaneTotals(
            self.arrivals - earlier.arrivals,
            self.pinned_arrivals - earlier.pinned_arrivals,
            self.completions - earlier.completions,
            self.errors - earlier.errors,
            self.items - earlier.items,
            self.input_tokens - earlier.input_tokens,
            self.output_tokens - earlier.output_tokens,
            self.cost_usd - earlier.cost_usd,
            self.busy_s - earlier.busy_s,
            self.latency.minus(earlier.latency),
        )

    def plus(self, other: LaneTotals) -> LaneTotals:
        """These totals and `other`'s together (two lanes, two classes, two replicas)."""
        latency = self.latency.copy()
        latency.merge(other.latency)
        return LaneTotals(
            self.arrivals + other.arrivals,
            self.pinned_arrivals + other.pinned_arrivals,
            self.completions + other.completions,
            self.errors + other.errors,
            self.items + other.items,
            self.input_tokens + other.input_tokens,
            self.output_tokens + other.output_tokens,
            self.cost_usd + other.cost_usd,
            self.busy_s + other.busy_s,
            latency,
        )

    @property
    def error_rate(self) -> float:
        return self.errors / self.completions if self.completions else math.nan


@dataclass(frozen=True, slots=True)
class WindowReading:
    """What a lane did over its window, read at `now_s`."""

    now_s: float
    span_s: float
    window: LaneTotals
    cumulative: LaneTotals
    in_flight: int
    queue_depth: int


class LaneWindow:
    """Counters for one lane over a sliding window of `window_s` seconds."""

    __slots__ = (
        "window_s",
        "slot_s",
        "_totals",
        "_marks",
        "_next_slot",
        "_next_mark_s",
        "in_flight",
        "queue_depth",
    )

    def __init__(self, *, now_s: float, window_s: float = 60.0, slot_s: float = 1.0):
        if slot_s <= 0 or window_s < slot_s:
            raise ValueError(f"need 0 < slot_s <= window_s, got slot_s={slot_s}, window_s={window_s}")
        self.window_s = window_s
        self.slot_s = slot_s
        self._totals = LaneTotals()
        n_marks = max(1, round(window_s / slot_s))
        # (time of the mark, totals at that time); the first mark is the
        # window's creation, so no span is claimed before the lane existed.
        self._marks: deque[tuple[float, LaneTotals]] = deque([(now_s, LaneTotals())], maxlen=n_marks)
        self._next_slot = math.floor(now_s / slot_s) + 1
        self._next_mark_s = self._next_slot * slot_s
        self.in_flight = 0
        self.queue_depth = 0

    def arrived(self, now_s: float, pinned: bool = False) -> None:
        """A request entered this lane (it counts toward the request rate and in-flight).

        `pinned`: it was sent here by a pin, not by the weights, so no mode
        would have moved it.
        """
        if now_s >= self._next_mark_s:
            self._mark(now_s)
        self._totals.arrivals += 1
        if pinned:
            self._totals.pinned_arrivals += 1
        self.in_flight += 1

    def completed(
        self,
        now_s: float,
        latency_s: float | None,
        *,
        ok: bool = True,
        items: int = 1,
        input_tokens: int = 0,
        output_tokens: int = 0,
        cost_usd: float = 0.0,
        busy_s: float = 0.0,
    ) -> None:
        """A request that `arrived` on this lane finished (or failed, with ok=False).

        `latency_s` is None for a request that failed before it was served (a
        full queue, a refused connection): it counts as an error, and its
        near-zero time must not pass for a fast answer in the percentiles.
        """
        if now_s >= self._next_mark_s:
            self._mark(now_s)
        totals = self._totals
        totals.completions += 1
        if not ok:
            totals.errors += 1
        totals.items += items
        totals.input_tokens += input_tokens
        totals.output_tokens += output_tokens
        totals.cost_usd += cost_usd
        totals.busy_s += busy_s
        if latency_s is not None:
            totals.latency.record(latency_s)
        if self.in_flight:
            self.in_flight -= 1

    def refused(self, now_s: float, pinned: bool = False) -> None:
        """A request this lane turned away before serving it (its queue full, a predicted miss, no lane left):
        an arrival and an error, with no latency to count, so the lane's figures show what it refused."""
        self.arrived(now_s, pinned)
        self.completed(now_s, None, ok=False)

    def served(self, now_s: float, latency_s: float | None, ok: bool) -> None:
        """A request that arrived and finished at once, as far as this window knows (an outcome).

        `arrived` and `completed` in one call, without touching in-flight:
        for windows that count requests when they end (policies.control.monitor's
        outcomes), on the hot path of both drivers.
        """
        if now_s >= self._next_mark_s:
            self._mark(now_s)
        totals = self._totals
        totals.arrivals += 1
        totals.completions += 1
        if not ok:
            totals.errors += 1
        if latency_s is not None:
            totals.latency.record(latency_s)

    def absorb(self, now_s: float, delta: LaneTotals) -> None:
        """Add what happened elsewhere (another replica's totals since it last said) as if it happened now."""
        if now_s >= self._next_mark_s:
            self._mark(now_s)
        totals = self._totals
        totals.arrivals += delta.arrivals
        totals.pinned_arrivals += delta.pinned_arrivals
        totals.completions += delta.completions
        totals.errors += delta.errors
        totals.items += delta.items
        totals.input_tokens += delta.input_tokens
        totals.output_tokens += delta.output_tokens
        totals.cost_usd += delta.cost_usd
        totals.busy_s += delta.busy_s
        totals.latency.merge(delta.latency)

    @property
    def since_start(self) -> LaneTotals:
        """Counters since the lane was created (a copy)."""
        return self._totals.copy()

    def abandoned(self, now_s: float) -> None:
        """A request that `arrived` here was given up by its client: neither success nor error."""
        if now_s >= self._next_mark_s:
            self._mark(now_s)
        if self.in_flight:
            self.in_flight -= 1

    def read(self, now_s: float) -> WindowReading:
        """The window's totals at `now_s` and the cumulative totals behind them."""
        if now_s >= self._next_mark_s:
            self._mark(now_s)
        start_s, start = self._marks[0]
        cumulative = self._totals.copy()
        return WindowReading(
            now_s=now_s,
            span_s=max(now_s - start_s, 0.0),
            window=cumulative.minus(start),
            cumulative=cumulative,
            in_flight=self.in_flight,
            queue_depth=self.queue_depth,
        )

    def _mark(self, now_s: float) -> None:
        """Keep the totals at every slot boundary crossed up to `now_s`.

        No event happened between the last call and now_s, so the totals now
        are also the totals at each boundary in between.
        """
        slot = math.floor(now_s / self.slot_s)
        frozen = self._totals.copy()
        # Only the last maxlen boundaries can still be inside the window.
        kept = self._marks.maxlen
        assert kept is not None  # made with one
        for k in range(max(self._next_slot, slot - kept + 1), slot + 1):
            self._marks.append((k * self.slot_s, frozen))
        self._next_slot = slot + 1
        self._next_mark_s = self._next_slot * self.slot_s
