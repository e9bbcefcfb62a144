"""`modeshift plan`'s fleets (simulator.plan, simulator.demand) on a small autoscaled config and a rush."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from configs import parse_config
from policies.control.capacity import needed_replicas
from policies.control.objectives import Objectives
from simulator import generators
from simulator.demand import Demand
from simulator.outcome import SloTargets
from simulator.plan import BEST_STATIC, MODESHIFT, ORACLE, PEAK, UTILISATION, plan
from simulator.service import Latency, ServerLane, ServiceModel

CONFIG = """
lanes:
  realtime:
    upstreams: ["http://127.0.0.1:1"]
    max_in_flight: 512
    queue_depth: 4096
    queue_timeout: 60s
    replica: {concurrency: 4}
    autoscale: {min: 1, max: 16, cold_start: 30s, scale_up_hold: 10s, scale_down_hold: 60s, headroom: 0.2}
    cost: {per_replica_hour: 4.0}
  batch:
    upstreams: ["http://127.0.0.1:2"]
    max_in_flight: 512
    queue_depth: 4096
    queue_timeout: 60s
    replica: {concurrency: 32}
    autoscale: {min: 1, max: 8, cold_start: 30s, scale_up_hold: 10s, scale_down_hold: 60s, headroom: 0.1}
    cost: {per_replica_hour: 1.0}
routes:
  - {path: /status, protocol: http, pin: realtime}
  - {path: /, protocol: http}
objectives:
  pinned: {latency: 2s, percentile: 99}
  switchable: {latency: 20s, percentile: 99}
modes:
  realtime: {realtime: 1.0}
  batch: {batch: 1.0}
initial_mode: realtime
policy: {type: fleet}
switching: {tick: 1s, hold: 0s, cooldown: 0s, step: 2s, min_samples: 5, steps: [0.5, 1.0]}
metrics: {window: 20s}
"""
SERVICE = ServiceModel(
    lanes={
        "realtime": ServerLane(concurrency=4, latency=Latency(base_s=0.1)),
        "batch": ServerLane(concurrency=32, latency=Latency(base_s=0.4)),
    }
)
SLO = SloTargets(pinned_s=2.0, switchable_s=20.0, attainment=0.99)


def rush():
    """Ten minutes: 20 req/s, then 120 req/s for three minutes, then 20 again; a tenth pinned by route."""
    trace = generators.step([(0.0, 20.0), (180.0, 120.0), (360.0, 20.0)], 600.0, np.random.default_rng(5))
    return [r if i % 10 else replace(r, route="/status") for i, r in enumerate(trace)]


def test_the_plan_prices_five_fleets_and_modeshift_sits_between_static_peak_and_the_oracle():
    config = parse_config(CONFIG)
    result = plan(config, SERVICE, rush(), SLO, window_s=30.0)
    fleets = {f.label: f for f in result.fleets}
    assert list(fleets) == [PEAK, BEST_STATIC, UTILISATION, MODESHIFT, ORACLE]
    peak, ours, oracle = fleets[PEAK], fleets[MODESHIFT], fleets[ORACLE]
    assert peak.keeps(SLO) and set(peak.replica_hours) == {"realtime"}
    assert peak.replicas["realtime"][0] == peak.replicas["realtime"][1] >= 4  # 120/s x 0.1 s: 12 busy, 3.2 a replica
    assert fleets[UTILISATION].replicas["realtime"][1] > fleets[UTILISATION].replicas["realtime"][0]  # it scaled
    assert ours.keeps(SLO)
    assert oracle.cost_usd <= ours.cost_usd < 0.5 * peak.cost_usd
    assert result.saving(ours) == pytest.approx(1 - ours.cost_usd / peak.cost_usd)
    hours = sum(ours.replica_hours[lane] * config.lanes[lane].cost.per_replica_hour for lane in ours.replica_hours)
    assert ours.cost_usd == pytest.approx(hours)  # all of it replicas paid by the hour
    record = result.as_record(SLO)
    assert [f["label"] for f in record["fleets"]] == list(fleets) and record["fleets"][4]["keeps_objectives"] is None


def test_demand_counts_route_pins_and_sizes_each_window_as_the_capacity_rule_does():
    config = parse_config(CONFIG)
    trace = rush()
    demand = Demand.of(config, SERVICE, trace, 60.0)
    assert demand.windows == 10
    pinned = sum(1 for r in trace if r.route == "/status" and r.t_s < 60) / 60
    assert demand.pinned_per_s["realtime"][0] == pytest.approx(pinned)
    assert demand.pinned_per_s["batch"].sum() == 0
    needs = demand.needs(config, {"realtime": 1.0}, ["realtime"])["realtime"]
    objectives = Objectives(config.objectives)
    w = 4  # inside the rush
    rate = demand.pinned_per_s["realtime"][w] + demand.switchable_per_s[w]
    classes = [objectives["pinned"], objectives["switchable"]]
    expected = needed_replicas(rate, 0.1, 1.0, 4, classes, 0.2, 16)  # the same rule the router runs
    assert needs[w] == expected and needs[0] < needs[w]
    assert demand.needs(config, {"batch": 1.0}, ["realtime"])["realtime"].max() <= 1  # pinned only: the floor


def test_a_lane_the_modes_use_must_be_autoscaled_and_priced_per_replica():
    batch_autoscale = (
        "    autoscale: {min: 1, max: 8, cold_start: 30s, scale_up_hold: 10s, scale_down_hold: 60s, headroom: 0.1}\n"
    )
    assert batch_autoscale in CONFIG
    with pytest.raises(ValueError, match="lane 'batch'.*autoscale"):
        plan(parse_config(CONFIG.replace(batch_autoscale, "")), SERVICE, rush(), SLO)
