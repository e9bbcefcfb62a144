"""A trace's traffic per window, and the replicas each lane would need for it under a split.

`Demand.of` cuts a trace into windows of `window_s` and keeps, per window,
the pinned arrivals of each lane (a request pinned by the trace or by its
route), the switchable arrivals, and the mean time a call of that window
would hold a server on each lane (the service model's latency for the
window's requests, before jitter). `needs` then sizes each autoscaled lane
for a split (a mode's weights) with the capacity rule the router runs
(policies.control.capacity.replicas_for: the classes' objectives, the lane's
headroom and bounds), window by window, knowing each window's traffic
exactly and with no cold start: what a clairvoyant autoscaler would ask
for. `modeshift plan` (simulator.plan) sizes its static fleets and its
oracle from it.

What must not live here: running the simulator (simulator.engine), config
variants (simulator.plan).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np

from configs.routes import RoutesByPrefix
from configs.schema import ModeshiftConfig
from policies.control.capacity import replicas_for
from policies.control.objectives import PINNED, SWITCHABLE, Objectives
from policies.control.snapshot import ReplicasView
from simulator.service import ServerLane, ServiceModel
from simulator.traces import TraceRequest


@dataclass(frozen=True)
class Demand:
    window_s: float
    pinned_per_s: Mapping[str, np.ndarray]  # by lane: pinned arrivals a second, per window
    switchable_per_s: np.ndarray  # per window
    service_s: Mapping[str, np.ndarray]  # by lane: the mean call of the window, served there

    @property
    def windows(self) -> int:
        return len(self.switchable_per_s)

    @classmethod
    def of(
        cls, config: ModeshiftConfig, service: ServiceModel, trace: Sequence[TraceRequest], window_s: float
    ) -> Demand:
        if not trace:
            raise ValueError("the trace has no requests")
        routes = RoutesByPrefix(config.routes)
        count = max(1, math.ceil(trace[-1].t_s / window_s + 1e-9))
        index = np.minimum(np.asarray([r.t_s for r in trace]) // window_s, count - 1).astype(np.int64)
        pins = [r.mode or _route_pin(routes, r.route) for r in trace]
        pinned = {}
        for lane in config.lanes:
            mask = np.asarray([p == lane for p in pins])
            pinned[lane] = np.bincount(index[mask], minlength=count) / window_s
        switchable = np.bincount(index[np.asarray([p is None for p in pins])], minlength=count) / window_s
        arrivals = np.maximum(np.bincount(index, minlength=count), 1)
        served = {}
        for lane, model in service.lanes.items():
            if lane in config.lanes and isinstance(model, ServerLane):
                times = np.asarray([model.latency.mean_s(r.items, r.input_tokens, r.output_tokens) for r in trace])
                mean = np.bincount(index, weights=times, minlength=count) / arrivals
                served[lane] = np.where(np.bincount(index, minlength=count) > 0, mean, float(times.mean()))
        return cls(window_s, pinned, switchable, served)

    def needs(
        self, config: ModeshiftConfig, weights: Mapping[str, float], lanes: Sequence[str]
    ) -> dict[str, np.ndarray]:
        """Per window, the replicas each of `lanes` (autoscaled) needs when the switchable traffic is split by
        `weights`: the capacity rule's answer for that window's traffic, within the lane's bounds."""
        objectives = Objectives(config.objectives)
        out = {}
        for lane in lanes:
            autoscale = config.lanes[lane].autoscale
            if autoscale is None:
                raise ValueError(f"lane {lane!r} has no autoscale: (a plan sizes autoscaled lanes)")
            share = weights.get(lane, 0.0)
            bounds = ReplicasView(
                desired=0,
                ready=0,
                concurrency=config.lanes[lane].replica.concurrency,
                least=autoscale.min,
                most=autoscale.max,
                headroom=autoscale.headroom,
            )
            replicas = np.empty(self.windows, dtype=np.int64)
            for w in range(self.windows):
                pinned = float(self.pinned_per_s[lane][w])
                rate = pinned + share * float(self.switchable_per_s[w])
                classes = [objectives[PINNED]] * (pinned > 0) + [objectives[SWITCHABLE]] * (share > 0)
                view = replace(bounds, service_s=float(self.service_s[lane][w]))
                replicas[w] = replicas_for(view, rate, classes).replicas  # the rule the router runs
            out[lane] = replicas
        return out


def _route_pin(routes: RoutesByPrefix, path: str) -> str | None:
    route = routes.find(path)
    return route.pin if route is not None else None
