"""Capacity: how many replicas each lane needs, decided each tick like the weights.

Theory of operation. A lane is `replicas x concurrency` servers (a replica
serves `concurrency` calls at once). Each tick, for every lane with
`autoscale:`, the rule works out what the lane will face (`lane_demand`):
under the split a fleet-planning policy chose (policies.builtin.fleet: its pinned
arrivals plus that share of the switchable ones), or else the arrivals it
takes under the weights in force; and the objectives of the classes it
serves there. Jobs count too: the lane that runs them also takes the rate
that answers its waiting jobs by their deadlines (the snapshot's
`backlogs`, policies.control.snapshot.JobsBacklog), so replicas already up and idle
drain them first, and more are asked for only where those cannot in time.
With the mean time a call holds a server (`measure`: the
median over the down hold of each window's figure, read through the
upstream's own queue by Little's law), the lane **needs** the fewest
replicas whose M/G/c queue (policies.queueing) answers every such class
within its latency at its percentile, and runs at most `1 - headroom` busy
(`target: utilisation`: the headroom alone, as an HPA on a utilisation
target sizes). That is the raw recommendation; the decision is damped as
Kubernetes' HPA damps its own:

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
import statistics
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

from pydantic import BaseModel, ConfigDict, Field, model_validator

from policies.control.actions import ReplicasWanted
from policies.control.objectives import JOBS, PINNED, SWITCHABLE, Objective
from policies.control.snapshot import LaneFigures, ReplicasView, Snapshot
from policies.queueing import service_quantile_s, sojourn_quantile_s
from policies.units import Duration

MIN_CALLS = 20  # answers in a window before its service time says anything


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
    target: Literal["objectives", "utilisation"] = Field(
        "objectives",
        description="objectives: the replicas that keep the classes' objectives within the headroom; utilisation: "
        "the load at 1 - headroom busy alone, as an HPA on a utilisation target does",
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
    targets = _targets(objectives, service_s, scv)
    least = max(1, math.ceil(rate_per_s * service_s / (1.0 - headroom) / concurrency))
    if least >= most:
        return most

    def keeps(replicas: int) -> bool:
        return _keeps(targets, rate_per_s, replicas * concurrency, service_s, scv)

    if keeps(least):
        return least
    if not keeps(most):
        return most
    low, high = least, most  # keeps(low) is False, keeps(high) is True
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (low, middle) if keeps(middle) else (middle, high)
    return high


class Need(NamedTuple):
    """What a lane needs for some traffic (`replicas_for`)."""

    replicas: int  # within its autoscale bounds
    keeps: bool  # that many keep the objectives and the headroom
    for_traffic: int  # the traffic's own need, before the `min` floor (0 for none)


def replicas_for(view: ReplicasView, rate_per_s: float, objectives: Sequence[Objective]) -> Need:
    """What a lane of `view` needs for `rate_per_s` of traffic with these objectives. A lane never measured
    (no service time) keeps nothing it is given."""
    if math.isnan(view.service_s):
        return Need(view.most, rate_per_s <= 0, view.most if rate_per_s > 0 else 0)
    needed = needed_replicas(rate_per_s, view.service_s, 1.0, view.concurrency, objectives, view.headroom, view.most)
    replicas = max(needed, view.least)
    if needed < view.most:
        return Need(replicas, True, needed)
    servers = view.most * view.concurrency
    fits = rate_per_s * view.service_s <= servers * (1.0 - view.headroom)
    keeps = fits and _keeps(_targets(objectives, view.service_s, 1.0), rate_per_s, servers, view.service_s, 1.0)
    return Need(replicas, keeps, needed)


def switchable_rate_per_s(snapshot: Snapshot) -> float:
    """Arrivals a mode may place: all of them but those pinned to a lane."""
    pinned = sum(f.pinned_arrival_rate_per_s for f in snapshot.lanes.values())
    return max(snapshot.arrival_rate_per_s - pinned, 0.0)


def lane_demand(snapshot: Snapshot, lane: str, weights: Mapping[str, float] | None) -> tuple[float, list[Objective]]:
    """The arrival rate `lane` takes and the objectives of the classes it serves: under `weights` (its pinned
    traffic plus that share of the switchable traffic), or as the window measured it when None."""
    figures = snapshot.lanes[lane]
    if weights is None:
        rate = figures.arrival_rate_per_s
        classes = {c for (c, on), o in snapshot.outcomes.items() if on == lane and o.window.completions}
    else:
        switchable = switchable_rate_per_s(snapshot)
        share = weights.get(lane, 0.0)
        rate = figures.pinned_arrival_rate_per_s + share * switchable
        classes = {PINNED} if figures.pinned_arrival_rate_per_s > 0 else set()
        if share > 0 and switchable > 0:
            moved = {c for c, _ in snapshot.outcomes if c not in (PINNED, JOBS)}
            classes |= moved or {SWITCHABLE}
    return rate, [snapshot.objectives[c] for c in sorted(classes)]


class CapacityPlanner:
    """The damped capacity decision of every autoscaled lane, tick by tick (see the module docstring)."""

    def __init__(
        self,
        autoscale: Mapping[str, AutoscaleParams],
        concurrency: Mapping[str, int],
        ready: Mapping[str, int],
        prices: Mapping[str, float] | None = None,
    ):
        self.autoscale = dict(autoscale)
        self.concurrency = dict(concurrency)
        self.prices = dict(prices or {})  # USD per replica-hour
        self.desired = {lane: _clamp(ready.get(lane, p.min), p) for lane, p in self.autoscale.items()}
        self._service: dict[str, deque[tuple[float, float]]] = {lane: deque() for lane in self.autoscale}
        self._history: dict[str, deque[tuple[float, int]]] = {lane: deque() for lane in self.autoscale}
        self.last: dict[str, LaneCapacity] = {}

    def measure(self, now_s: float, lanes: Mapping[str, LaneFigures], ready: Mapping[str, int]) -> None:
        """Take each lane's service time from this window, where it answered `MIN_CALLS` calls or more.

        What a lane plans with (`service_s`) is the median of its windows over the last `scale_down_hold`
        in which it served: a window the lane spent partly draining a queue (the stream just left, or a rush
        just ended) shows calls that held a server while they waited at the upstream, longer than the model's
        own time, and a young window shows only the calls short enough to have finished; the median of many
        windows is neither. A longer mix of tokens shows within the hold. A lane that served nothing since
        keeps what it had, so the stream has a size to come back to.
        """
        for lane, params in self.autoscale.items():
            figures = lanes.get(lane)
            if figures is None or figures.completions - figures.errors < MIN_CALLS:
                continue
            measured = service_time_s(figures, ready.get(lane, 0) * self.concurrency[lane])
            if math.isnan(measured):
                continue
            seen = self._service[lane]
            if seen and seen[-1][0] == now_s:
                seen.pop()  # measured once already at this tick
            seen.append((now_s, measured))
            while seen[0][0] < now_s - params.scale_down_hold_s:
                seen.popleft()

    def service_s(self, lane: str) -> float:
        """The mean time a call holds one of `lane`'s servers, as the rule plans with it; NaN: never measured."""
        seen = self._service[lane]
        return statistics.median(s for _, s in seen) if seen else math.nan

    def views(self, ready: Mapping[str, int] | None = None) -> dict[str, ReplicasView]:
        """Each autoscaled lane's replicas (ready: as given, else as of the last decision) and what the rule
        plans with, for the snapshot."""
        out = {}
        for lane, params in self.autoscale.items():
            answering = self.last[lane].ready if lane in self.last else self.desired[lane]
            out[lane] = ReplicasView(
                desired=self.desired[lane],
                ready=ready.get(lane, answering) if ready is not None else answering,
                concurrency=self.concurrency[lane],
                service_s=self.service_s(lane),
                least=params.min,
                most=params.max,
                headroom=params.headroom,
                per_replica_hour=self.prices.get(lane, 0.0),
            )
        return out

    def on_tick(
        self, snapshot: Snapshot, ready: Mapping[str, int], weights: Mapping[str, float] | None = None
    ) -> dict[str, LaneCapacity]:
        """The decision at `snapshot.now_s` for every autoscaled lane; `ready`: replicas answering now;
        `weights`: the split to size for (a policy that plans the fleet says which), else what each lane takes."""
        self.measure(snapshot.now_s, snapshot.lanes, ready)
        views = self.views(ready)
        out = {}
        for lane, params in self.autoscale.items():
            raw, why = self._recommend(snapshot, lane, views[lane], weights)
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

    def decide(
        self, snapshot: Snapshot, ready: Mapping[str, int], weights: Mapping[str, float] | None = None
    ) -> list[ReplicasWanted]:
        """`on_tick`, as actions: one ReplicasWanted for each lane whose desired replicas changed."""
        before = dict(self.desired)
        decisions = self.on_tick(snapshot, ready, weights)
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

    def record(self) -> dict[str, list[Any]]:
        """The last decision as plain data, for the replicas of a cluster that follow a leader's."""
        return {lane: [d.desired, d.recommended, d.reason] for lane, d in self.last.items()}

    def follow(self, record: Mapping[str, Any], ready: Mapping[str, int]) -> None:
        """Take the leader's decision (`record`) as this planner's own; lanes it does not name keep theirs."""
        for lane, (desired, recommended, reason) in record.items():
            if lane in self.desired:
                self.desired[lane] = int(desired)
                self.last[lane] = LaneCapacity(lane, int(desired), ready.get(lane, 0), int(recommended), str(reason))

    def _recommend(
        self, snapshot: Snapshot, lane: str, view: ReplicasView, weights: Mapping[str, float] | None
    ) -> tuple[int | None, str]:
        if lane not in snapshot.lanes:
            return None, "no figures for the lane"
        rate, objectives = lane_demand(snapshot, lane, weights)
        if self.autoscale[lane].target == "utilisation":
            objectives = []
        sized_for = "the split planned" if weights is not None else "the traffic it takes"
        backlog = snapshot.backlogs.get(lane)
        jobs = backlog.drain_rate_per_s() if backlog is not None else 0.0
        if jobs > 0:
            sized_for += f", and {jobs:.3g} jobs/s to meet the waiting jobs' deadlines"
        if rate + jobs <= 0:
            return view.least, f"no arrivals for {sized_for}"
        if math.isnan(view.service_s):
            return None, "no measured service time yet"
        raw = replicas_for(view, rate + jobs, objectives).replicas
        why = (
            f"{rate + jobs:.3g} req/s ({sized_for}) x {view.service_s * 1000:.3g} ms on {view.concurrency} per "
            f"replica, {len(objectives)} classes' objectives, {view.headroom:.0%} headroom: {raw}"
        )
        return raw, why


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


def _targets(objectives: Iterable[Objective], service_s: float, scv: float) -> list[tuple[float, float]]:
    """(percentile, latency) of each objective some number of servers can keep: one the service time alone
    misses does not count."""
    return [
        (o.wanted, o.latency_s)
        for o in objectives
        if not math.isinf(o.latency_s) and service_quantile_s(o.wanted, service_s, scv) < o.latency_s
    ]


def _keeps(targets: list[tuple[float, float]], rate_per_s: float, servers: int, service_s: float, scv: float) -> bool:
    return all(sojourn_quantile_s(q, rate_per_s, servers, service_s, scv) <= target for q, target in targets)


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
