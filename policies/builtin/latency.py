"""`latency`: go back to real-time when the lanes in use are too slow.

Two triggers, either one proposes `realtime_mode`:
- the p95 latency of a lane that carries auto traffic (weight > 0, at least
  `min_samples` completions in the window) is above `max_latency`;
- the lanes cannot keep up: traffic arrives at `min_throughput_rps` or more
  but fewer requests than that complete per second. (A floor on throughput
  alone would fire whenever traffic is simply light.)
Otherwise no opinion. It never proposes a move *onto* the lane that is
failing: when the slow (or lagging) lane is one `realtime_mode` would give
more traffic, sending traffic there would make things worse, so it has no
opinion. Used alone, or as a guard in a composite that vetoes a move to
batch while latency is out of bounds. Defaults from the cost guide: 100 ms,
50 req/s, held 120 s.
"""

from __future__ import annotations

from collections.abc import Mapping

from pydantic import Field

from policies.control.protocol import BasePolicy, ModeName, PolicyParams, Proposal
from policies.control.snapshot import Snapshot
from policies.units import Duration


class LatencyParams(PolicyParams):
    max_latency_s: Duration = Field(
        0.1, alias="max_latency", description="p95 latency above which to go back to realtime_mode"
    )
    min_throughput_rps: float = Field(50.0, ge=0, description="completions/s floor, judged when demand reaches it")
    min_samples: int = Field(20, ge=1, description="completions a lane needs in the window to be judged")
    realtime_mode: ModeName = "realtime"
    hold_s: Duration = Field(120.0, alias="hold", description="how long the proposal must persist")


class LatencyPolicy(BasePolicy):
    name = "latency"
    Params = LatencyParams
    params: LatencyParams

    def decide(self, snapshot: Snapshot) -> Proposal | None:
        p = self.params
        judged = [
            figs
            for lane, figs in snapshot.lanes.items()
            if snapshot.weights[lane] > 0 and figs.completions >= p.min_samples and figs.p95_s == figs.p95_s
        ]
        target = snapshot.control.modes.get(p.realtime_mode)
        if judged:
            worst = max(judged, key=lambda f: f.p95_s)
            if worst.p95_s > p.max_latency_s and not _loads(target, snapshot, worst.lane):
                figures = {f"{worst.lane}.p95_s": worst.p95_s, "max_latency_s": p.max_latency_s}
                reason = f"p95 of lane {worst.lane} {worst.p95_s * 1000:.0f} ms > {p.max_latency_s * 1000:.0f} ms"
                return self.propose(p.realtime_mode, reason, figures, p.hold_s)
        demand = snapshot.arrival_rate_per_s
        served = sum(f.throughput_per_s for f in snapshot.lanes.values())
        lagging = [f.lane for f in snapshot.lanes.values() if f.arrival_rate_per_s > f.throughput_per_s]
        if demand >= p.min_throughput_rps > served and not any(_loads(target, snapshot, lane) for lane in lagging):
            figures = {
                "arrival_rate_per_s": demand,
                "throughput_per_s": served,
                "min_throughput_rps": p.min_throughput_rps,
            }
            reason = f"throughput {served:.1f} req/s < {p.min_throughput_rps:g} while {demand:.1f} req/s arrive"
            return self.propose(p.realtime_mode, reason, figures, p.hold_s)
        return None


def _loads(target: Mapping[str, float] | None, snapshot: Snapshot, lane: str) -> bool:
    """`target` weights would give `lane` more traffic than it has now (unknown modes: assume so not)."""
    return target is not None and target[lane] > snapshot.weights[lane]
