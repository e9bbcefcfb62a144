"""The `fleet` policy (policies.builtin.fleet): the cheapest fleet that keeps the objectives is planned, and while the
replicas it needs start, the stream rides on what answers now."""

from __future__ import annotations

from dataclasses import replace

from policies.builtin.fleet import FleetParams, FleetPolicy
from policies.control.snapshot import ControlView, ReplicasView, Snapshot
from policies.pricing import CostModel
from tests.policies.helpers import MODES, make_monitor


def realtime(ready: int, service_s: float = 0.1, **more: float) -> ReplicasView:
    return ReplicasView(
        desired=ready,
        ready=ready,
        concurrency=4,
        service_s=service_s,
        least=1,
        most=20,
        headroom=0.2,
        per_replica_hour=4.0,
        **more,
    )


def snapshot(mode: str, rate_per_s: float, pinned_per_s: float = 0.0, **costs: CostModel) -> Snapshot:
    """`rate_per_s` of switchable traffic on realtime (0.1 s each) plus `pinned_per_s` pinned there."""
    monitor = make_monitor(window_s=10.0, **costs)
    window = monitor.lanes["realtime"]
    for i in range(int(rate_per_s * 10)):
        window.arrived(i / rate_per_s)
        window.completed(i / rate_per_s, 0.1, busy_s=0.1)
    for i in range(int(pinned_per_s * 10)):
        window.arrived(i / pinned_per_s, pinned=True)
        monitor.served(i / pinned_per_s, "pinned", "realtime", 0.1, True)
    for i in range(int(rate_per_s * 10)):
        monitor.served(i / rate_per_s, "switchable", "realtime", 0.1, True)
    view = ControlView(state="steady", mode=mode, weights=MODES[mode], modes=MODES)
    return monitor.snapshot(10.0, view)


# The batch lane bills busy seconds at $36/h: 40 req/s x 0.1 s there is $144/h, far more than realtime's replicas.
DEAR_BATCH = CostModel(per_hour=36.0, billing="busy")


def test_a_rush_rides_on_the_lane_with_room_while_the_planned_replicas_start_and_comes_back_when_they_answer():
    policy = FleetPolicy(FleetParams())
    rush = snapshot("realtime", 40.0, batch=DEAR_BATCH)  # 4 busy servers at 80%: 2 replicas of 4
    one_ready = replace(rush, replicas={"realtime": realtime(ready=1)})
    proposal = policy.decide(one_ready)
    assert proposal is not None and proposal.target_mode == "hybrid"  # half of it fits on one replica
    assert policy.planned_weights() == MODES["realtime"]  # and the capacity rule sizes for all of it on realtime
    assert "until it is up" in proposal.reason
    two_ready = replace(rush, replicas={"realtime": realtime(ready=2)})
    proposal = policy.decide(two_ready)
    assert proposal is not None and proposal.target_mode == "realtime"


def test_where_the_cheaper_lane_keeps_the_objectives_the_plan_leaves_realtime_what_pinned_traffic_needs():
    """A cheap autoscaled batch lane (many calls per replica, a third of the price): the switchable traffic is
    planned there and realtime only keeps its pinned traffic's replica."""
    policy = FleetPolicy(FleetParams())
    calm = snapshot("realtime", 40.0, pinned_per_s=5.0)
    batch = ReplicasView(
        desired=1, ready=1, concurrency=64, service_s=0.3, least=1, most=20, headroom=0.1, per_replica_hour=1.2
    )
    proposal = policy.decide(replace(calm, replicas={"realtime": realtime(ready=3), "batch": batch}))
    assert proposal is not None and proposal.target_mode == "batch"
    assert policy.planned_weights() == MODES["batch"]
    assert proposal.figures["batch.usd_per_hour"] < proposal.figures["realtime.usd_per_hour"]


def test_a_batch_lane_never_measured_is_planned_with_the_slowest_service_time_measured():
    policy = FleetPolicy(FleetParams())
    calm = snapshot("realtime", 40.0)
    unmeasured = ReplicasView(desired=1, ready=1, concurrency=64, least=1, most=20, per_replica_hour=1.2)
    proposal = policy.decide(replace(calm, replicas={"realtime": realtime(ready=2), "batch": unmeasured}))
    assert proposal is not None and proposal.target_mode == "batch"  # tried; the controller's rollback judges it


def test_the_mode_in_force_stays_planned_within_the_margin():
    """At 40 req/s realtime needs 2 replicas ($8/h) and hybrid 1 plus $72/h of batch; with batch's busy price
    down to $0.5/h, hybrid costs $5/h: cheaper than realtime by more than 10%, so it is planned, unless the
    margin is wider than the saving."""
    cheap = CostModel(per_hour=0.5, billing="busy")
    rush = replace(snapshot("realtime", 40.0, batch=cheap), replicas={"realtime": realtime(ready=2)})
    assert FleetPolicy(FleetParams()).decide(rush).target_mode in ("hybrid", "batch")
    assert FleetPolicy(FleetParams(margin=0.9)).decide(rush).target_mode == "realtime"


def test_no_autoscaled_lane_no_opinion():
    assert FleetPolicy(FleetParams()).decide(snapshot("realtime", 40.0)) is None


def test_a_fleet_policy_inside_a_composite_plans_every_tick_whoever_has_the_first_opinion():
    """A composite whose first member always has an opinion (static) still asks its fleet member, and the
    capacity rule reads the fleet's plan through the composite."""
    from policies.builtin.composite import CompositeParams, CompositePolicy
    from policies.registry import PolicySpec

    static = PolicySpec.model_validate({"type": "static", "params": {"mode": "realtime"}})
    fleet = PolicySpec.model_validate({"type": "fleet"})
    composite = CompositePolicy(CompositeParams(policies=(static, fleet)))
    calm = snapshot("realtime", 40.0, pinned_per_s=5.0)
    batch = ReplicasView(
        desired=1, ready=1, concurrency=64, service_s=0.3, least=1, most=20, headroom=0.1, per_replica_hour=1.2
    )
    proposal = composite.decide(replace(calm, replicas={"realtime": realtime(ready=3), "batch": batch}))
    assert proposal is not None and proposal.target_mode == "realtime"  # the static member's opinion came first
    assert composite.planned_weights() == MODES["batch"]  # and the fleet member planned all the same
    alone = CompositePolicy(CompositeParams(policies=(static,)))
    alone.decide(calm)
    assert alone.planned_weights() is None  # no member plans the fleet: the rule sizes for what lanes take
