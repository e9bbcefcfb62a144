"""`slo`: the cheapest mode predicted to keep the objectives of the protected class and the classes it moves.

The target is the objective of the traffic class `objective` (policies.control.objectives,
the config's `objectives:`; default `pinned`, the traffic that cannot leave
the lane): its latency at its percentile (p99 within 1 s, say). A `p95`
given in the params replaces it with "p95 within that", for configs that
declare no objectives.

Each tick, for every configured mode, the policy predicts the arrival rate
the protected `lane` would take in that mode (its pinned traffic plus the
mode's share of the switchable traffic, from the snapshot's rates) and how
the protected class would fare there at that rate:

- from evidence: the class's own latencies on the lane, gathered from
  requests answered while the lane was lightly loaded (service, not
  queueing), each plus the wait at that rate from an M/G/c model
  (policies.queueing: `servers` calls at once, the evidence's mean and
  spread): the share that would miss the target, against the share the
  objective lets miss (1 - its percentile). A long tail of service times
  (long generations) counts as measured, not as a modelled shape;
- until 20 such requests were seen: the M/G/c latency quantile at that
  rate, service time as below, against the target.

With `lane_servers` ({lane: calls at once}) it also guards the traffic it
moves: each class other than pinned and jobs with a latency objective
(switchable, and any the config declares), across every guarded lane (those
and the protected one) a mode sends it to, weighted by the mode's shares:
the predicted share of the class that misses its target is the mix of each
lane's, so a slow lane that takes half the class may miss twice as often as
the class may. A lane without evidence for the class does not rule a mode
out. For the mode in force, a class whose window shows enough answers (20)
is judged by what it shows when that is better than the model's forecast
(a steady-state queue model overstates a short rush). Evidence ages only
while a mode keeps the class away from the lane: after `evidence` to twice
that away, it is forgotten, so a lane left after a bad spell (say, the
first minutes of a rush) is tried again and judged by what it shows now,
the controller's rollback guarding the try.

Of the modes whose every prediction stays within `headroom x` its budget
(the mode in force: within it, so a rate hovering at the edge cannot flap
the mode), it proposes the cheapest, ranking modes by their weights over
the lanes' estimated cost per request. When none fits, the modes that break
their targets about as little as the least (within the headroom) are
equals, and the cheapest of them is proposed: a tail no mode can shorten
does not forbid saving, and near-equal breaches are not worth a move. So
it moves before the breach a latency guard would wait for. An objective
with no latency target keeps every mode: the cheapest is proposed.

Service time: `service_time` when given; otherwise the lane's mean latency
from the last window in which it was lightly loaded (fewer calls in flight,
by Little's law, than half its servers), so queueing does not pass for
service; until there is one, the current mean, which errs slow.

Costs: each lane's estimated cost per request from the snapshot, remembered
from the last window in which the lane served anything (a lane with no
traffic has no busy time to price, so until it has served, its estimate
counts as it stands). The other lanes' latency is not
predicted: guard it with a `latency` guard in a composite.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable, Mapping

from pydantic import Field

from policies.control.objectives import JOBS, PINNED
from policies.control.protocol import BasePolicy, LaneName, PolicyParams, Proposal
from policies.control.snapshot import LaneFigures, Snapshot
from policies.histogram import Histogram
from policies.queueing import scv_from_quantiles, sojourn_quantile_s, wait_quantile_s
from policies.units import Duration

LIGHT_LOAD = 0.5  # calls in flight per server below which latency is service, not queueing
MIN_EVIDENCE = 20  # requests of a class answered on a lane before its latencies there say anything


class SloParams(PolicyParams):
    lane: LaneName = Field("realtime", description="the lane whose latency the objective protects")
    objective: str = Field(PINNED, description="the traffic class whose objective the lane must keep")
    p95_s: Duration | None = Field(
        None, alias="p95", gt=0, description="instead of the objective: the p95 latency the lane must keep"
    )
    servers: int = Field(ge=1, description="calls the lane serves at once (replicas x concurrency)")
    lane_servers: dict[LaneName, int] = Field(
        default_factory=dict, description="other lanes' calls at once: the classes a mode moves there are guarded too"
    )
    service_time_s: Duration | None = Field(
        None, alias="service_time", gt=0, description="mean service time; measured on the lane when not given"
    )
    headroom: float = Field(0.8, gt=0, le=1, description="a mode to move to must keep under headroom x the target")
    hold_s: Duration = Field(10.0, alias="hold", description="how long a proposal must persist")
    evidence_s: Duration = Field(
        600.0,
        alias="evidence",
        gt=0,
        description="how long a class's latencies on a lane count while the class is not sent there "
        "(between this and twice it)",
    )


class SloPolicy(BasePolicy):
    name = "slo"
    Params = SloParams
    params: SloParams

    def __init__(self, params: SloParams, rng: random.Random | None = None):
        super().__init__(params, rng)
        self._service: tuple[float, float] | None = None  # (mean, scv) from a lightly loaded window
        self._costs: dict[str, float] = {}
        # By (class, lane) on the guarded lanes: latencies of requests answered while the lane was lightly
        # loaded, and the class's cumulative latencies there at the last tick (what is new since).
        self._light: dict[tuple[str, str], _Recent] = {}
        self._seen: dict[tuple[str, str], Histogram] = {}
        self._last_tick_s: float | None = None

    def decide(self, snapshot: Snapshot) -> Proposal | None:
        p = self.params
        lane = snapshot.lanes.get(p.lane)
        modes = snapshot.control.modes
        if lane is None or not modes:
            return None
        self._learn(snapshot)
        service = self._service_now(lane)
        if service is None:
            return None
        mean_s, scv = service
        target_s, q = self._target(snapshot)
        pinned = {name: f.pinned_arrival_rate_per_s for name, f in snapshot.lanes.items()}
        switchable = max(0.0, snapshot.arrival_rate_per_s - sum(pinned.values()))
        predicted = {
            mode: sojourn_quantile_s(q, pinned[p.lane] + weights[p.lane] * switchable, p.servers, mean_s, scv)
            for mode, weights in modes.items()
        }
        cost = {mode: self._mode_cost(weights, snapshot) for mode, weights in modes.items()}
        # Each mode's prediction over its target, every guard: the protected class's share over its target
        # against the share it may miss, from its own latencies at light load; until there are enough, the
        # modelled quantile against the target.
        protected = (self._protected_class(snapshot), target_s, q)
        over: dict[str, dict[str, float]] = {}  # mode -> class -> predicted over target
        for mode, weights in modes.items():
            rate = pinned[p.lane] + weights[p.lane] * switchable
            missed = self._missed(*protected, p.lane, rate, p.servers)
            over[mode] = {protected[0]: predicted[mode] / target_s if missed is None else _over_budget(missed, 1 - q)}
        moved = self._moved(snapshot, modes, pinned, switchable, over)
        if snapshot.mode in over:  # the mode in force: where the window shows it keeps a target, it does
            for name, shown in self._shown(snapshot, (protected, *self._movable(snapshot))).items():
                if name in over[snapshot.mode]:
                    over[snapshot.mode][name] = min(over[snapshot.mode][name], shown)
        worst = {mode: max(by_class.values()) for mode, by_class in over.items()}
        fits = [mode for mode in modes if worst[mode] <= (1.0 if mode == snapshot.mode else p.headroom)]
        figures = {
            "arrival_rate_per_s": snapshot.arrival_rate_per_s,
            "switchable_rate_per_s": switchable,
            "service_s": mean_s,
            "service_scv": scv,
            "target_s": target_s,
            "target_quantile": q,
            **{f"{mode}.predicted_s": value for mode, value in predicted.items()},
            **moved,
            **{f"{mode}.cost_per_request_usd": value for mode, value in cost.items()},
        }
        keep = f"p{q * 100:g} within {_ms(target_s)}"
        if fits:
            best = min(fits, key=lambda mode: (_nan_last(cost[mode]), predicted[mode]))
            reason = (
                f"{best} is the cheapest mode keeping {keep}: "
                f"{p.lane} predicted {_ms(predicted[best])} at {switchable:.1f} switchable req/s"
            )
        else:
            # Modes that break the targets about as little as the least (within the headroom) are equals: the
            # cheapest of them, so a tail no mode can help (long calls on the lane) does not forbid saving.
            least = min(worst.values())
            equals = [mode for mode in modes if worst[mode] * p.headroom <= least]
            best = min(equals, key=lambda mode: (_nan_last(cost[mode]), worst[mode], predicted[mode]))
            reason = (
                f"no mode keeps {keep} on {p.lane}{' and the moved classes elsewhere' if moved else ''}; "
                f"{best} breaks its targets least ({worst[best]:.2f}x; {p.lane} predicted {_ms(predicted[best])})"
            )
        return self.propose(best, reason, figures, p.hold_s)

    def _moved(
        self,
        snapshot: Snapshot,
        modes: Mapping[str, Mapping[str, float]],
        pinned: Mapping[str, float],
        switchable: float,
        over: dict[str, dict[str, float]],
    ) -> dict[str, float]:
        """For each class the modes move, the share of its requests each mode would put over the class's
        target, across the guarded lanes the mode sends it to, into `over`; the figures."""
        guarded = self._guarded()
        if len(guarded) == 1:
            return {}
        figures: dict[str, float] = {}
        for target in self._movable(snapshot):
            name_of, _, q = target
            for mode, weights in modes.items():
                missed = 0.0
                for lane, share in weights.items():
                    if share <= 0 or lane not in guarded:
                        continue
                    rate = pinned.get(lane, 0.0) + share * switchable
                    lane_missed = self._missed(*target, lane, rate, guarded[lane])
                    if lane_missed is not None:  # else no evidence there: nothing to hold the mode to
                        missed += share * lane_missed
                        figures[f"{mode}.{lane}.{name_of}.predicted_missed"] = lane_missed
                over[mode][name_of] = _over_budget(missed, 1.0 - q)
                figures[f"{mode}.{name_of}.predicted_missed"] = missed
        return figures

    def _movable(self, snapshot: Snapshot) -> list[tuple[str, float, float]]:
        """(class, target, quantile) of the classes a mode moves and that have a latency objective, when the
        policy guards them (`lane_servers`)."""
        if not self.params.lane_servers:
            return []
        movable = [o for name, o in snapshot.objectives.items() if name not in (PINNED, JOBS)]
        return [(o.traffic_class, o.latency_s, o.wanted) for o in movable if math.isfinite(o.latency_s)]

    def _shown(self, snapshot: Snapshot, targets: Iterable[tuple[str, float, float]]) -> dict[str, float]:
        """Over target as the window shows it, for each class with enough requests answered in it."""
        shown = {}
        for name, target_s, q in targets:
            windows = [o.window for (c, _), o in snapshot.outcomes.items() if c == name and o.window.completions]
            answered = sum(w.completions for w in windows)
            if answered >= MIN_EVIDENCE:
                within = sum(w.latency.count_at_most(target_s) for w in windows)
                shown[name] = _over_budget(1.0 - within / answered, 1.0 - q)
        return shown

    def _missed(
        self, traffic_class: str, target_s: float, q: float, lane: str, rate: float, servers: int
    ) -> float | None:
        """The share of the class's requests on `lane` that would miss `target_s` at `rate`: its latencies at
        light load, each plus the wait (at its quantile `q`) that rate brings (None: too few seen yet)."""
        recent = self._light.get((traffic_class, lane))
        light = recent.read() if recent is not None else None
        if light is None or light.count < MIN_EVIDENCE:
            return None
        mean_s = light.mean()
        waiting_s = wait_quantile_s(q, rate, servers, mean_s, scv_from_quantiles(mean_s, light.quantile(0.5)))
        if not waiting_s < target_s:
            return 1.0
        return 1.0 - light.count_at_most(target_s - waiting_s) / light.count

    def _guarded(self) -> dict[str, int]:
        """The lanes whose queueing the policy predicts, and their calls at once."""
        return {self.params.lane: self.params.servers, **self.params.lane_servers}

    def _protected_class(self, snapshot: Snapshot) -> str:
        objective = snapshot.objectives.get(self.params.objective)
        return objective.traffic_class if objective is not None else PINNED

    def _target(self, snapshot: Snapshot) -> tuple[float, float]:
        """(latency, quantile) the lane must keep: the p95 param, else the objective's."""
        if self.params.p95_s is not None:
            return self.params.p95_s, 0.95
        objective = snapshot.objectives.get(self.params.objective) or snapshot.objectives[PINNED]
        return objective.latency_s, objective.wanted

    def _learn(self, snapshot: Snapshot) -> None:
        since_s = snapshot.now_s - self._last_tick_s if self._last_tick_s is not None else 0.0
        self._last_tick_s = snapshot.now_s
        for key, recent in self._light.items():  # a class the mode keeps away from a lane: its evidence ages
            outcome = snapshot.outcomes.get(key)
            if outcome is None or not outcome.window.completions:
                recent.idle(since_s)
        for name, figures in snapshot.lanes.items():
            if figures.completions and not math.isnan(figures.estimated_cost_per_request_usd):
                self._costs[name] = figures.estimated_cost_per_request_usd
        guarded = self._guarded()
        for key, outcome in snapshot.outcomes.items():
            servers = guarded.get(key[1])
            if servers is None:
                continue
            latencies, before = outcome.cumulative.latency, self._seen.get(key)
            self._seen[key] = latencies.copy()
            lane = snapshot.lanes[key[1]]
            if lane.throughput_per_s * lane.mean_latency_s < LIGHT_LOAD * servers:
                # Answered since the last tick, while the lane was lightly loaded: service, not queueing.
                self._light.setdefault(key, _Recent(self.params.evidence_s)).add(
                    _since(latencies, before, outcome.window.latency)
                )
        lane = snapshot.lanes[self.params.lane]
        if lane.completions and lane.throughput_per_s * lane.mean_latency_s < LIGHT_LOAD * self.params.servers:
            self._service = (lane.mean_latency_s, scv_from_quantiles(lane.mean_latency_s, lane.p50_s))

    def _service_now(self, lane: LaneFigures) -> tuple[float, float] | None:
        if self.params.service_time_s is not None:
            scv = self._service[1] if self._service else 1.0
            return self.params.service_time_s, scv
        if self._service is not None:
            return self._service
        if lane.completions and lane.mean_latency_s > 0:
            return lane.mean_latency_s, scv_from_quantiles(lane.mean_latency_s, lane.p50_s)
        return None

    def _mode_cost(self, weights: Mapping[str, float], snapshot: Snapshot) -> float:
        """Cost per switchable request in a mode; a lane never priced yet counts at its current estimate."""
        return math.fsum(
            w * self._costs.get(lane, snapshot.lanes[lane].estimated_cost_per_request_usd)
            for lane, w in weights.items()
            if w > 0
        )


