"""`cost`: move to batch when a real-time request costs more than a threshold.

The figure judged is the watched lane's *estimated* cost per request for the
current traffic mix (policies.pricing: token prices on the mean tokens per
request, hourly prices amortised over the total arrival rate). Using the
estimate rather than the lane's measured cost lets the policy judge the
real-time lane while it carries no traffic, so it can also say when to come
back: below `threshold_usd * (1 - hysteresis)` it proposes `default_mode`.
Defaults from the cost guide: $0.001 per request, held 300 s.
"""

from __future__ import annotations

import math

from pydantic import Field

from policies.control.protocol import BasePolicy, LaneName, ModeName, PolicyParams, Proposal
from policies.control.snapshot import Snapshot
from policies.units import Duration


class CostParams(PolicyParams):
    threshold_usd: float = Field(0.001, gt=0, description="cost per request above which to move to cheap_mode")
    lane: LaneName = Field("realtime", description="the lane whose cost per request is judged")
    cheap_mode: ModeName = "batch"
    default_mode: ModeName = "realtime"
    hysteresis: float = Field(0.2, ge=0, lt=1, description="come back only below threshold * (1 - hysteresis)")
    hold_s: Duration = Field(300.0, alias="hold", description="how long the proposal must persist")


class CostPolicy(BasePolicy):
    name = "cost"
    Params = CostParams
    params: CostParams

    def decide(self, snapshot: Snapshot) -> Proposal | None:
        p = self.params
        lane = snapshot.lanes.get(p.lane)
        if lane is None:
            return None
        cost = lane.estimated_cost_per_request_usd
        if math.isnan(cost):
            return None
        figures = {f"{p.lane}.estimated_cost_per_request_usd": cost, "threshold_usd": p.threshold_usd}
        if cost > p.threshold_usd:
            return self.propose(
                p.cheap_mode, f"{p.lane} costs ${cost:.6f}/request > ${p.threshold_usd:g}", figures, p.hold_s
            )
        back_below = p.threshold_usd * (1.0 - p.hysteresis)
        if cost < back_below:
            return self.propose(
                p.default_mode, f"{p.lane} costs ${cost:.6f}/request < ${back_below:g}", figures, p.hold_s
            )
        return None
