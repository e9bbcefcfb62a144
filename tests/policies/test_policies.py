import random

import pytest
from pydantic import ValidationError

from policies.control.protocol import Proposal
from policies.control.weights import Weights
from policies.pricing import CostModel
from policies.registry import PolicySpec
from tests.policies.helpers import MODES, feed, make_monitor, static_view


def build(type_name: str, **params):
    return PolicySpec(type=type_name, params=params).build(random.Random(0))


def snapshot(
    rates: dict[str, float],
    latency: dict[str, float] | None = None,
    weights: Weights = MODES["realtime"],
    mode: str | None = "realtime",
    monitor=None,
    until: float = 10.0,
):
    monitor = monitor or make_monitor(window_s=10.0)
    for lane, rate in rates.items():
        feed(monitor, lane, 0.0, until, rate, (latency or {}).get(lane, 0.02), input_tokens=500, output_tokens=100)
    return monitor.snapshot(until, static_view(weights, mode))


@pytest.mark.parametrize(("rate", "expected"), [(5.0, "realtime"), (50.0, None), (150.0, "batch")])
def test_load_thresholds_with_a_dead_band(rate, expected):
    proposal = build("load").decide(snapshot({"realtime": rate}))
    assert (proposal.target_mode if proposal else None) == expected
    if proposal:
        assert "arrival rate" in proposal.reason and proposal.hold_s == 60.0
        assert proposal.figures["arrival_rate_per_s"] == pytest.approx(rate, rel=0.1)


def test_load_params_must_be_ordered():
    with pytest.raises(ValidationError, match="must be below high_rps"):
        PolicySpec(type="load", params={"low_rps": 50, "high_rps": 10})


def test_cost_moves_to_batch_above_threshold_and_back_below_the_hysteresis_band():
    costs = dict(realtime=CostModel(per_1k_input_tokens=0.002), batch=CostModel(per_1k_input_tokens=0.001))
    policy = build("cost", threshold_usd=0.0008, hysteresis=0.2)
    # 500 input tokens at $0.002/1k = $0.001 > $0.0008
    high = policy.decide(snapshot({"realtime": 10.0}, monitor=make_monitor(**costs)))
    assert high.target_mode == "batch" and high.hold_s == 300.0
    # judged on the real-time lane's estimate even while the batch lane serves everything
    in_batch = policy.decide(
        snapshot({"batch": 10.0}, weights=MODES["batch"], mode="batch", monitor=make_monitor(**costs))
    )
    assert in_batch.target_mode == "batch"
    cheap = build("cost", threshold_usd=0.002).decide(snapshot({"realtime": 10.0}, monitor=make_monitor(**costs)))
    assert cheap.target_mode == "realtime"
    band = build("cost", threshold_usd=0.0011, hysteresis=0.2).decide(
        snapshot({"realtime": 10.0}, monitor=make_monitor(**costs))
    )
    assert band is None  # $0.001 is inside (0.00088, 0.0011]


def test_latency_guard_on_p95_of_lanes_in_use():
    policy = build("latency", max_latency="100ms", min_throughput_rps=1000)
    slow = snapshot({"realtime": 5.0, "batch": 5.0}, {"batch": 0.3}, weights=MODES["hybrid"], mode="hybrid")
    proposal = policy.decide(slow)
    assert proposal.target_mode == "realtime"
    assert proposal.reason.startswith("p95 of lane batch") and proposal.reason.endswith("ms > 100 ms")
    assert proposal.figures["batch.p95_s"] == pytest.approx(0.3, rel=0.01)
    # a slow lane that no longer carries auto traffic is not judged
    assert policy.decide(snapshot({"realtime": 5.0, "batch": 5.0}, {"batch": 0.3})) is None


def test_latency_guard_never_proposes_the_lane_that_is_itself_slow():
    policy = build("latency", max_latency="100ms", min_throughput_rps=1000)
    drowning = snapshot({"realtime": 5.0, "batch": 5.0}, {"realtime": 0.3}, weights=MODES["hybrid"], mode="hybrid")
    assert policy.decide(drowning) is None  # more traffic on realtime would make it worse
    monitor = make_monitor()
    lagging = monitor.lanes["realtime"]
    for i in range(600):  # 60 req/s arrive on realtime, a third complete
        lagging.arrived(i / 60)
        if i % 3 == 0:
            lagging.completed(i / 60, 0.05)
    assert (
        build("latency", max_latency="1s", min_throughput_rps=50).decide(
            monitor.snapshot(10.0, static_view(MODES["hybrid"], "hybrid"))
        )
        is None
    )


