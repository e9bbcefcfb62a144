"""Latency histograms with fixed log-spaced buckets.

Bucket i holds the values in (gamma**(i-1), gamma**i], with
gamma = (1 + a) / (1 - a) and a = RELATIVE_ACCURACY. Reporting a bucket by
2 * gamma**i / (gamma + 1) is then within a relative error of `a` of every
value in it (the DDSketch construction, Masson et al., VLDB 2019), so a
quantile read from the histogram is within `a` of the sample quantile it
stands for. The bucket layout is a pure function of the value, so histograms
from any number of replicas or time slots merge by adding counts, and subtract
the same way (the switching controller reads "what happened since this step
began" as a difference of two cumulative histograms).

Recording is O(1): one logarithm and one dict update. Only occupied buckets
are stored, so a histogram of real latencies is a few dozen entries.

What must not live here: windows over time, or anything that knows what a
latency is for. This is a counting structure.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

RELATIVE_ACCURACY = 0.01
_GAMMA = (1 + RELATIVE_ACCURACY) / (1 - RELATIVE_ACCURACY)
_INV_LOG_GAMMA = 1.0 / math.log(_GAMMA)

# Values at or below MIN_VALUE share the lowest bucket (a 1 µs floor is far
# below any network round trip); there is no upper clamp.
MIN_VALUE = 1e-6
_MIN_INDEX = math.ceil(math.log(MIN_VALUE) * _INV_LOG_GAMMA)


def bucket_index(value: float) -> int:
    """The bucket that holds `value` (seconds, or any positive quantity)."""
    if value <= MIN_VALUE:
        return _MIN_INDEX
    return math.ceil(math.log(value) * _INV_LOG_GAMMA)


def bucket_value(index: int) -> float:
    """The representative value of a bucket, within RELATIVE_ACCURACY of its members."""
    if index <= _MIN_INDEX:
        return MIN_VALUE
    return 2.0 * _GAMMA**index / (_GAMMA + 1.0)


class Histogram:
    """Counts per log-spaced bucket; mergeable, subtractable, copyable."""

    __slots__ = ("_counts", "_total", "_sum")

    def __init__(self, counts: Mapping[int, int] | None = None, total_value: float = 0.0):
        self._counts: dict[int, int] = dict(counts) if counts else {}
        self._total = sum(self._counts.values())
        self._sum = total_value

    @classmethod
    def of(cls, values: Iterable[float]) -> Histogram:
        hist = cls()
        for value in values:
            hist.record(value)
        return hist

    def record(self, value: float, count: int = 1) -> None:
        index = bucket_index(value)
        counts = self._counts
        counts[index] = counts.get(index, 0) + count
        self._total += count
        self._sum += value * count

    @property
    def count(self) -> int:
        return self._total

    @property
    def sum(self) -> float:
        return self._sum

    def mean(self) -> float:
        return self._sum / self._total if self._total else math.nan

    def counts_at_most(self, bounds: Iterable[float]) -> list[int]:
        """For each bound (ascending), how many values its bucket and those below hold.

        The bucket that holds a bound may hold values up to RELATIVE_ACCURACY
        above it, so each count is exact to within that margin (cumulative
        buckets for Prometheus' `le`).
        """
        limits = [bucket_index(b) for b in bounds]
        out = [0] * len(limits)
        for index, n in self._counts.items():
            for k, limit in enumerate(limits):
                if index <= limit:
                    out[k] += n
        return out

    def count_at_most(self, bound: float) -> int:
        """How many values are at most `bound` (to within RELATIVE_ACCURACY of it)."""
        return self.counts_at_most((bound,))[0]

    def copy(self) -> Histogram:
        return Histogram(self._counts, self._sum)

    def buckets(self) -> dict[int, int]:
        """The occupied buckets, index -> count (a copy): with `sum`, all it takes to make it again."""
        return dict(self._counts)

    def merge(self, other: Histogram) -> None:
        """Add another histogram's counts into this one (replicas, slots)."""
        counts = self._counts
        for index, n in other._counts.items():
            counts[index] = counts.get(index, 0) + n
        self._total += other._total
        self._sum += other._sum

    def minus(self, earlier: Histogram) -> Histogram:
        """What was recorded here since `earlier`, a copy of this histogram taken before."""
        counts = {}
        for index, n in self._counts.items():
            left = n - earlier._counts.get(index, 0)
            if left < 0:
                break
            if left:
                counts[index] = left
        else:
            if sum(counts.values()) == self._total - earlier._total:
                return Histogram(counts, self._sum - earlier._sum)
        raise ValueError("minus() needs an earlier copy of the same histogram")

    def quantile(self, q: float) -> float:
        return self.quantiles((q,))[0]

    def quantiles(self, qs: Iterable[float]) -> tuple[float, ...]:
        """Estimates of the sample quantiles at `qs`; NaN when empty.

        The sample quantile at q is the order statistic of rank floor(q * (n - 1))
        (numpy's method="lower"); the estimate is within RELATIVE_ACCURACY of it.
        """
        qs = tuple(qs)
        if not self._total:
            return tuple(math.nan for _ in qs)
        wanted = sorted((math.floor(min(max(q, 0.0), 1.0) * (self._total - 1)), i) for i, q in enumerate(qs))
        out = [math.nan] * len(qs)
        seen = 0
        w = 0
        for index in sorted(self._counts):
            seen += self._counts[index]
            while w < len(wanted) and wanted[w][0] < seen:
                out[wanted[w][1]] = bucket_value(index)
                w += 1
            if w == len(wanted):
                break
        return tuple(out)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Histogram) and self._counts == other._counts

    def __repr__(self) -> str:
        return f"Histogram(count={self._total}, buckets={len(self._counts)})"
