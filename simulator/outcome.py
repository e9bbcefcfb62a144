"""What a simulated run produced, and the figures read from it.

`Outcome` holds one row per trace request (numpy arrays: arrival, lane,
status, end-to-end latency, attributed cost, pinned, deadline, and the
replica that took the call where replicas are modelled), the decision
records (`Action.as_record()`, the router's /decisions format), a timeline
of one row per control tick, and each lane's provisioned cost over the run.

`summarize` turns an outcome into the comparison's figures: per lane and in
total, requests, errors, p50/p95/p99 latency, SLO attainment per traffic
class, cost and cost per 1,000 requests, transitions and rollbacks.

SLO attainment: a request meets its SLO when it was answered (2xx) within
its target: its own deadline if the trace gives one, else the target of its
class (`pinned`: real-time traffic that may not move; `switchable`: the
rest). The targets are the config's objectives (policies.control.objectives, via
`SloTargets.of`), the same objects the controller and admission judge by,
unless the command line overrides them. A class with no requests attains
NaN, never 100%.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, NamedTuple

import numpy as np

from policies.control.objectives import PINNED, SWITCHABLE, Objectives

NO_LANE = -1
NO_REPLICA = -1
TOTAL = "total"


class TimelineRow(NamedTuple):
    t_s: float
    arrival_rate_per_s: float
    weights: tuple[float, ...]  # by lane, in Outcome.lanes order
    p95_s: tuple[float, ...]
    cost_usd: tuple[float, ...]  # cumulative, provisioned share included
    replicas: tuple[int, ...] = ()  # paid (ready and starting) by lane; empty where the run did not tell

    @classmethod
    def after_tick(
        cls, t: float, loop: Any, lanes: Sequence[str], provisioned_usd: Mapping[str, float] | None = None
    ) -> TimelineRow:
        """The control loop's figures once its tick at `t` is done (a configs.assembly control loop);
        `provisioned_usd`: each lane's provisioned cost so far where its replicas changed over the run."""
        snapshot = loop.last_snapshot
        provisioned = provisioned_usd or {}
        return cls(
            t_s=t,
            arrival_rate_per_s=snapshot.arrival_rate_per_s,
            weights=tuple(loop.weights.values()),
            p95_s=tuple(snapshot.lanes[name].p95_s for name in lanes),
            cost_usd=tuple(
                snapshot.lanes[name].cumulative.cost_usd
                + provisioned.get(name, loop.monitor.costs[name].idle_cost_usd(t, loop.monitor.replicas[name]))
                for name in lanes
            ),
            replicas=tuple(loop.monitor.replicas[name] for name in lanes),
        )


@dataclass(frozen=True, slots=True)
class SloTargets:
    pinned_s: float = 1.0
    switchable_s: float = 30.0
    attainment: float = 0.99  # the share a class must reach to "meet" its SLO (the oracle's test)

    @classmethod
    def of(cls, objectives: Objectives) -> SloTargets:
        """The targets a config's objectives declare (a class without a latency: no target)."""
        pinned, switchable = objectives[PINNED], objectives[SWITCHABLE]
        return cls(pinned.latency_s, switchable.latency_s, min(pinned.wanted, switchable.wanted))


