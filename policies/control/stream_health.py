"""Stream health: is the traffic keeping its objectives, on which lanes, and better or worse than before?

The switching controller asks three questions of the evidence, each answered
here from the requests' outcomes (policies.control.monitor's per (class, lane)
totals) and the classes' objectives (policies.control.objectives):

- `regressions`: which classes kept their objectives worse during a step than
  before it, counting every lane (the one that lost traffic too);
- `failing_lanes`: which lanes are missing the objective of some class that
  ended on them (the question before a rollback sends traffic back to a lane,
  and before an urgent move takes it away);
- `readings`: each class's attainment and errors, for the audit log.

Small samples decide nothing by chance. A class is judged only with
`min_samples` requests in the period, and only what the evidence shows at
95% confidence counts (Wilson score bounds for a binomial share, one-sided,
z = 1.645): a class has regressed when even the upper bound of its attainment
lies below both its objective and its attainment before; a lane is failing
when the upper bound of some class's attainment on it lies below the
objective, or the lower bound of its error share above the error budget. No
evidence is never a verdict: a class or lane without enough requests is
neither healthy nor failing, and the controller does not promote on it.

Pure functions of their arguments: no clock, no state.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass

from policies.control.metrics import LaneTotals
from policies.control.objectives import Objective, Objectives
from policies.control.snapshot import OutcomeFigures
from policies.control.weights import Weights

Z_ONE_SIDED_95 = 1.6448536269514722

Evidence = Mapping[tuple[str, str], LaneTotals]
"""Outcomes over one period, by (traffic class, lane)."""


def wilson_bounds(successes: int, n: int, z: float = Z_ONE_SIDED_95) -> tuple[float, float]:
    """The Wilson score interval of a binomial share (Wilson 1927); (0, 1) when n is 0."""
    if n <= 0:
        return 0.0, 1.0
    p = successes / n
    z2 = z * z
    denominator = 1.0 + z2 / n
    centre = (p + z2 / (2 * n)) / denominator
    half = z * math.sqrt(p * (1.0 - p) / n + z2 / (4 * n * n)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


@dataclass(frozen=True, slots=True)
class Reading:
    """One class's outcomes over a period, on one lane or (lane None) on all of them."""

    objective: Objective
    lane: str | None
    requests: int
    good: int
    errors: int

    @property
    def attainment(self) -> float:
        return self.good / self.requests if self.requests else math.nan

    @property
    def attainment_upper(self) -> float:
        return wilson_bounds(self.good, self.requests)[1]

    @property
    def errors_lower(self) -> float:
        return wilson_bounds(self.errors, self.requests)[0]

    def missing(self) -> bool:
        """The evidence shows this class below its objective (attainment or errors)."""
        o = self.objective
        return self.attainment_upper < o.wanted or self.errors_lower > o.error_budget

    def describe(self) -> str:
        where = f" on {self.lane}" if self.lane else ""
        return (
            f"{self.objective.traffic_class}{where} {self.attainment:.1%} within objective "
            f"(wants {self.objective.wanted:.1%}), {self.errors} errors in {self.requests}"
        )


def since(outcomes: Mapping[tuple[str, str], OutcomeFigures], marks: Evidence) -> dict[tuple[str, str], LaneTotals]:
    """What ended since `marks` (cumulative totals kept earlier) was taken."""
    return {key: o.cumulative.minus(marks[key]) if key in marks else o.cumulative for key, o in outcomes.items()}


def marks(outcomes: Mapping[tuple[str, str], OutcomeFigures]) -> dict[tuple[str, str], LaneTotals]:
    return {key: o.cumulative for key, o in outcomes.items()}


def windows(outcomes: Mapping[tuple[str, str], OutcomeFigures]) -> dict[tuple[str, str], LaneTotals]:
    return {key: o.window for key, o in outcomes.items()}


