"""Capacity: how many replicas each lane needs, decided each tick like the weights.

Theory of operation. A lane is `replicas x concurrency` servers (a replica
serves `concurrency` calls at once). Each tick, for every lane with
`autoscale:`, the rule reads from the snapshot what the lane faces under the
weights in force: its arrival rate, the mean service time of one call
(busy seconds per completion) and, per traffic class it served, that class's
objective. The lane **needs** the fewest replicas whose M/G/c queue
(policies.queueing) answers every such class within its latency at its
percentile, and runs at most `1 - headroom` busy. That is the raw
recommendation; the decision is damped as Kubernetes' HPA damps its own:

- up: to the lowest recommendation of the last `scale_up_hold` (up fast:
  a rush that lasted the hold gets its replicas, a spike that did not
  gets none);
- down: to the highest recommendation of the last `scale_down_hold` (down
  slow: a lull has to last before anything is let go);
- always within [`min`, `max`].

No data is no change: a lane with no measured service time, or with
arrivals and no answers yet, keeps what it has (Argo: "no data" is
"inconclusive", never a pass).

Invariants (tests/policies/test_capacity.py states them as properties):
desired is within [min, max]; a rise of the arrival rate never lowers the
raw recommendation; desired only goes up after `scale_up_hold` of
recommendations above it and only goes down after `scale_down_hold` below.

The router does not start machines: it publishes the decision (metrics,
GET /capacity) for the autoscaler people run (KEDA, an HPA). Pure: no clock
(time comes in as `now_s`), no I/O.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from policies.actions import ReplicasWanted
from policies.objectives import Objective
from policies.queueing import service_quantile_s, sojourn_quantile_s
from policies.snapshot import LaneFigures, ReplicasView, Snapshot
from policies.units import Duration


class ReplicaParams(BaseModel):
    """The `replica:` section of a lane: what one of its servers holds."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    concurrency: int = Field(1, ge=1, description="calls one replica serves at once (vLLM: its max_num_seqs)")


class AutoscaleParams(BaseModel):
    """The `autoscale:` section of a lane (the seed's resource manager: 60 s up, 300 s down)."""

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    min: int = Field(1, ge=0, description="replicas at least")
    max: int = Field(8, ge=1, description="replicas at most")
    cold_start_s: Duration = Field(
        120.0, alias="cold_start", description="from asking for a replica to its first answer (a vLLM model load)"
    )
    scale_up_hold_s: Duration = Field(60.0, alias="scale_up_hold", description="a rise must last this long")
    scale_down_hold_s: Duration = Field(300.0, alias="scale_down_hold", description="a fall must last this long")
    headroom: float = Field(
        0.2, ge=0, lt=1, description="share of the servers kept free: a lane runs at most 1 - headroom busy"
    )

    @model_validator(mode="after")
    def _min_below_max(self) -> AutoscaleParams:
        if self.min > self.max:
            raise ValueError(f"min ({self.min}) is over max ({self.max})")
        return self


@dataclass(frozen=True, slots=True)
class LaneCapacity:
    """One lane's capacity decision at a tick."""

    lane: str
    desired: int
    ready: int
    recommended: int  # the raw recommendation before damping
    reason: str

    @property
    def starting(self) -> int:
        """Replicas asked for and not yet answering (what the autoscaler is bringing up)."""
        return max(self.desired - self.ready, 0)


def needed_replicas(
    rate_per_s: float,
    service_s: float,
    scv: float,
    concurrency: int,
    objectives: Iterable[Objective],
    headroom: float,
    most: int,
) -> int:
    """The fewest replicas (up to `most`) that keep every objective and the headroom at this load; `most` when
    even that many cannot. Zero load needs zero. An objective the service time alone misses (a call slower
    than the target at its percentile) is one no number of replicas keeps: it does not count here.

    The predicted quantile falls as servers are added, so the answer is found by bisection.
    """
    if rate_per_s <= 0:
        return 0
    targets = [
        (o.wanted, o.latency_s)
        for o in objectives
        if not math.isinf(o.latency_s) and service_quantile_s(o.wanted, service_s, scv) < o.latency_s
    ]
    offered = rate_per_s * service_s  # busy servers on average
    least = max(1, math.ceil(offered / (1.0 - headroom) / concurrency))
    if least >= most:
        return most

    def keeps(replicas: int) -> bool:
        servers = replicas * concurrency
        return all(sojourn_quantile_s(q, rate_per_s, servers, service_s, scv) <= target for q, target in targets)

    if keeps(least):
        return least
    if not keeps(most):
        return most
    low, high = least, most  # keeps(low) is False, keeps(high) is True
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (low, middle) if keeps(middle) else (middle, high)
    return high


