"""`load`: switch on the total arrival rate, with a dead band between thresholds.

Below `low_rps` the traffic is too thin to fill batches, so real-time is both
fast and cheap enough: propose `low_mode`. Above `high_rps` a batch deployment
amortises its passes well: propose `high_mode`. In between, no opinion, so
the mode in force stays (hysteresis: a rate wobbling around one threshold
cannot flap the mode). Defaults from the cost guide: 10 and 100 req/s, held
60 s.
"""

from __future__ import annotations

import math

from pydantic import Field, model_validator

from policies.control.protocol import BasePolicy, ModeName, PolicyParams, Proposal
from policies.control.snapshot import Snapshot
from policies.units import Duration


class LoadParams(PolicyParams):
    low_rps: float = Field(10.0, ge=0, description="below this arrival rate, propose low_mode")
    high_rps: float = Field(100.0, gt=0, description="above this arrival rate, propose high_mode")
    low_mode: ModeName = "realtime"
    high_mode: ModeName = "batch"
    hold_s: Duration = Field(60.0, alias="hold", description="how long the proposal must persist")

    @model_validator(mode="after")
    def _ordered(self) -> LoadParams:
        if self.low_rps >= self.high_rps:
            raise ValueError(f"low_rps ({self.low_rps}) must be below high_rps ({self.high_rps})")
        return self


class LoadPolicy(BasePolicy):
    name = "load"
    Params = LoadParams
    params: LoadParams

    def decide(self, snapshot: Snapshot) -> Proposal | None:
        rate = snapshot.arrival_rate_per_s
        if math.isnan(rate):
            return None
        p = self.params
        figures = {"arrival_rate_per_s": rate, "low_rps": p.low_rps, "high_rps": p.high_rps}
        if rate < p.low_rps:
            return self.propose(p.low_mode, f"arrival rate {rate:.1f} req/s < {p.low_rps:g}", figures, p.hold_s)
        if rate > p.high_rps:
            return self.propose(p.high_mode, f"arrival rate {rate:.1f} req/s > {p.high_rps:g}", figures, p.hold_s)
        return None
