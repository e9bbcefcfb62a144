"""The last minutes of each lane, one sample per control tick, for the status page's chart.

Each sample holds, per lane, what happened since the previous sample: the
rate of answers, the error rate, the median and p95 latency of those answers
(exact to the histograms' 1%, from the difference of the lane's cumulative
histogram, not a sliding window), the cost per second, and the lane's weight
at the end of the interval. A ring keeps the last `kept` samples.

What must not live here: the figures the controller judges by
(policies.control.monitor); this is for people.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from policies.control.metrics import LaneTotals

if TYPE_CHECKING:
    from router.lanes import Lane

KEPT_SAMPLES = 600  # ten minutes at the default one-second tick


class History:
    def __init__(self, kept: int = KEPT_SAMPLES):
        self.samples: deque[dict[str, Any]] = deque(maxlen=kept)
        self._last: dict[str, LaneTotals] = {}
        self._last_s: float | None = None

    def record(self, now_s: float, lanes: Mapping[str, Lane], weights: Mapping[str, float]) -> None:
        previous_s, self._last_s = self._last_s, now_s
        current = {name: lane.window.since_start.copy() for name, lane in lanes.items()}
        previous, self._last = self._last, current
        if previous_s is None or now_s <= previous_s:
            return
        span_s = now_s - previous_s
        sample: dict[str, Any] = {"at_s": now_s, "lanes": {}}
        for name, totals in current.items():
            before = previous.get(name)
            if before is None or totals.completions < before.completions:  # new lane, or replaced by a reload
                before = LaneTotals()
            answered = totals.completions - before.completions
            p50, p95 = totals.latency.minus(before.latency).quantiles((0.5, 0.95))
            sample["lanes"][name] = {
                "rate_per_s": answered / span_s,
                "error_rate": (totals.errors - before.errors) / answered if answered else 0.0,
                "p50_ms": _ms(p50),
                "p95_ms": _ms(p95),
                "cost_per_s": (totals.cost_usd - before.cost_usd) / span_s,
                "weight": weights.get(name, 0.0),
            }
        self.samples.append(sample)

    def after(self, at_s: float | None = None) -> list[dict[str, Any]]:
        return [s for s in self.samples if at_s is None or s["at_s"] > at_s]


def _ms(seconds: float) -> float | None:
    return None if math.isnan(seconds) else seconds * 1000.0