def test_latency_guard_on_throughput_only_when_demand_reaches_the_floor():
    policy = build("latency", max_latency="1s", min_throughput_rps=50)
    light = snapshot({"realtime": 10.0})
    assert policy.decide(light) is None
    monitor = make_monitor()
    lagging = monitor.lanes["batch"]
    for i in range(600):  # 60 req/s arrive, a third complete
        lagging.arrived(i / 60)
        if i % 3 == 0:
            lagging.completed(i / 60, 0.05)
    proposal = policy.decide(monitor.snapshot(10.0, static_view(MODES["batch"], "batch")))
    assert proposal.target_mode == "realtime" and "throughput" in proposal.reason


@pytest.mark.parametrize(
    ("rate", "requirement", "sensitivity", "expected"),
    [
        (5.0, "100ms", "medium", "realtime"),
        (500.0, "100ms", "medium", "hybrid"),
        (5000.0, "5s", "high", "batch"),
        (5000.0, "5ms", "low", "realtime"),
    ],
)
def test_adaptive_scores(rate, requirement, sensitivity, expected):
    policy = build("adaptive", latency_requirement=requirement, cost_sensitivity=sensitivity)
    proposal = policy.decide(snapshot({"realtime": rate}, until=2.0))
    assert proposal.target_mode == expected
    for kind in ("realtime", "hybrid", "batch"):
        assert f"{kind} {int(proposal.figures['score.' + kind])}" in proposal.reason


def test_adaptive_ties_keep_the_current_mode_then_prefer_realtime():
    policy = build("adaptive", latency_requirement="100ms", cost_sensitivity="medium")
    assert policy.scores(50.0) == {"realtime": 3, "hybrid": 3, "batch": 0}
    assert policy.decide(snapshot({"realtime": 50.0}, mode="hybrid", weights=MODES["hybrid"])).target_mode == "hybrid"
    assert policy.decide(snapshot({"realtime": 50.0}, mode="realtime")).target_mode == "realtime"
    assert policy.decide(snapshot({"realtime": 50.0}, mode=None)).target_mode == "realtime"


def test_adaptive_without_hybrid():
    policy = build("adaptive", hybrid_mode=None, latency_requirement="100ms")
    assert policy.decide(snapshot({"realtime": 500.0})).target_mode == "realtime"
    assert "hybrid" not in policy.decide(snapshot({"realtime": 500.0})).reason


def test_static_always_proposes_its_mode():
    proposal = build("static", mode="batch").decide(snapshot({"realtime": 1.0}))
    assert proposal.target_mode == "batch" and proposal.hold_s is None


def test_composite_first_opinion_wins_and_a_guard_vetoes():
    composite = build(
        "composite",
        policies=[
            {"type": "load", "params": {"low_rps": 1, "high_rps": 5}},
            {"type": "static", "params": {"mode": "hybrid"}},
        ],
        guards=[{"type": "latency", "params": {"max_latency": "100ms", "min_throughput_rps": 1000}}],
    )
    busy_fast = snapshot({"realtime": 10.0, "batch": 10.0}, {"batch": 0.05}, weights=MODES["hybrid"], mode="hybrid")
    assert composite.decide(busy_fast).target_mode == "batch"
    busy_slow = snapshot({"realtime": 10.0, "batch": 10.0}, {"batch": 0.5}, weights=MODES["hybrid"], mode="hybrid")
    vetoed = composite.decide(busy_slow)
    assert vetoed.target_mode == "realtime"
    assert vetoed.reason.startswith("latency guard vetoed load -> batch")
    # in the dead band the load policy has no opinion, so the next one speaks
    middle = snapshot({"realtime": 3.0}, mode="realtime")
    assert composite.decide(middle).target_mode == "hybrid"


def test_composite_references_reach_nested_params():
    spec = PolicySpec(type="composite", params={"policies": [{"type": "load", "params": {"high_mode": "bulk"}}]})
    refs = {(path, name) for path, kind, name in spec.params.references() if kind == "mode"}
    assert (("policies", 0, "params", "high_mode"), "bulk") in refs


def test_proposal_record_is_plain_data():
    record = Proposal("batch", "why", "load", {"x": 1.0}, 5.0).as_record()
    assert record == {"target_mode": "batch", "reason": "why", "policy": "load", "figures": {"x": 1.0}, "hold_s": 5.0}
