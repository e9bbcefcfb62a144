"""`modeshift plan`'s fleets: what each way of provisioning the lanes costs on a trace, and what it keeps.

Every lane the config's modes use must have `autoscale:` and a
`per_replica_hour`: the plan is about replicas paid by the hour. Five
fleets, each simulated on the same trace with the same seed except the
oracle, a bound worked out window by window:

- **static peak**: the real-time lane (the lane the initial mode weighs
  most) alone, everything on it, with the replicas the trace's busiest
  window needs (simulator.demand: the capacity rule's answer), held all
  along; one more at a time while the simulation misses an objective;
- **static, best split**: for each configured mode, the lanes it uses, each
  with the replicas its busiest window needs under that split, held all
  along (raised the same way); the cheapest that keeps the objectives;
- **utilisation autoscaling**: the real-time lane alone, everything on it,
  autoscaled as a utilisation HPA does (replicas for the load at 70% busy,
  60 s up, 300 s down, the config's cold start and bounds), no switching;
- **modeshift**: the config as it is (its policy, `fleet` in the shipped
  configs, deciding split and replicas together; the lanes' own holds and
  cold starts);
- **oracle**: in each window, the cheapest split and fleet the capacity
  rule says keeps the objectives for that window's traffic, known in
  advance, with no cold start and no damping (not simulated: a bound).

The autoscaled runs start each lane with what the first window needs. What
must not live here: the event loop (simulator.engine), printing and files
(simulator.plan_command).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from configs.schema import ModeshiftConfig
from simulator.demand import Demand
from simulator.engine import Engine
from simulator.outcome import Outcome, SloTargets, summarize
from simulator.service import ServerLane, ServiceModel
from simulator.traces import TraceRequest

PEAK = "static peak"
BEST_STATIC = "static, best split"
UTILISATION = "utilisation autoscaling"
MODESHIFT = "modeshift"
ORACLE = "oracle"
HPA_HEADROOM = 0.3  # an HPA on a 70% utilisation target
HPA_UP_S, HPA_DOWN_S = 60.0, 300.0
RAISES = 6  # a static fleet is raised this many times at most while it misses an objective


@dataclass(frozen=True)
class Fleet:
    label: str
    how: str  # what was held or asked for, in words
    replica_hours: Mapping[str, float]
    cost_usd: float
    attainment: Mapping[str, float]  # "pinned", "switchable": the share that met its target; NaN: none, or a bound
    replicas: Mapping[str, tuple[int, int]]  # each lane's fewest and most replicas paid over the run
    outcome: Outcome | None = field(default=None, repr=False)

    def keeps(self, slo: SloTargets) -> bool:
        return all(math.isnan(a) or a >= slo.attainment for a in self.attainment.values())


@dataclass(frozen=True)
class Plan:
    fleets: list[Fleet]
    duration_s: float
    window_s: float

    def saving(self, fleet: Fleet) -> float:
        """The share `fleet` costs less than static peak."""
        base = self.fleets[0].cost_usd
        return 1.0 - fleet.cost_usd / base if base > 0 else math.nan

    def as_record(self, slo: SloTargets) -> dict[str, Any]:
        return {
            "duration_s": self.duration_s,
            "window_s": self.window_s,
            "attainment_target": slo.attainment,
            "fleets": [
                {
                    "label": f.label,
                    "how": f.how,
                    "cost_usd": f.cost_usd,
                    "saving": self.saving(f),
                    "replica_hours": dict(f.replica_hours),
                    "replicas": {lane: {"min": lo, "max": hi} for lane, (lo, hi) in f.replicas.items()},
                    "attainment": {k: (None if math.isnan(v) else v) for k, v in f.attainment.items()},
                    "keeps_objectives": f.keeps(slo) if f.label != ORACLE else None,
                }
                for f in self.fleets
            ],
        }


def plan(
    config: ModeshiftConfig,
    service: ServiceModel,
    trace: Sequence[TraceRequest],
    slo: SloTargets,
    *,
    seed: int = 0,
    window_s: float = 60.0,
    progress: Callable[[str], None] | None = None,
) -> Plan:
    lanes = _planned_lanes(config, service)
    demand = Demand.of(config, service, trace, window_s)
    main = max(config.modes[config.initial_mode].items(), key=lambda kv: kv[1])[0]
    solo = next((m for m, w in config.modes.items() if w.get(main, 0.0) >= 1.0), None)
    if solo is None:
        raise ValueError(f"no mode sends everything to {main!r}: static peak needs one (e.g. {main}: {{{main}: 1.0}})")
    runner = _Runner(config, service, trace, slo, seed, progress)
    fleets = [runner.static(PEAK, solo, [main], demand)]
    statics = [
        runner.static(f"{BEST_STATIC} ({mode})", mode, _used(config, mode, demand), demand) for mode in config.modes
    ]
    best = min(statics, key=lambda f: (not f.keeps(slo), f.cost_usd))
    fleets.append(
        Fleet(BEST_STATIC, best.how, best.replica_hours, best.cost_usd, best.attainment, best.replicas, best.outcome)
    )
    fleets.append(runner.utilisation(solo, main, demand))
    fleets.append(runner.modeshift(lanes, demand))
    fleets.append(oracle(config, demand, lanes, trace[-1].t_s))
    return Plan(fleets, trace[-1].t_s, window_s)


def cheapest(config: ModeshiftConfig, demand: Demand, lanes: Sequence[str]) -> list[tuple[str, dict[str, int]]]:
    """Per window, the mode whose fleet (by the capacity rule, for that window's traffic) costs least, and
    that fleet's replicas by lane."""
    prices = {lane: config.lanes[lane].cost.per_replica_hour for lane in lanes}
    by_mode = {mode: demand.needs(config, weights, lanes) for mode, weights in config.modes.items()}
    cost = {mode: np.sum([needs[lane] * prices[lane] for lane in lanes], axis=0) for mode, needs in by_mode.items()}
    out = []
    for w in range(demand.windows):
        mode = min(by_mode, key=lambda m: (cost[m][w], m))
        out.append((mode, {lane: int(by_mode[mode][lane][w]) for lane in lanes}))
    return out


def oracle(config: ModeshiftConfig, demand: Demand, lanes: Sequence[str], duration_s: float) -> Fleet:
    """Each window's cheapest fleet, that window's traffic known in advance, no cold start (a bound)."""
    chosen = cheapest(config, demand, lanes)
    spans = np.minimum(demand.window_s, duration_s - np.arange(demand.windows) * demand.window_s).clip(0)
    paid = {lane: np.asarray([fleet[lane] for _, fleet in chosen]) for lane in lanes}
    hours = {lane: float((paid[lane] * spans).sum() / 3600.0) for lane in lanes}
    modes = [mode for mode, _ in chosen]
    counted = ", ".join(f"{m} {modes.count(m)}" for m in config.modes if m in modes)
    return Fleet(
        ORACLE,
        f"per {demand.window_s:g} s window, the cheapest split and its replicas (windows: {counted})",
        hours,
        sum(hours[lane] * config.lanes[lane].cost.per_replica_hour for lane in lanes),
        {"pinned": math.nan, "switchable": math.nan},
        {lane: (int(paid[lane].min()), int(paid[lane].max())) for lane in lanes},
    )


class _Runner:
    """Config variants run through the engine, each summed up as a Fleet."""

    def __init__(
        self,
        config: ModeshiftConfig,
        service: ServiceModel,
        trace: Sequence[TraceRequest],
        slo: SloTargets,
        seed: int,
        progress: Callable[[str], None] | None,
    ):
        self.config, self.service, self.trace, self.slo, self.seed = config, service, trace, slo, seed
        self.progress = progress

    def static(self, label: str, mode: str, lanes: Sequence[str], demand: Demand) -> Fleet:
        weights = self.config.modes[mode]
        held = {lane: int(demand.needs(self.config, weights, [lane])[lane].max()) for lane in lanes}
        variant = _variant(self.config, mode, lanes, autoscale=None)
        fleet = self._run(label, variant, held)
        for _ in range(RAISES):
            if fleet.keeps(self.slo):
                break
            held = {lane: n + max(1, n // 10) for lane, n in held.items()}
            fleet = self._run(label, variant, held)
        return fleet

    def utilisation(self, mode: str, lane: str, demand: Demand) -> Fleet:
        hpa = {
            "headroom": HPA_HEADROOM,
            "scale_up_hold": HPA_UP_S,
            "scale_down_hold": HPA_DOWN_S,
            "target": "utilisation",
        }
        variant = _variant(self.config, mode, [lane], autoscale={lane: hpa})
        start = {lane: int(demand.needs(self.config, self.config.modes[mode], [lane])[lane][0])}
        return self._run(UTILISATION, variant, start)

    def modeshift(self, lanes: Sequence[str], demand: Demand) -> Fleet:
        """The config as it is, started in the cheapest split for the first window with its replicas (as a
        router that ran before the trace began would be)."""
        mode, fleet = cheapest(self.config, demand, lanes)[0]
        return self._run(MODESHIFT, self.config.model_copy(update={"initial_mode": mode}), fleet)

    def _run(self, label: str, config: ModeshiftConfig, replicas: Mapping[str, int]) -> Fleet:
        if self.progress is not None:
            self.progress(f"{label}: {', '.join(f'{lane} {n}' for lane, n in replicas.items())}")
        lanes = {}
        for name, model in self.service.lanes.items():
            if name in config.lanes:
                lanes[name] = model.model_copy(update={"replicas": max(1, replicas.get(name, 1))})
        service = self.service.model_copy(update={"lanes": lanes})
        outcome = Engine(config, service, seed=self.seed).run(self.trace)
        total = summarize(outcome, self.slo, label).total
        k = {lane: i for i, lane in enumerate(outcome.lanes)}
        paid = {lane: [row.replicas[k[lane]] for row in outcome.timeline] or [replicas[lane]] for lane in replicas}
        autoscaled = [lane for lane in replicas if config.lanes[lane].autoscale is not None]
        how = ", ".join(
            f"{lane} {min(paid[lane])}-{max(paid[lane])}" if lane in autoscaled else f"{lane} {replicas[lane]} held"
            for lane in replicas
        )
        return Fleet(
            label,
            how,
            {lane: outcome.replica_hours.get(lane, 0.0) for lane in replicas},
            total.cost_usd,
            {"pinned": total.slo_pinned, "switchable": total.slo_switchable},
            {lane: (min(paid[lane]), max(paid[lane])) for lane in replicas},
            outcome,
        )


def _planned_lanes(config: ModeshiftConfig, service: ServiceModel) -> list[str]:
    """The lanes the modes use; each must be autoscaled, priced per replica and a server in the model."""
    used = [lane for lane in config.lanes if any(w.get(lane, 0.0) > 0 for w in config.modes.values())]
    for lane in used:
        lane_config = config.lanes[lane]
        if lane_config.autoscale is None or lane_config.cost.per_replica_hour <= 0:
            raise ValueError(
                f"lane {lane!r}: a plan sizes lanes paid by the replica; give it autoscale: and cost.per_replica_hour"
            )
        if not isinstance(service.lanes.get(lane), ServerLane):
            raise ValueError(f"lane {lane!r}: the service model must give it kind: server (replicas to size)")
    return used


def _used(config: ModeshiftConfig, mode: str, demand: Demand) -> list[str]:
    """The lanes a static run in `mode` sends anything to: a share of the switchable traffic, or pinned traffic."""
    weights = config.modes[mode]
    return [lane for lane in config.lanes if weights.get(lane, 0.0) > 0 or demand.pinned_per_s[lane].any()]


def _variant(
    config: ModeshiftConfig, mode: str, lanes: Sequence[str], autoscale: Mapping[str, Mapping[str, Any]] | None
) -> ModeshiftConfig:
    """`config` with only `lanes`, held in `mode` by the static policy; each lane autoscaled with its own
    bounds and cold start overridden by `autoscale[lane]`, or not autoscaled when `autoscale` is None."""
    data = config.model_dump(by_alias=True, exclude_none=True)
    kept = set(lanes)
    data["lanes"] = {name: lane for name, lane in data["lanes"].items() if name in kept}
    for name, lane in data["lanes"].items():
        if autoscale is None:
            lane.pop("autoscale", None)
        else:
            lane["autoscale"] = {**lane["autoscale"], **autoscale.get(name, {})}
        lane["spill"] = False
    data["modes"] = {mode: {lane: w for lane, w in data["modes"][mode].items() if lane in kept}}
    data["initial_mode"] = mode
    data["policy"] = {"type": "static", "params": {"mode": mode}}
    for route in data["routes"]:
        if route.get("pin") not in kept:
            route.pop("pin", None)
    if data.get("jobs", {}).get("lane") not in kept:
        data.get("jobs", {}).pop("lane", None)
    return ModeshiftConfig.model_validate(data)
