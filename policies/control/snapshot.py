"""The snapshot: one frozen value holding everything a policy may look at.

A Snapshot is built once per control tick (by policies.control.monitor.Monitor) from
the lanes' windows and the controller's state. Policies read it and nothing
else, which is what makes them pure functions of their input; the controller
reads it too, and every decision it makes quotes `Snapshot.figures()`, so
the audit log shows the numbers behind each decision.

All latencies are seconds, all rates per second, all money USD. A figure that
cannot be known (a percentile of an empty window, an error rate with no
completions) is NaN, never 0: "no data" must not read as "healthy".
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from types import MappingProxyType

from policies.control.metrics import LaneTotals
from policies.control.objectives import Objectives
from policies.control.weights import Weights


@dataclass(frozen=True, slots=True)
class LaneFigures:
    """One lane over the metrics window (figures) plus its cumulative totals."""

    lane: str
    span_s: float
    arrivals: int
    completions: int
    errors: int
    arrival_rate_per_s: float
    pinned_arrival_rate_per_s: float
    throughput_per_s: float
    items_per_s: float
    items_per_busy_s: float  # items per second of upstream calls (a merged call counted once); NaN: none timed
    input_tokens_per_s: float
    output_tokens_per_s: float
    error_rate: float
    p50_s: float
    p95_s: float
    p99_s: float
    mean_latency_s: float
    in_flight: int
    queue_depth: int
    cost_usd: float
    cost_per_request_usd: float
    estimated_cost_per_request_usd: float
    marginal_cost_per_request_usd: float  # what one more request adds: tokens, busy seconds, per request
    cumulative: LaneTotals

    def numbers(self) -> dict[str, float]:
        """The scalar figures, by name (for the audit log)."""
        return {f.name: float(getattr(self, f.name)) for f in fields(self) if f.name not in ("lane", "cumulative")}


@dataclass(frozen=True, slots=True)
class OutcomeFigures:
    """How the requests of one traffic class that ended on one lane fared.

    Totals of finished requests only (a request counts once, on the lane it
    ended on, its client's latency recorded when it was answered): over the
    metrics window, and since the start (for "since this step began").
    """

    traffic_class: str
    lane: str
    window: LaneTotals
    cumulative: LaneTotals


@dataclass(frozen=True, slots=True)
class TransitionView:
    """A transition in progress, as the snapshot shows it."""

    from_mode: str | None
    to_mode: str
    step_index: int
    step_count: int
    fraction: float
    started_s: float
    step_started_s: float
    cause: str


@dataclass(frozen=True, slots=True)
class ControlView:
    """The switching controller's state, as the snapshot shows it."""

    state: str
    mode: str | None
    weights: Weights
    modes: Mapping[str, Weights] = field(default_factory=dict)  # every configured mode's weights
    transition: TransitionView | None = None
    holding_target: str | None = None
    holding_since_s: float | None = None
    cooldown_until_s: float | None = None


@dataclass(frozen=True, slots=True)
class ReplicasView:
    """An autoscaled lane's replicas as the capacity rule sees them (policies.control.capacity), and what it
    plans with."""

    desired: int
    ready: int
    concurrency: int  # calls one replica serves at once
    service_s: float = math.nan  # a call's mean time on a server as the capacity rule plans with it (NaN: never)
    least: int = 0  # the autoscale bounds
    most: int = 1_000_000
    headroom: float = 0.0  # share of the servers kept free
    per_replica_hour: float = 0.0  # USD


# The horizons a jobs backlog is counted over (JobsBacklog): from half a minute to a day, each about twice the last.
BACKLOG_HORIZONS_S = (30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0, 3600.0, 7200.0, 21600.0, 86400.0)


@dataclass(frozen=True, slots=True)
class JobsBacklog:
    """Jobs waiting for a lane with a deadline (an X-Modeshift-Deadline-Ms, a batch's completion_window): for
    each horizon, how many are due before now + that horizon (overdue ones included)."""

    due_within: tuple[tuple[float, int], ...] = ()  # (horizon_s, jobs due before now + horizon_s), horizons rising

    def drain_rate_per_s(self) -> float:
        """The least rate of jobs answered that meets every deadline, counted cautiously: the jobs due within
        a horizon over the horizon before it (the first over itself), so a job due at 31 s counts as due at
        30 s; the most any horizon asks for. Zero with nothing waiting."""
        rate = 0.0
        before = self.due_within[0][0] if self.due_within else 0.0
        for horizon_s, due in self.due_within:
            rate = max(rate, due / before)
            before = horizon_s
        return rate


@dataclass(frozen=True, slots=True)
class Snapshot:
    now_s: float
    lanes: Mapping[str, LaneFigures]
    arrival_rate_per_s: float
    control: ControlView
    objectives: Objectives = field(default_factory=Objectives)
    outcomes: Mapping[tuple[str, str], OutcomeFigures] = field(default_factory=dict)  # by (class, lane)
    replicas: Mapping[str, ReplicasView] = field(default_factory=dict)  # autoscaled lanes, ready as of now
    backlogs: Mapping[str, JobsBacklog] = field(default_factory=dict)  # jobs waiting with deadlines, by lane

    @property
    def mode(self) -> str | None:
        return self.control.mode

    @property
    def weights(self) -> Weights:
        return self.control.weights

    @property
    def transition(self) -> TransitionView | None:
        return self.control.transition

    def figures(self) -> dict[str, float]:
        """Flat figures for the audit log: totals, then `<lane>.<figure>`."""
        out: dict[str, float] = {"now_s": self.now_s, "arrival_rate_per_s": self.arrival_rate_per_s}
        for lane, figs in self.lanes.items():
            out[f"{lane}.weight"] = self.weights[lane]
            for name, value in figs.numbers().items():
                out[f"{lane}.{name}"] = value
        for traffic_class, objective in self.objectives.items():
            totals = [o.window for (c, _), o in self.outcomes.items() if c == traffic_class]
            if totals and (window := _sum(totals)).completions:
                out[f"class.{traffic_class}.requests"] = float(window.completions)
                out[f"class.{traffic_class}.attainment"] = objective.attainment(window)
        return out


def _sum(totals: list[LaneTotals]) -> LaneTotals:
    out = totals[0]
    for more in totals[1:]:
        out = out.plus(more)
    return out


def freeze_lanes(lanes: Mapping[str, LaneFigures]) -> Mapping[str, LaneFigures]:
    return MappingProxyType(dict(lanes))
