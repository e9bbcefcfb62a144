"""What a reload keeps: lanes, windows and the control loop, unless they changed."""

from configs import ModeshiftConfig
from policies.control.actions import Force
from router.state import build_state, carry_over
from tests.router.helpers import two_lane_config, two_lane_raw

A, B, C = "http://127.0.0.1:9001", "http://127.0.0.1:9002", "http://127.0.0.1:9003"


def test_an_unchanged_control_section_keeps_the_whole_loop():
    old = build_state(two_lane_config([A], [B]), now_s=0.0)
    old.control.command(Force(mode="batch", gradual=True), 1.0)
    new, carried = carry_over(old, two_lane_config([A, C], [B]), now_s=2.0)
    assert new.control is old.control and carried.kept_control
    assert new.control.controller.view().transition is not None  # the transition goes on
    assert carried.kept_lanes == ("batch",) and [lane.name for lane in carried.replaced_lanes] == ["realtime"]
    assert new.lanes["batch"] is old.lanes["batch"]
    assert new.lanes["realtime"].window is old.lanes["realtime"].window


def test_a_changed_policy_mid_transition_restarts_in_the_mode_it_left():
    old = build_state(two_lane_config([A], [B], initial_mode="hybrid"), now_s=0.0)
    old.lanes["batch"].window.arrived(0.5)
    old.control.command(Force(mode="batch", gradual=True), 1.0)
    changed = two_lane_config([A], [B], initial_mode="hybrid", policy={"type": "static", "params": {"mode": "batch"}})
    new, carried = carry_over(old, changed, now_s=2.0)
    assert new.control is not old.control and not carried.kept_control
    assert carried.abandoned_transition == "hybrid -> batch"
    assert new.control.controller.mode == "hybrid"
    assert new.control.weights.as_dict() == {"realtime": 0.5, "batch": 0.5}
    assert new.lanes["batch"].window is old.lanes["batch"].window  # same metrics settings: history kept
    assert new.lanes["batch"] is old.lanes["batch"]


def test_a_mode_that_is_gone_falls_back_to_the_new_initial_mode():
    old = build_state(two_lane_config([A], [B], initial_mode="hybrid"), now_s=0.0)
    raw = two_lane_raw([A], [B], initial_mode="batch")
    del raw["modes"]["hybrid"]
    new, carried = carry_over(old, ModeshiftConfig.model_validate(raw), now_s=1.0)
    assert carried.mode == "batch" and new.control.weights.as_dict() == {"realtime": 0.0, "batch": 1.0}