@dataclass(frozen=True)
class Outcome:
    lanes: tuple[str, ...]
    arrival_s: np.ndarray
    lane: np.ndarray  # index into lanes; NO_LANE when never placed
    status: np.ndarray  # 200, or the router's error status (503)
    latency_s: np.ndarray  # arrival to answer
    cost_usd: np.ndarray  # variable cost attributed to the request
    pinned: np.ndarray
    deadline_s: np.ndarray  # NaN where the trace gave none
    idle_cost_usd: Mapping[str, float]  # provisioned cost of each lane over the run
    end_s: float
    decisions: list[dict[str, Any]] = field(default_factory=list[Any])
    timeline: list[TimelineRow] = field(default_factory=list)
    files: Mapping[str, int] = field(default_factory=dict)  # batch files each batch_api lane sent
    # Replica-hours each lane was paid for (ready and starting; the model's replicas on lanes without autoscale).
    replica_hours: Mapping[str, float] = field(default_factory=dict)
    # The index (in its lane's upstreams) of the replica that took each request's last call, on lanes whose
    # service model fails (simulator.failure_path); NO_REPLICA elsewhere. None: the run did not tell (a replay).
    replica: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.arrival_s)

    def met(self, slo: SloTargets) -> np.ndarray:
        """Per request: answered within its target."""
        by_class = np.where(self.pinned, slo.pinned_s, slo.switchable_s)
        target = np.where(np.isnan(self.deadline_s), by_class, self.deadline_s)
        return (self.status < 300) & (self.latency_s <= target)

    def select(self, mask: np.ndarray) -> Outcome:
        """The requests under `mask`, with no decisions, timeline or provisioned cost."""
        return Outcome(
            lanes=self.lanes,
            arrival_s=self.arrival_s[mask],
            lane=self.lane[mask],
            status=self.status[mask],
            latency_s=self.latency_s[mask],
            cost_usd=self.cost_usd[mask],
            pinned=self.pinned[mask],
            deadline_s=self.deadline_s[mask],
            idle_cost_usd={lane: 0.0 for lane in self.lanes},
            end_s=self.end_s,
            replica=None if self.replica is None else self.replica[mask],
        )


@dataclass(frozen=True, slots=True)
class Row:
    requests: int
    errors: int
    p50_s: float
    p95_s: float
    p99_s: float
    slo_pinned: float
    slo_switchable: float
    cost_usd: float
    replica_hours: float = math.nan  # paid replicas over the run (NaN: the run did not tell, as a replay)

    @property
    def cost_per_1k_usd(self) -> float:
        return 1000.0 * self.cost_usd / self.requests if self.requests else math.nan


@dataclass(frozen=True, slots=True)
class Summary:
    label: str
    rows: Mapping[str, Row]  # each lane, then TOTAL
    transitions: int
    rollbacks: int

    @property
    def total(self) -> Row:
        return self.rows[TOTAL]


def summarize(outcome: Outcome, slo: SloTargets, label: str) -> Summary:
    met = outcome.met(slo)
    rows = {}
    for index, lane in enumerate(outcome.lanes):
        rows[lane] = _row(outcome, outcome.lane == index, met, outcome.idle_cost_usd.get(lane, 0.0))
        rows[lane] = replace(rows[lane], replica_hours=outcome.replica_hours.get(lane, math.nan))
    rows[TOTAL] = _row(outcome, np.ones(len(outcome), dtype=bool), met, sum(outcome.idle_cost_usd.values()))
    if outcome.replica_hours:
        rows[TOTAL] = replace(rows[TOTAL], replica_hours=sum(outcome.replica_hours.values()))
    kinds = [d.get("kind") for d in outcome.decisions]
    return Summary(label, rows, kinds.count("TransitionStarted"), kinds.count("RolledBack"))


def _row(outcome: Outcome, mask: np.ndarray, met: np.ndarray, idle_cost_usd: float) -> Row:
    answered = mask & (outcome.status < 300)
    latencies = outcome.latency_s[answered]
    p50, p95, p99 = np.percentile(latencies, (50, 95, 99)) if latencies.size else (math.nan,) * 3
    pinned = outcome.pinned
    return Row(
        requests=int(mask.sum()),
        errors=int((mask & (outcome.status >= 300)).sum()),
        p50_s=float(p50),
        p95_s=float(p95),
        p99_s=float(p99),
        slo_pinned=_share(met[mask & pinned]),
        slo_switchable=_share(met[mask & ~pinned]),
        cost_usd=float(outcome.cost_usd[mask].sum()) + idle_cost_usd,
    )


def _share(flags: np.ndarray) -> float:
    return float(flags.mean()) if flags.size else math.nan
