"""`adaptive`: score real-time, hybrid and batch, and propose the best.

The cost guide's selector, made explicit. Three signals each give points to
the modes they favour:

| signal | real-time | hybrid | batch |
| --- | --- | --- | --- |
| request volume < 10 req/s | 2 | | |
| volume 10 to 100 req/s | 1 | 1 | |
| volume 100 to 1000 req/s | | 1 | 1 |
| volume >= 1000 req/s | | | 2 |
| latency requirement <= 10 ms | 3 | | |
| requirement <= 100 ms | 2 | | |
| requirement <= 1 s | | 1 | 1 |
| requirement > 1 s | | | 2 |
| cost sensitivity low / medium / high | 2 | 2 | 2 (one of them) |

The volume thresholds and the latency bands are parameters (defaults
10 / 100 / 1000 req/s and 10 / 100 / 1000 ms). Ties go to the mode in force
(no change without a reason), then to real-time, hybrid, batch in that order
(the choice that risks latency least). With `hybrid_mode: null` only
real-time and batch compete. The reason lists every score.
"""

from __future__ import annotations

import math
from typing import Literal

from pydantic import Field, model_validator

from policies.control.protocol import BasePolicy, ModeName, OptionalModeName, PolicyParams, Proposal
from policies.control.snapshot import Snapshot
from policies.units import Duration

_REALTIME, _HYBRID, _BATCH = "realtime", "hybrid", "batch"


class AdaptiveParams(PolicyParams):
    volume_rps: tuple[float, float, float] = Field(
        (10.0, 100.0, 1000.0), description="low / medium / high request volume thresholds"
    )
    latency_requirement_s: Duration = Field(
        0.1, alias="latency_requirement", description="the latency the traffic needs"
    )
    latency_bands_s: tuple[Duration, Duration, Duration] = Field(
        (0.01, 0.1, 1.0), alias="latency_bands", description="strict / interactive / relaxed latency bands"
    )
    cost_sensitivity: Literal["low", "medium", "high"] = "medium"
    realtime_mode: ModeName = "realtime"
    hybrid_mode: OptionalModeName = "hybrid"
    batch_mode: ModeName = "batch"
    hold_s: Duration | None = Field(
        None, alias="hold", description="how long the proposal must persist (default: switching.hold)"
    )

    @model_validator(mode="after")
    def _increasing(self) -> AdaptiveParams:
        for name in ("volume_rps", "latency_bands_s"):
            a, b, c = getattr(self, name)
            if not a < b < c:
                raise ValueError(f"{name} must increase, got {[a, b, c]}")
        return self


class AdaptivePolicy(BasePolicy):
    name = "adaptive"
    Params = AdaptiveParams
    params: AdaptiveParams

    def decide(self, snapshot: Snapshot) -> Proposal | None:
        volume = snapshot.arrival_rate_per_s
        if math.isnan(volume):
            return None
        scores = self.scores(volume)
        p = self.params
        modes = {_REALTIME: p.realtime_mode, _HYBRID: p.hybrid_mode, _BATCH: p.batch_mode}
        candidates = [kind for kind in (_REALTIME, _HYBRID, _BATCH) if modes[kind] is not None]
        best_score = max(scores[kind] for kind in candidates)
        tied = [kind for kind in candidates if scores[kind] == best_score]
        current = [kind for kind in tied if modes[kind] == snapshot.mode]
        best = current[0] if current else tied[0]
        target = modes[best]
        assert target is not None  # candidates have a mode
        listed = ", ".join(f"{kind} {scores[kind]}" for kind in candidates)
        reason = (
            f"scores {listed} (volume {volume:.1f} req/s, latency requirement "
            f"{p.latency_requirement_s * 1000:g} ms, cost sensitivity {p.cost_sensitivity})"
        )
        figures = {"arrival_rate_per_s": volume, **{f"score.{kind}": float(scores[kind]) for kind in candidates}}
        return self.propose(target, reason, figures, p.hold_s)

    def scores(self, volume_rps: float) -> dict[str, int]:
        p = self.params
        scores = {_REALTIME: 0, _HYBRID: 0, _BATCH: 0}
        low, medium, high = p.volume_rps
        if volume_rps < low:
            scores[_REALTIME] += 2
        elif volume_rps < medium:
            scores[_REALTIME] += 1
            scores[_HYBRID] += 1
        elif volume_rps < high:
            scores[_HYBRID] += 1
            scores[_BATCH] += 1
        else:
            scores[_BATCH] += 2
        strict, interactive, relaxed = p.latency_bands_s
        need = p.latency_requirement_s
        if need <= strict:
            scores[_REALTIME] += 3
        elif need <= interactive:
            scores[_REALTIME] += 2
        elif need <= relaxed:
            scores[_HYBRID] += 1
            scores[_BATCH] += 1
        else:
            scores[_BATCH] += 2
        scores[{"low": _REALTIME, "medium": _HYBRID, "high": _BATCH}[p.cost_sensitivity]] += 2
        return scores
