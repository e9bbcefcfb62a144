"""Objectives: what each class of traffic was promised, as values.

An objective belongs to a traffic class and says: `percentile` per cent of
the class's requests are answered within `latency_s`, and at most
`error_budget` of them fail (a 5xx of any kind, the router's own 503s
included). The share of requests answered without error within the latency
target is the class's **attainment**; the objective wants at least
`percentile / 100` of it, so "p99 within 2 s" and "99% attainment" are one
promise. A class may also say nothing about latency (`latency_s` infinite):
then only errors count against it.

Classes (Argo's analysis written as data, not thresholds in code):
- `pinned`: requests whose lane was named (a route's `pin`, the
  `X-Modeshift-Mode` header, a trace's `mode`);
- `switchable`: requests the weights place;
- `jobs`: stored jobs (`Prefer: respond-async`, batch lines) as the job
  runner sends them. By default they promise no latency (a job has hours,
  and admission must let it wait in a queue rather than refuse it for a
  latency it never asked for) and queue last (priority 2);
- any other name the config declares, selected by a route's `class` or by
  the `X-Modeshift-Priority` header; the header wins over the route, the
  route over the pin.
`priority` orders the lane gates' queues (a lower number is served first,
as in Triton); the built-in defaults put pinned (0) before switchable (1)
before jobs (2). A config may declare any built-in class to change it.

The controller (policies.control.switching, through policies.control.stream_health), the
admission gate (policies.path.admission), the `slo` policy and the simulator's
report all read these objects; nothing else compares a latency with a number
of its own. Pure values: no clock, no I/O.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field

from policies.control.metrics import LaneTotals
from policies.units import Duration

PINNED = "pinned"
SWITCHABLE = "switchable"
JOBS = "jobs"
BUILT_IN = (PINNED, SWITCHABLE, JOBS)
_DEFAULT_PRIORITY = {PINNED: 0, JOBS: 2}  # any other class: 1


class ObjectiveParams(BaseModel):
    """One entry of the `objectives:` section."""

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    latency_s: Duration | None = Field(
        None, alias="latency", gt=0, description="answer within this; absent: only errors count"
    )
    percentile: float = Field(
        99.0, gt=0, lt=100, description="per cent of the class's requests that must be answered within latency"
    )
    error_budget: float = Field(0.01, ge=0, lt=1, description="share of requests that may fail (5xx, 503s included)")
    priority: int | None = Field(
        None, ge=0, description="queue order in a lane gate, lower first; default pinned 0, jobs 2, others 1"
    )


@dataclass(frozen=True, slots=True)
class Objective:
    traffic_class: str
    latency_s: float
    percentile: float
    error_budget: float
    priority: int

    @property
    def wanted(self) -> float:
        """The attainment the class is promised (0.99 for p99)."""
        return self.percentile / 100.0

    def good(self, totals: LaneTotals) -> int:
        """Requests answered without error within the latency target.

        Outcome totals record a latency for answered requests only (see
        Monitor.served), so every count in the histogram is an answer; the
        count at the target is exact to the histogram's 1% accuracy.
        """
        if math.isinf(self.latency_s):
            return totals.latency.count
        return totals.latency.count_at_most(self.latency_s)

    def attainment(self, totals: LaneTotals) -> float:
        return self.good(totals) / totals.completions if totals.completions else math.nan

    def describe(self) -> str:
        latency = "" if math.isinf(self.latency_s) else f"p{self.percentile:g} within {self.latency_s * 1000:.0f} ms, "
        return f"{latency}errors at most {self.error_budget:.1%}"


class Objectives(Mapping[str, Objective]):
    """Every traffic class of a config and its objective; pinned, switchable and jobs always exist."""

    __slots__ = ("_by_class",)

    def __init__(self, declared: Mapping[str, ObjectiveParams] | None = None):
        declared = dict(declared or {})
        for name in BUILT_IN:
            declared.setdefault(name, ObjectiveParams())
        self._by_class = {
            name: Objective(
                traffic_class=name,
                latency_s=p.latency_s if p.latency_s is not None else math.inf,
                percentile=p.percentile,
                error_budget=p.error_budget,
                priority=p.priority if p.priority is not None else _DEFAULT_PRIORITY.get(name, 1),
            )
            for name, p in declared.items()
        }

    def __getitem__(self, traffic_class: str) -> Objective:
        return self._by_class[traffic_class]

    def __iter__(self) -> Iterator[str]:
        return iter(self._by_class)

    def __len__(self) -> int:
        return len(self._by_class)

    def classify(self, *, pinned: bool, route_class: str | None = None, header_class: str | None = None) -> str:
        """The class of one request: the header's, else the route's, else pinned or switchable."""
        if header_class is not None:
            return header_class
        if route_class is not None:
            return route_class
        return PINNED if pinned else SWITCHABLE
