"""The simulator scales autoscaled lanes as the router's figure asks: replicas arrive a cold start later, go
when a lull has lasted, and the lane is billed the replicas it had over time."""

from __future__ import annotations

import numpy as np

from configs import parse_config
from simulator import generators
from simulator.engine import Engine
from simulator.lane_scale import LaneScale
from simulator.service import Latency, ServerLane, ServiceModel

CONFIG = """
lanes:
  realtime:
    upstreams: ["http://127.0.0.1:1"]
    max_in_flight: 512
    queue_depth: 4096
    queue_timeout: 60s
    replica: {concurrency: 4}
    autoscale: {min: 1, max: 12, cold_start: 30s, scale_up_hold: 10s, scale_down_hold: 60s, headroom: 0.2}
    cost: {per_replica_hour: 3.6}
  batch:
    upstreams: ["http://127.0.0.1:2"]
    cost: {per_hour: 0.36}
routes:
  - {path: /, protocol: http}
objectives:
  switchable: {latency: 5s, percentile: 99}
modes:
  realtime: {realtime: 1.0}
  batch: {batch: 1.0}
initial_mode: realtime
policy: {type: static, params: {mode: realtime}}
switching: {tick: 1s}
metrics: {window: 20s}
"""
SERVICE = ServiceModel(
    lanes={
        "realtime": ServerLane(replicas=1, concurrency=4, latency=Latency(base_s=0.1)),
        "batch": ServerLane(concurrency=4, latency=Latency(base_s=0.1)),
    }
)


def run():
    # Calm at 20 req/s (half of one replica), a rush at 200 req/s for 3 min, calm again for 5 min.
    trace = generators.step([(0.0, 20.0), (120.0, 200.0), (300.0, 20.0)], 600.0, np.random.default_rng(3))
    return trace, Engine(parse_config(CONFIG), SERVICE, seed=1).run(trace)


def test_a_rush_scales_the_lane_up_after_the_cold_start_and_a_lull_scales_it_down():
    trace, outcome = run()
    wanted = [d for d in outcome.decisions if d["kind"] == "ReplicasWanted"]
    ups = [d for d in wanted if d["replicas"] > d["was"]]
    downs = [d for d in wanted if d["replicas"] < d["was"]]
    assert ups and 120 + 10 <= ups[0]["at_s"] < 160  # the rise had to last the up hold
    assert max(d["replicas"] for d in wanted) >= 7  # 200 req/s x 0.1 s = 20 busy servers at 80%: 7 replicas of 4
    lull = [d for d in downs if d["at_s"] > 300]
    assert lull and lull[0]["at_s"] >= 300 + 60  # down only after the lull lasted the down hold
    assert wanted[-1]["replicas"] <= 2
    # The replicas asked for serve only a cold start later: until then the rush waits or is refused (moving
    # it to another lane meanwhile is the split policy's work); once they answer, nothing is refused.
    arrival, latency, ok = outcome.arrival_s, outcome.latency_s, outcome.status == 200
    early = latency[ok & (arrival >= ups[0]["at_s"]) & (arrival < ups[0]["at_s"] + 20)]
    late = latency[ok & (arrival >= ups[0]["at_s"] + 60) & (arrival < 300)]
    assert np.median(early) > 5 * np.median(late)
    refused = arrival[~ok]
    answered_s = max(u["at_s"] for u in ups if u["at_s"] < 300) + 30  # the last replica asked for in the rush
    assert refused.min() >= 120 and refused.max() < answered_s
    # Billed on the replicas it had over time: more than one replica's worth, far less than the peak all along.
    hours = outcome.replica_hours["realtime"]
    assert outcome.end_s / 3600 < hours < 7 * outcome.end_s / 3600
    assert abs(outcome.idle_cost_usd["realtime"] - 3.6 * hours) < 1e-9


def test_the_same_run_twice_gives_the_same_figures():
    _, first = run()
    _, second = run()
    assert first.decisions == second.decisions and first.replica_hours == second.replica_hours


def test_lane_scale_bills_starting_replicas_and_calls_off_the_newest_start_first():
    scale = LaneScale(ready=1, concurrency=4, cold_start_s=30.0)
    started, removed = scale.want(10.0, 3)
    assert started == [40.0, 40.0] and removed == 0 and scale.paid == 3
    assert scale.want(20.0, 2) == ([], 0)  # one start called off
    assert scale.answered(40.0, 40.0) and not scale.answered(40.0, 40.0)  # the called-off one never answers
    assert (scale.ready, scale.paid) == (2, 2)
    assert scale.want(50.0, 1) == ([], 4)  # a ready replica goes: its 4 servers
    # 0-10 s: 1 replica; 10-20 s: 3; 20-40 s: 2 (one starting); 40-50 s: 2; 50-60 s: 1.
    assert scale.hours(60.0) * 3600 == 10 + 30 + 40 + 20 + 10


