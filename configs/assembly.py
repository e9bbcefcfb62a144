"""Building the control core from a validated config.

The router and the simulator both start here, so they run the same lanes,
modes, policy and controller for the same file.
"""

from __future__ import annotations

import random

from configs.schema import ModeshiftConfig
from policies.control.capacity import CapacityPlanner
from policies.control.loop import ControlLoop
from policies.control.monitor import Monitor
from policies.control.objectives import Objectives
from policies.control.switching import SwitchingController
from policies.control.weights import Weights


def mode_weights(config: ModeshiftConfig) -> dict[str, Weights]:
    """Each mode as Weights over every configured lane (absent lanes get 0)."""
    lanes = tuple(config.lanes)
    return {mode: Weights(weights, lanes) for mode, weights in config.modes.items()}


def build_control_loop(config: ModeshiftConfig, *, now_s: float, rng: random.Random) -> ControlLoop:
    monitor = Monitor(
        {lane: lane_config.cost for lane, lane_config in config.lanes.items()},
        now_s=now_s,
        window_s=config.metrics.window_s,
        slot_s=config.metrics.slot_s,
        objectives=Objectives(config.objectives),
    )
    for lane, lane_config in config.lanes.items():
        monitor.replicas[lane] = len(lane_config.upstreams)  # paid per replica (per_replica_hour)
    controller = SwitchingController(mode_weights(config), config.initial_mode, config.switching)
    return ControlLoop(monitor, config.policy.build(rng), controller, capacity_planner(config))


def capacity_planner(config: ModeshiftConfig) -> CapacityPlanner | None:
    """The capacity rule over the lanes with `autoscale:`, starting from their configured upstreams; None when
    no lane has it."""
    autoscaled = {name: lane.autoscale for name, lane in config.lanes.items() if lane.autoscale is not None}
    if not autoscaled:
        return None
    concurrency = {name: config.lanes[name].replica.concurrency for name in autoscaled}
    ready = {name: len(config.lanes[name].upstreams) for name in autoscaled}
    prices = {name: config.lanes[name].cost.per_replica_hour for name in autoscaled}
    return CapacityPlanner(autoscaled, concurrency, ready, prices)
