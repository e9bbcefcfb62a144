"""`slo`: the cheapest mode whose predicted latency on the protected lane keeps an objective.

The target is the objective of the traffic class `objective` (policies.objectives,
the config's `objectives:`; default `pinned`, the traffic that cannot leave
the lane): its latency at its percentile (p99 within 1 s, say). A `p95`
given in the params replaces it with "p95 within that", for configs that
declare no objectives.

Each tick, for every configured mode, the policy predicts the arrival rate
the protected `lane` would take in that mode (its pinned traffic plus the
mode's share of the switchable traffic, from the snapshot's rates) and that
lane's latency quantile at that rate with an M/G/c model
(policies.queueing): `servers` calls at once, the service time measured on
the lane, its spread from the lane's mean and median. Of the modes whose
prediction stays within `headroom x target` (the mode in force: within the
target, so a rate hovering at the edge cannot flap the mode), it proposes
the cheapest, ranking modes by their weights over the lanes' estimated cost
per request. When none fits, it proposes the one that loads the lane least.
So it moves before the breach a latency guard would wait for. An objective
with no latency target keeps every mode: the cheapest is proposed.

With `lane_servers` ({lane: calls at once}) it also guards the traffic it
moves: every class other than pinned and jobs with a latency objective
(switchable, and any the config declares) must keep it on each of those
lanes that a mode sends switchable traffic to. There the prediction starts
from what the lane shows (its p95 or p99 over the window, whichever the
class's percentile is nearer) and adds only the change in queueing the
mode's rate would bring (M/G/c wait at that rate less the wait at the rate
it has now), so a lane's own long, uneven service times count as measured,
not as modelled. A lane that has served nothing in the window gives no
evidence and does not rule a mode out. When no mode fits, the policy
proposes the one whose worst prediction is the smallest share of its
target.

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
from collections.abc import Mapping

from pydantic import Field

from policies.objectives import JOBS, PINNED
from policies.protocol import BasePolicy, LaneName, PolicyParams, Proposal
from policies.queueing import scv_from_quantiles, sojourn_quantile_s, wait_quantile_s
from policies.snapshot import LaneFigures, Snapshot
from policies.units import Duration

LIGHT_LOAD = 0.5  # calls in flight per server below which latency is service, not queueing


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


class SloPolicy(BasePolicy):
    name = "slo"
    Params = SloParams
    params: SloParams

    def __init__(self, params: SloParams, rng: random.Random | None = None):
        super().__init__(params, rng)
        self._service: tuple[float, float] | None = None  # (mean, scv) from a lightly loaded window
        self._costs: dict[str, float] = {}

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
        worst = {mode: predicted[mode] / target_s for mode in modes}  # prediction over target, every guard
        moved = self._moved(snapshot, modes, pinned, switchable, worst)
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
            best = min(modes, key=lambda mode: (worst[mode], predicted[mode], _nan_last(cost[mode])))
            reason = (
                f"no mode keeps {keep} on {p.lane}{' and the moved classes elsewhere' if moved else ''}; "
                f"{best} breaks its targets least ({worst[best]:.2f}x; {p.lane} predicted {_ms(predicted[best])})"
            )
        return self.propose(best, reason, figures, p.hold_s)

    def _moved(
        self, snapshot: Snapshot, modes: Mapping[str, Mapping[str, float]], pinned: Mapping[str, float],
        switchable: float, worst: dict[str, float],
    ) -> dict[str, float]:  # fmt: skip
        """Predict each movable class on each guarded lane in each mode; raise `worst`; the figures."""
        figures: dict[str, float] = {}
        movable = [o for name, o in snapshot.objectives.items() if name not in (PINNED, JOBS)]
        movable = [o for o in movable if math.isfinite(o.latency_s)]
        for name, servers in self.params.lane_servers.items():
            lane = snapshot.lanes.get(name)
            if lane is None or not lane.completions or lane.mean_latency_s <= 0:
                continue  # no evidence in the window: nothing to hold a mode to
            scv = scv_from_quantiles(lane.mean_latency_s, lane.p50_s)
            now_rate = lane.arrival_rate_per_s
            for objective in movable:
                q = objective.wanted
                shown = lane.p99_s if abs(q - 0.99) <= abs(q - 0.95) else lane.p95_s
                waiting_now = wait_quantile_s(q, now_rate, servers, lane.mean_latency_s, scv)
                for mode, weights in modes.items():
                    share = weights.get(name, 0.0)
                    if share <= 0:
                        continue
                    rate = pinned.get(name, 0.0) + share * switchable
                    waiting = wait_quantile_s(q, rate, servers, lane.mean_latency_s, scv)
                    latency_s = max(shown + waiting - waiting_now, 0.0)
                    worst[mode] = max(worst[mode], latency_s / objective.latency_s)
                    figures[f"{mode}.{name}.{objective.traffic_class}.predicted_s"] = latency_s
        return figures

    def _target(self, snapshot: Snapshot) -> tuple[float, float]:
        """(latency, quantile) the lane must keep: the p95 param, else the objective's."""
        if self.params.p95_s is not None:
            return self.params.p95_s, 0.95
        objective = snapshot.objectives.get(self.params.objective) or snapshot.objectives[PINNED]
        return objective.latency_s, objective.wanted

    def _learn(self, snapshot: Snapshot) -> None:
        for name, figures in snapshot.lanes.items():
            if figures.completions and not math.isnan(figures.estimated_cost_per_request_usd):
                self._costs[name] = figures.estimated_cost_per_request_usd
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


def _nan_last(x: float) -> float:
    return math.inf if math.isnan(x) else x


def _ms(seconds: float) -> str:
    return "unbounded" if math.isinf(seconds) else f"{seconds * 1000:.0f} ms"