class CapacityPlanner:
    """The damped capacity decision of every autoscaled lane, tick by tick (see the module docstring)."""

    def __init__(
        self, autoscale: Mapping[str, AutoscaleParams], concurrency: Mapping[str, int], ready: Mapping[str, int]
    ):
        self.autoscale = dict(autoscale)
        self.concurrency = dict(concurrency)
        self.desired = {lane: _clamp(ready.get(lane, p.min), p) for lane, p in self.autoscale.items()}
        self._history: dict[str, deque[tuple[float, int]]] = {lane: deque() for lane in self.autoscale}
        self.last: dict[str, LaneCapacity] = {}

    def on_tick(self, snapshot: Snapshot, ready: Mapping[str, int]) -> dict[str, LaneCapacity]:
        """The decision at `snapshot.now_s` for every autoscaled lane; `ready`: replicas answering now."""
        out = {}
        for lane, params in self.autoscale.items():
            raw, why = self._recommend(snapshot, lane, params, ready.get(lane, 0))
            if raw is None:  # no data: no change
                out[lane] = LaneCapacity(lane, self.desired[lane], ready.get(lane, 0), self.desired[lane], why)
                continue
            history = self._history[lane]
            history.append((snapshot.now_s, raw))
            keep_s = max(params.scale_up_hold_s, params.scale_down_hold_s)
            while len(history) > 1 and history[1][0] <= snapshot.now_s - keep_s:
                history.popleft()  # one entry at or before the longest hold stays: it shows the hold is covered
            current = self.desired[lane]
            up = _held(history, snapshot.now_s, params.scale_up_hold_s, min)
            down = _held(history, snapshot.now_s, params.scale_down_hold_s, max)
            if up is not None and up > current:
                new, why = up, f"{why}; above {current} for {params.scale_up_hold_s:g}s"
            elif down is not None and down < current:
                new, why = down, f"{why}; below {current} for {params.scale_down_hold_s:g}s"
            else:
                new = current
            self.desired[lane] = _clamp(new, params)
            out[lane] = LaneCapacity(lane, self.desired[lane], ready.get(lane, 0), raw, why)
        self.last = out
        return out

    def decide(self, snapshot: Snapshot, ready: Mapping[str, int]) -> list[ReplicasWanted]:
        """`on_tick`, as actions: one ReplicasWanted for each lane whose desired replicas changed."""
        before = dict(self.desired)
        decisions = self.on_tick(snapshot, ready)
        return [
            ReplicasWanted(
                at_s=snapshot.now_s,
                reason=d.reason,
                figures=snapshot.figures(),
                lane=lane,
                replicas=d.desired,
                was=before[lane],
            )
            for lane, d in decisions.items()
            if d.desired != before[lane]
        ]

    def views(self) -> dict[str, ReplicasView]:
        """Each autoscaled lane's replicas as of the last decision, for the snapshot (policies may plan on it)."""
        return {
            lane: ReplicasView(desired, self.last[lane].ready if lane in self.last else desired, self.concurrency[lane])
            for lane, desired in self.desired.items()
        }

    def record(self) -> dict[str, list[Any]]:
        """The last decision as plain data, for the replicas of a cluster that follow a leader's."""
        return {lane: [d.desired, d.recommended, d.reason] for lane, d in self.last.items()}

    def follow(self, record: Mapping[str, Any], ready: Mapping[str, int]) -> None:
        """Take the leader's decision (`record`) as this planner's own; lanes it does not name keep theirs."""
        for lane, (desired, recommended, reason) in record.items():
            if lane in self.desired:
                self.desired[lane] = int(desired)
                self.last[lane] = LaneCapacity(lane, int(desired), ready.get(lane, 0), int(recommended), str(reason))

    def _recommend(self, snapshot: Snapshot, lane: str, params: AutoscaleParams, ready: int) -> tuple[int | None, str]:
        figures = snapshot.lanes.get(lane)
        if figures is None:
            return None, "no figures for the lane"
        rate = figures.arrival_rate_per_s
        if rate <= 0:
            return params.min, "no arrivals in the window"
        concurrency = self.concurrency.get(lane, 1)
        service_s = service_time_s(figures, ready * concurrency)
        if math.isnan(service_s):
            return None, "no measured service time yet"
        classes = [
            snapshot.objectives[c] for (c, on), o in snapshot.outcomes.items() if on == lane and o.window.completions
        ]
        scv = 1.0  # an exponential service time: the cautious default until the lane's spread is measured
        raw = needed_replicas(rate, service_s, scv, concurrency, classes, params.headroom, params.max)
        why = (
            f"{rate:.3g} req/s x {service_s * 1000:.3g} ms on {concurrency} per replica, "
            f"{len(classes)} classes' objectives, {params.headroom:.0%} headroom: {raw}"
        )
        return max(raw, params.min), why


def service_time_s(figures: LaneFigures, servers: int) -> float:
    """The mean time a call holds a server, from the window: NaN when nothing was timed.

    What the router times is a call's whole stay at the upstream, its wait for a server there included, so
    under load it overstates the service. Little's law gives the remedy: `throughput x time` calls are there
    at once on average; when that is more than the `servers` the lane has, they were all busy, and each
    finished a call every `servers / throughput` seconds, which is the service time.
    """
    served = figures.completions - figures.errors  # a refusal is a completion that held no server
    if not (served > 0 and figures.items_per_busy_s > 0 and figures.throughput_per_s > 0):
        return math.nan
    answered_per_s = figures.throughput_per_s * served / figures.completions
    held_s = figures.items_per_s / figures.items_per_busy_s / answered_per_s  # busy seconds per answered call
    return min(held_s, servers / answered_per_s) if servers > 0 else held_s


def _held(
    history: deque[tuple[float, int]], now_s: float, hold_s: float, pick: Callable[[Iterable[int]], int]
) -> int | None:
    """`pick` (min or max) of the recommendations of the last `hold_s`; None until the history covers that long."""
    if not history:
        return None
    if hold_s <= 0:
        return history[-1][1]
    if history[0][0] > now_s - hold_s:
        return None  # not held long enough yet
    return pick(raw for at_s, raw in history if at_s >= now_s - hold_s)


def _clamp(replicas: int, params: AutoscaleParams) -> int:
    return min(max(replicas, params.min), params.max)