def readings(evidence: Evidence, objectives: Objectives, lane: str | None = None) -> dict[str, Reading]:
    """Each class's reading over `evidence`: on `lane`, or summed over every lane."""
    out = {}
    for traffic_class, objective in objectives.items():
        parts = [t for (c, on), t in evidence.items() if c == traffic_class and (lane is None or on == lane)]
        requests = sum(t.completions for t in parts)
        good = sum(objective.good(t) for t in parts)
        errors = sum(t.errors for t in parts)
        out[traffic_class] = Reading(objective, lane, requests, good, errors)
    return out


@dataclass(frozen=True, slots=True)
class Regression:
    now: Reading
    before: Reading | None  # None when the period before had too few requests to compare with

    def describe(self) -> str:
        before = f"{self.before.attainment:.1%} before" if self.before is not None else "no evidence before"
        return f"{self.now.describe()}; {before}"


def regressions(now: Evidence, before: Evidence, objectives: Objectives, min_samples: int) -> list[Regression]:
    """The classes that, with `min_samples` requests now, do confidently worse than their objective and than before.

    "Before" counts only with `min_samples` requests of its own; without
    them the objective alone is the bar. Errors count as misses in the
    attainment, so a lane refusing requests shows here as well.
    """
    out = []
    was = readings(before, objectives)
    for traffic_class, reading in readings(now, objectives).items():
        if reading.requests < min_samples:
            continue
        prior = was[traffic_class] if was[traffic_class].requests >= min_samples else None
        bar = reading.objective.wanted if prior is None else min(reading.objective.wanted, prior.attainment)
        errors_bar = reading.objective.error_budget
        if prior is not None:
            errors_bar = max(errors_bar, prior.errors / prior.requests)
        if reading.attainment_upper < bar or reading.errors_lower > errors_bar:
            out.append(Regression(reading, prior))
    return out


def failing_lanes(
    evidence: Evidence, objectives: Objectives, lanes: Iterable[str], min_samples: int
) -> dict[str, Reading]:
    """The lanes among `lanes` that miss some class's objective, each with the worst such reading."""
    out = {}
    for lane in lanes:
        missed = [r for r in readings(evidence, objectives, lane).values() if r.requests >= min_samples and r.missing()]
        if missed:
            out[lane] = min(missed, key=lambda r: r.attainment)
    return out


def failing_returns(
    now: Evidence, before: Evidence, objectives: Objectives, lanes: Collection[str], min_samples: int
) -> dict[str, Reading]:
    """The lanes a rollback would return traffic to that miss objectives: on the recent evidence `now`, or
    on `before` where `now` holds too few of their requests to tell."""
    failing = failing_lanes(now, objectives, lanes, min_samples)
    for lane, reading in failing_lanes(before, objectives, lanes, min_samples).items():
        if lane not in failing and _requests_on(now, lane) < min_samples:
            failing[lane] = reading
    return failing


def urgency(
    window: Evidence, objectives: Objectives, current: Weights, target: Weights, min_samples: int
) -> str | None:
    """Why a move from `current` to `target` weights cannot wait, or None.

    It cannot when a lane losing traffic misses its objectives and no lane
    gaining traffic does: every moment spent on the way is spent failing.
    """
    failing = failing_lanes(window, objectives, current.gained(target), min_samples)
    if not failing or failing_lanes(window, objectives, target.gained(current), min_samples):
        return None
    return "; ".join(reading.describe() for reading in failing.values())


def facts(regressed: list[Regression], failing: Mapping[str, Reading]) -> dict[str, float]:
    """The figures behind a rollback or a withheld one, for the audit log."""
    out = {}
    for r in regressed:
        prefix = f"evidence.{r.now.objective.traffic_class}"
        out[f"{prefix}.requests"] = float(r.now.requests)
        out[f"{prefix}.attainment"] = r.now.attainment
        out[f"{prefix}.before"] = r.before.attainment if r.before is not None else math.nan
        out[f"{prefix}.wanted"] = r.now.objective.wanted
    for lane, reading in failing.items():
        out[f"evidence.{lane}.failing_attainment"] = reading.attainment
    return out


def _requests_on(evidence: Evidence, lane: str) -> int:
    return sum(totals.completions for (_, on), totals in evidence.items() if on == lane)