class _Recent:
    """A class's latencies on a lane, forgotten when the class stays away from the lane long enough.

    Kept as two halves by the time the class was not sent there (`idle`):
    when `keep_s` of it has passed, a new half begins and the older is
    dropped. While the class is served on the lane, nothing ages (its window
    judges the lane then); a lane left after a bad spell is tried again once
    that spell is `keep_s` to twice that old, and its fresh latencies judge it.
    """

    def __init__(self, keep_s: float):
        self.keep_s = keep_s
        self._idle_s = 0.0  # time away since the newer half began
        self._older, self._newer = Histogram(), Histogram()
        self._both: Histogram | None = None  # the two merged, until either changes

    def add(self, latencies: Histogram) -> None:
        if latencies.count:
            self._newer.merge(latencies)
            self._both = None

    def idle(self, seconds: float) -> None:
        """The class was not sent to the lane for `seconds`."""
        self._idle_s += seconds
        halves = math.floor(self._idle_s / self.keep_s)
        if halves < 1:
            return
        self._older = self._newer if halves == 1 else Histogram()
        self._newer = Histogram()
        self._idle_s -= halves * self.keep_s
        self._both = None

    def read(self) -> Histogram:
        if self._both is None:
            self._both = self._older.copy()
            self._both.merge(self._newer)
        return self._both


def _since(latencies: Histogram, before: Histogram | None, window: Histogram) -> Histogram:
    """What a cumulative histogram gained since `before`; the window's when there is no earlier copy of it
    (the first tick, or counters that started again)."""
    if before is not None and before.count <= latencies.count:
        try:
            return latencies.minus(before)
        except ValueError:
            pass
    return window


def _over_budget(missed: float, budget: float) -> float:
    """A predicted share over target against the share the objective allows to miss (1.0: all of it spent)."""
    if budget > 0:
        return missed / budget
    return math.inf if missed > 0 else 0.0


def _nan_last(x: float) -> float:
    return math.inf if math.isnan(x) else x


def _ms(seconds: float) -> str:
    return "unbounded" if math.isinf(seconds) else f"{seconds * 1000:.0f} ms"
