"""Building blocks for control-core tests: lanes fed with chosen traffic."""

from __future__ import annotations

import random

from policies.control.monitor import Monitor
from policies.control.objectives import ObjectiveParams, Objectives
from policies.control.snapshot import ControlView, Snapshot
from policies.control.switching import SwitchingController
from policies.control.switching_params import SwitchingParams
from policies.control.weights import Weights
from policies.pricing import CostModel

LANES = ("batch", "realtime")
MODES = {
    "realtime": Weights({"realtime": 1.0}, LANES),
    "hybrid": Weights({"realtime": 0.5, "batch": 0.5}, LANES),
    "batch": Weights({"batch": 1.0}, LANES),
}


# The scenarios' promises: switchable traffic within 1 s (the batch lane's 0.2 s
# is well inside), pinned within 0.5 s, 1% errors each.
OBJECTIVES = Objectives(
    {"switchable": ObjectiveParams(latency_s=1.0), "pinned": ObjectiveParams(latency_s=0.5)},
)


def make_monitor(now_s: float = 0.0, window_s: float = 10.0, **costs: CostModel) -> Monitor:
    models = {lane: costs.get(lane, CostModel()) for lane in LANES}
    return Monitor(models, now_s=now_s, window_s=window_s, slot_s=1.0, objectives=OBJECTIVES)


def feed(
    monitor: Monitor,
    lane: str,
    start_s: float,
    end_s: float,
    rate_per_s: float,
    latency_s: float,
    *,
    error_every: int = 0,
    input_tokens: int = 0,
    output_tokens: int = 0,
) -> int:
    """Requests on `lane` evenly spread over [start_s, end_s), each done after latency_s."""
    window = monitor.lanes[lane]
    n = int(round((end_s - start_s) * rate_per_s))
    for i in range(n):
        t = start_s + i / rate_per_s
        window.arrived(t)
        window.completed(
            t,
            latency_s,
            ok=not (error_every and i % error_every == 0),
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            cost_usd=monitor.attributed_cost_usd(lane, input_tokens, output_tokens, latency_s),
        )
    return n


def feed_split(
    monitor: Monitor,
    weights: Weights,
    start_s: float,
    end_s: float,
    rate_per_s: float,
    latency_s: dict[str, float],
    rng: random.Random,
    errors: dict[str, float] | None = None,
) -> list[tuple[str, float, bool]]:
    """Switchable traffic drawn over lanes by `weights`, with per-lane latency and error probability.

    Each request is recorded as the lane sees it and as its client does
    (its outcome); the (lane, latency, ok) of each is returned.
    """
    n = int(round((end_s - start_s) * rate_per_s))
    fed = []
    for i in range(n):
        t = start_s + i / rate_per_s
        lane = weights.draw(rng.random())
        window = monitor.lanes[lane]
        window.arrived(t)
        failed = rng.random() < (errors or {}).get(lane, 0.0)
        latency = latency_s[lane] * (0.9 + 0.2 * rng.random())
        window.completed(t, latency, ok=not failed)
        monitor.served(t, "switchable", lane, latency, not failed)
        fed.append((lane, latency, not failed))
    return fed


def snapshot_at(monitor: Monitor, controller: SwitchingController, now_s: float) -> Snapshot:
    return monitor.snapshot(now_s, controller.view())


def static_view(weights: Weights, mode: str | None = None) -> ControlView:
    return ControlView(state="steady", mode=mode, weights=weights, modes=MODES)


def quick_params(**overrides) -> SwitchingParams:
    base = dict(hold_s=5.0, cooldown_s=20.0, step_s=5.0, min_samples=20, progress_deadline_s=30.0)
    base.update(overrides)
    return SwitchingParams(**base)
