"""Many replicas, one controller: what a replica says of its measurements, and how the leader adds them up.

Every tick each replica publishes `published(monitor)`: the cumulative
totals of its lane windows and of its outcome windows (per traffic class
and lane), and its in-flight and queue gauges, as plain JSON-ready data.
Totals are counters and log-bucket histograms (policies.histogram), so they
add up exactly across replicas.

The leader keeps a cluster `Monitor` and a `ClusterMerge` over it. For each
replica's latest publication, `absorb` adds the difference from the last
one it saw of that replica into the cluster windows, at the leader's own
`now_s`; the first publication it sees of a replica (a replica that just
joined, or any replica when this leader just took over) and one whose
totals went down (a restarted replica) only set the baseline: history is
never replayed into the present. The gauges are the sums over the replicas
that published lately (`set_gauges`).

Publishing cumulative totals rather than per-tick deltas means a lost or
late publication loses nothing: the next one carries it.

Pure: no clock, no I/O, no Redis (router.cluster does the talking).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from policies.control.metrics import LaneTotals
from policies.control.monitor import Monitor
from policies.histogram import Histogram

_SEP = "|"  # between a class and a lane in an outcome key
Record = dict[str, Any]


def totals_record(totals: LaneTotals) -> list[Any]:
    """LaneTotals as a JSON-ready list (the histogram as [[bucket, count], ...] and its sum)."""
    latency = totals.latency
    return [
        totals.arrivals,
        totals.pinned_arrivals,
        totals.completions,
        totals.errors,
        totals.items,
        totals.input_tokens,
        totals.output_tokens,
        totals.cost_usd,
        totals.busy_s,
        sorted(latency.buckets().items()),
        latency.sum,
    ]


def totals_from(record: list[Any]) -> LaneTotals:
    """The LaneTotals a `totals_record` list stands for."""
    *counts, buckets, latency_sum = record
    arrivals, pinned, completions, errors, items, input_tokens, output_tokens, cost_usd, busy_s = counts
    histogram = Histogram({int(index): int(n) for index, n in buckets}, float(latency_sum))
    return LaneTotals(
        int(arrivals),
        int(pinned),
        int(completions),
        int(errors),
        int(items),
        int(input_tokens),
        int(output_tokens),
        float(cost_usd),
        float(busy_s),
        histogram,
    )


def published(monitor: Monitor) -> Record:
    """What one replica publishes of its monitor every tick."""
    return {
        "lanes": {lane: totals_record(window.since_start) for lane, window in monitor.lanes.items()},
        "outcomes": {
            f"{traffic_class}{_SEP}{lane}": totals_record(window.since_start)
            for (traffic_class, lane), window in monitor.outcomes.items()
        },
        "gauges": {lane: [window.in_flight, window.queue_depth] for lane, window in monitor.lanes.items()},
    }


def _went_down(now: LaneTotals, before: LaneTotals) -> bool:
    return now.arrivals < before.arrivals or now.completions < before.completions


class ClusterMerge:
    """The leader's sum of every replica's measurements, in the cluster monitor's windows."""

    def __init__(self, monitor: Monitor):
        self.monitor = monitor
        self._seen: dict[str, dict[str, LaneTotals]] = {}  # replica -> window key -> the totals last absorbed

    def absorb(self, replica: str, record: Record, now_s: float) -> None:
        """Add what `replica` did since its last publication this leader saw."""
        seen = self._seen.setdefault(replica, {})
        first = not seen
        for key, window in self._windows(record):
            totals = totals_from(record[key[0]][key[1]])
            before = seen.get(f"{key[0]}/{key[1]}")
            seen[f"{key[0]}/{key[1]}"] = totals
            if first or before is None or _went_down(totals, before):
                continue  # a baseline: what happened before this leader looked is not replayed now
            window.absorb(now_s, totals.minus(before))

    def _windows(self, record: Record) -> Iterable[tuple[tuple[str, str], Any]]:
        monitor = self.monitor
        for lane in record.get("lanes", {}):
            if lane in monitor.lanes:
                yield ("lanes", lane), monitor.lanes[lane]
        for key in record.get("outcomes", {}):
            traffic_class, _, lane = key.partition(_SEP)
            window = monitor.outcomes.get((traffic_class, lane))
            if window is not None:
                yield ("outcomes", key), window

    def set_gauges(self, live: Mapping[str, Record]) -> None:
        """In-flight and queue depth of each lane: the sums over the replicas that published lately."""
        for lane, window in self.monitor.lanes.items():
            window.in_flight = sum(int(r.get("gauges", {}).get(lane, (0, 0))[0]) for r in live.values())
            window.queue_depth = sum(int(r.get("gauges", {}).get(lane, (0, 0))[1]) for r in live.values())

    def forget(self, replica: str) -> None:
        """A replica gone for good: its next publication, if any, is a new baseline."""
        self._seen.pop(replica, None)