FLEET = (
    CONFIG.replace(
        "policy: {type: static, params: {mode: realtime}}\nswitching: {tick: 1s}",
        "policy: {type: fleet}\n"
        "switching: {tick: 1s, hold: 0s, cooldown: 0s, step: 2s, min_samples: 5, steps: [0.5, 1.0]}",
    )
    .replace(
        "modes:\n  realtime: {realtime: 1.0}\n",
        "modes:\n  realtime: {realtime: 1.0}\n  hybrid: {realtime: 0.5, batch: 0.5}\n",
    )
    .replace("cost: {per_hour: 0.36}", "cost: {per_hour: 360, billing: busy}")
)
ROOMY_BATCH = ServiceModel(
    lanes={
        "realtime": ServerLane(replicas=1, concurrency=4, latency=Latency(base_s=0.1)),
        "batch": ServerLane(replicas=4, concurrency=8, latency=Latency(base_s=0.1)),
    }
)


def test_the_fleet_policy_carries_a_rush_on_the_lane_with_room_while_realtime_grows_and_brings_it_back():
    """A rush at ten times what the real-time lane's one replica carries. The batch lane has room but bills
    every busy second dearly, so the cheapest fleet is realtime's, grown. The static policy leaves the stream on
    real-time while its replicas start, where admission moves what it predicts would miss (p95 6 s in the
    rush); `fleet` moves it at once to the lane with room, asks for realtime's replicas meanwhile, and brings
    the stream back as soon as they answer, while the rush still lasts."""
    trace = generators.step([(0.0, 20.0), (120.0, 200.0), (300.0, 20.0)], 600.0, np.random.default_rng(3))
    static = Engine(parse_config(CONFIG), ROOMY_BATCH, seed=1).run(trace)
    fleet = Engine(parse_config(FLEET), ROOMY_BATCH, seed=1).run(trace)
    rush = (fleet.arrival_s >= 150) & (fleet.arrival_s < 200)
    assert np.percentile(fleet.latency_s[rush], 95) < np.percentile(static.latency_s[rush], 95) / 10
    batch = fleet.lanes.index("batch")
    early = (fleet.arrival_s >= 130) & (fleet.arrival_s < 160)
    assert (fleet.lane[early] == batch).mean() > 0.9  # the rush went where there was room
    ups = [d for d in fleet.decisions if d["kind"] == "ReplicasWanted" and d["replicas"] > d["was"]]
    assert ups and ups[0]["at_s"] < 150 and max(d["replicas"] for d in ups) >= 7  # sized for all of it
    back = (fleet.arrival_s >= 240) & (fleet.arrival_s < 300)  # its replicas answer: the rush comes back
    assert (fleet.lane[back] != batch).mean() > 0.9
    assert (fleet.status == 200).all()


def test_the_timeline_counts_the_replicas_paid_and_the_plot_shows_them(tmp_path):
    from simulator.plots import plot_runs

    _, outcome = run()
    k = outcome.lanes.index("realtime")
    paid = [row.replicas[k] for row in outcome.timeline]
    assert min(paid) == 1 and max(paid) >= 7
    costs = [row.cost_usd[k] for row in outcome.timeline]
    assert all(b >= a for a, b in zip(costs, costs[1:]))  # cumulative, on the replica-seconds paid so far
    assert costs[-1] <= outcome.idle_cost_usd["realtime"] + 1e-9
    written = plot_runs({"scaled": outcome}, tmp_path)
    assert (tmp_path / "scaled.png") in written and (tmp_path / "scaled.png").stat().st_size > 10_000


def test_the_tables_show_each_figure_under_its_own_heading():
    from simulator.outcome import SloTargets, summarize
    from simulator.report import comparison_table, lane_table

    _, outcome = run()
    slo = SloTargets(pinned_s=1.0, switchable_s=5.0)
    summary = summarize(outcome, slo, "scaled")
    for table in (comparison_table({"scaled": summary}, slo), lane_table(summary, slo)):
        cells = {str(column.header): list(column.cells) for column in table.columns}
        assert "" not in cells  # no figure without a heading
        hours = f"{outcome.replica_hours['realtime'] + outcome.replica_hours['batch']:,.2f}"
        assert cells["replica-h"][-1] == hours and cells["cost"][-1].startswith("$")
