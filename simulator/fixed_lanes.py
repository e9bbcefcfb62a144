"""Replay a trace through the control loop with lanes of fixed service time.

The smallest honest simulation: each request is drawn onto a lane by the
weights in force, completes after its lane's fixed service time, and is
recorded with the cost the lane's model attributes; the control loop ticks
every `switching.tick` of virtual time. There is no queueing here, so it
shows what the policy and the controller decide for a traffic shape, not
what latency a real deployment would reach (the discrete-event engine with
fitted service models does that).
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from configs.assembly import build_control_loop
from configs.schema import ModeshiftConfig
from simulator.traces import TraceRequest


@dataclass(frozen=True, slots=True)
class FixedLaneRun:
    decisions: list[dict]
    requests_per_lane: Counter
    cost_usd_per_lane: dict[str, float]
    duration_s: float


def replay(
    config: ModeshiftConfig,
    trace: Iterable[TraceRequest],
    service_s: Mapping[str, float],
    *,
    seed: int = 0,
) -> FixedLaneRun:
    loop = build_control_loop(config, now_s=0.0, rng=random.Random(config.server.seed))
    draw = random.Random(seed)
    tick_s = config.switching.tick_s
    next_tick_s = tick_s
    decisions: list[dict] = []
    served: Counter = Counter()
    cost: dict[str, float] = {lane: 0.0 for lane in config.lanes}
    t = 0.0
    for request in trace:
        t = request.t_s
        while next_tick_s <= t:
            decisions += [action.as_record() for action in loop.tick(next_tick_s)]
            next_tick_s += tick_s
        lane = loop.weights.draw(draw.random())
        latency = service_s[lane]
        usd = loop.monitor.attributed_cost_usd(lane, request.input_tokens, request.output_tokens, busy_s=latency)
        window = loop.monitor.lanes[lane]
        window.arrived(t)
        window.completed(
            t, latency, input_tokens=request.input_tokens, output_tokens=request.output_tokens, cost_usd=usd
        )
        served[lane] += 1
        cost[lane] += usd
    return FixedLaneRun(decisions, served, cost, t)
