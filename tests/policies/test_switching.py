import pytest
from pydantic import ValidationError

from policies.control.actions import Force, Pause, Resume, Rollback, RollbackWithheld, RolledBack, SetWeights
from policies.control.switching import State
from policies.control.switching_params import SwitchingParams
from tests.policies.helpers import MODES, quick_params
from tests.policies.scenario import Scenario, kinds


def weight_history(actions):
    return [a.weights for a in actions if isinstance(a, SetWeights)]


def test_a_proposal_must_persist_for_the_hold_before_anything_moves():
    s = Scenario(quick_params(hold_s=5.0))
    assert s.run(5, "batch") == []
    assert s.controller.state is State.HOLDING
    started = s.run(1, "batch")
    assert kinds(started) == ["TransitionStarted", "SetWeights"]
    assert started[1].weights == {"realtime": 0.8, "batch": 0.2}
    assert started[0].cause == "policy" and started[0].reason == "test wants batch"


def test_a_lapsed_proposal_restarts_the_hold_and_is_logged_once():
    s = Scenario(quick_params(hold_s=5.0))
    s.run(3, "batch")
    lapsed = s.run(1, None)
    assert kinds(lapsed) == ["ProposalIgnored"]
    assert "did not persist" in lapsed[0].reason
    assert s.controller.state is State.STEADY
    assert s.run(5, "batch") == []  # the hold starts over


def test_the_proposal_own_hold_overrides_the_default():
    s = Scenario(quick_params(hold_s=60.0))
    assert kinds(s.run(2, "batch", hold_s=1.0))[-2:] == ["TransitionStarted", "SetWeights"]


def test_full_ramp_80_20_to_0_100_then_cooldown():
    s = Scenario(quick_params(hold_s=0.0, step_s=5.0, cooldown_s=20.0))
    actions = s.run(40, "batch")
    assert [w.as_dict() for w in weight_history(actions)] == [
        {"batch": 0.2, "realtime": 0.8},
        {"batch": 0.5, "realtime": 0.5},
        {"batch": 0.8, "realtime": pytest.approx(0.2)},
        {"batch": 1.0, "realtime": 0.0},
    ]
    assert kinds(actions).count("StepAdvanced") == 3
    assert kinds(actions)[-1] == "TransitionCompleted"
    assert s.controller.mode == "batch" and s.controller.weights is MODES["batch"]
    assert s.controller.state is State.COOLDOWN


def test_proposals_during_cooldown_are_ignored_once_then_act_after_it():
    s = Scenario(quick_params(hold_s=0.0, cooldown_s=20.0))
    while "TransitionCompleted" not in kinds(s.run(1, "batch")):
        pass
    done_at = s.now_s
    ignored = s.run(5, "realtime")
    assert kinds(ignored) == ["ProposalIgnored"] and "cooldown" in ignored[0].reason
    after = s.run(int(done_at + 20 - s.now_s) + 1, "realtime")
    assert "TransitionStarted" in kinds(after)


def test_a_class_missing_its_objective_rolls_back_to_the_exact_baseline_at_once():
    s = Scenario(quick_params(hold_s=0.0, step_s=5.0))
    baseline = s.controller.weights
    s.run(12, "batch")  # through the first steps
    s.latency_s["batch"] = 2.0  # past the switchable class's 1 s
    actions = s.run(3, "batch")
    rollback = next(a for a in actions if isinstance(a, RolledBack))
    assert rollback.cause == "regression" and rollback.traffic_class == "switchable" and rollback.lane == "batch"
    assert rollback.restored_weights is baseline
    assert s.controller.weights is baseline and s.controller.mode == "realtime"
    assert rollback.figures["evidence.switchable.attainment"] < rollback.figures["evidence.switchable.before"]
    assert "within objective" in rollback.reason
    assert s.controller.state is State.COOLDOWN


def test_a_batch_lane_slower_than_its_own_past_but_within_objectives_is_promoted():
    s = Scenario(quick_params(hold_s=0.0, step_s=5.0))
    s.run(7, "batch")
    s.latency_s["batch"] = 0.8  # four times its calm p95, still inside 1 s
    actions = s.run(30, "batch")
    assert "RolledBack" not in kinds(actions)
    assert kinds(s.log).count("StepAdvanced") == 3 and s.controller.mode == "batch"


def test_errors_past_the_budget_roll_back():
    s = Scenario(quick_params(hold_s=0.0))
    s.errors["batch"] = 0.2
    actions = s.run(10, "batch")
    rollback = next(a for a in actions if isinstance(a, RolledBack))
    assert "errors" in rollback.reason and rollback.traffic_class == "switchable"
    assert rollback.figures["evidence.switchable.before"] == 1.0


def test_no_rollback_into_a_lane_that_fails_too_the_step_holds_and_says_why_once():
    s = Scenario(quick_params(hold_s=0.0, step_s=5.0, urgency="off"))
    s.run(2, "batch")
    s.latency_s["batch"] = 2.0
    s.latency_s["realtime"] = 2.0  # the lane a rollback would return to is drowning as well
    actions = s.run(12, "batch")
    assert "RolledBack" not in kinds(actions) and "StepAdvanced" not in kinds(actions)
    withheld = [a for a in actions if isinstance(a, RollbackWithheld)]
    assert len(withheld) == 1
    assert withheld[0].failing_lanes == ("realtime",) and "holding step 0" in withheld[0].reason
    assert s.controller.state is State.RAMPING
    s.latency_s["realtime"] = 0.02  # the way back is healthy again (over a whole window): a rollback helps
    assert "RolledBack" in kinds(s.run(12, "batch"))


def test_a_failing_source_lane_skips_the_hold_and_takes_a_step_per_tick():
    s = Scenario(quick_params(hold_s=30.0, step_s=5.0))
    s.run(3, None)
    s.latency_s["realtime"] = 2.0  # realtime misses the 1 s objective; batch keeps it
    s.run(3, None)
    started = s.run(1, "batch")
    assert kinds(started)[:2] == ["TransitionStarted", "SetWeights"] and "urgent, no hold" in started[0].reason
    steps = [a for a in s.run(3, "batch") if a.kind != "RollbackWithheld"]  # a rollback would not help
    assert kinds(steps) == ["StepAdvanced", "SetWeights"] * 3
    assert all(a.reason.startswith("urgent: switchable on realtime") for a in steps if a.kind == "StepAdvanced")
    assert s.controller.weights is MODES["batch"]  # at the target: nothing left to hurry
    assert kinds(s.run(5, "batch")) == ["TransitionCompleted"] and s.controller.mode == "batch"


def test_urgency_jump_takes_the_target_at_once_and_off_stays_gradual():
    jump = Scenario(quick_params(hold_s=0.0, step_s=5.0, urgency="jump"))
    jump.latency_s["realtime"] = 2.0
    jump.run(3, None)
    actions = jump.run(2, "batch")
    assert weight_history(actions)[-1] == MODES["batch"]
    off = Scenario(quick_params(hold_s=0.0, step_s=5.0, urgency="off"))
    off.latency_s["realtime"] = 2.0
    off.run(3, None)
    assert [w.as_dict() for w in weight_history(off.run(4, "batch"))] == [{"batch": 0.2, "realtime": 0.8}]


def test_no_urgency_when_the_lane_gaining_traffic_fails_too():
    s = Scenario(quick_params(hold_s=10.0, step_s=5.0), initial_mode="hybrid")
    s.latency_s["realtime"] = 2.0
    s.latency_s["batch"] = 2.0
    s.run(3, None)
    assert s.run(5, "batch") == []  # holding as usual: moving would not help
    assert s.controller.state is State.HOLDING


def test_missing_data_waits_and_then_stalls_into_a_rollback():
    s = Scenario(quick_params(hold_s=0.0, step_s=5.0, min_samples=50, progress_deadline_s=30.0))
    s.rate_per_s = 1.0  # 20% of 1 req/s: the batch lane cannot reach 50 samples in time
    actions = s.run(40, "batch")
    assert "StepAdvanced" not in kinds(actions)
    rollback = next(a for a in actions if isinstance(a, RolledBack))
    assert rollback.cause == "stalled" and "too few requests" in rollback.reason
    assert s.controller.weights == MODES["realtime"]


def test_proposals_for_another_mode_during_a_ramp_are_ignored():
    s = Scenario(quick_params(hold_s=0.0))
    s.run(2, "batch")
    ignored = s.run(3, "hybrid")
    assert kinds(ignored).count("ProposalIgnored") == 1
    assert "in progress" in ignored[0].reason


def test_force_immediate_and_manual_rollback_undoes_it():
    s = Scenario(quick_params())
    forced = s.command(Force("batch", gradual=False))
    assert kinds(forced) == ["TransitionCompleted", "SetWeights"]
    assert s.controller.weights is MODES["batch"]
    undone = s.command(Rollback())
    assert kinds(undone) == ["RolledBack", "SetWeights"]
    assert undone[0].cause == "manual" and s.controller.weights is MODES["realtime"]
    assert kinds(s.command(Rollback())) == ["CommandRejected"]


def test_force_gradual_supersedes_a_transition_in_progress():
    s = Scenario(quick_params(hold_s=0.0))
    s.run(7, "batch")
    mid = s.controller.weights
    forced = s.command(Force("realtime"))
    assert forced[0].kind == "TransitionStarted" and forced[0].cause == "manual"
    assert forced[0].baseline_weights is mid


def test_pause_freezes_the_ramp_and_resume_restarts_the_step_clock():
    s = Scenario(quick_params(hold_s=0.0, step_s=5.0))
    s.run(2, "batch")
    assert kinds(s.command(Pause())) == ["Paused"]
    frozen = s.controller.weights
    quiet = s.run(30, "hybrid")
    assert s.controller.weights is frozen
    assert kinds(quiet) == ["ProposalIgnored"] and "paused" in quiet[0].reason
    assert kinds(s.command(Resume())) == ["Resumed"]
    assert s.controller.state is State.RAMPING
    assert s.run(4, "batch") == []  # the step clock restarted at resume
    assert "StepAdvanced" in kinds(s.run(2, "batch"))


def test_the_safety_net_stays_armed_while_paused():
    s = Scenario(quick_params(hold_s=0.0, step_s=5.0))
    s.run(12, "batch")
    s.command(Pause())
    s.latency_s["batch"] = 2.0
    actions = s.run(5, None)
    assert "RolledBack" in kinds(actions)
    assert s.controller.state is State.PAUSED and s.controller.weights == MODES["realtime"]


def test_commands_that_make_no_sense_are_rejected_with_a_reason():
    s = Scenario(quick_params())
    assert s.command(Resume())[0].reason == "not paused"
    assert "unknown mode" in s.command(Force("turbo"))[0].reason
    assert s.command(Force("realtime"))[0].reason == "already in mode realtime"
    s.command(Pause())
    assert s.command(Pause())[0].reason == "already paused"


def test_unknown_mode_proposals_are_ignored():
    s = Scenario(quick_params(hold_s=0.0))
    ignored = s.run(1, "turbo")
    assert kinds(ignored) == ["ProposalIgnored"] and "unknown mode" in ignored[0].reason


def test_identical_inputs_give_identical_decisions_and_these_are_they():
    def play():
        s = Scenario(quick_params(hold_s=2.0), seed=9)
        s.run(20, "batch")
        s.latency_s["batch"] = 0.4  # slower, still within the objective: no reason to roll back
        s.run(20, "batch")
        s.run(30, "realtime")
        return [a.as_record() for a in s.log]

    first, second = play(), play()
    assert first == second
    moves = [(r["kind"], r["at_s"]) for r in first if r["kind"] != "SetWeights"]
    assert moves == [
        ("TransitionStarted", 3.0),
        ("StepAdvanced", 8.0),
        ("StepAdvanced", 13.0),
        ("StepAdvanced", 18.0),
        ("TransitionCompleted", 23.0),
        ("ProposalIgnored", 41.0),  # the cooldown after a transition
        ("TransitionStarted", 45.0),
        ("StepAdvanced", 50.0),
        ("StepAdvanced", 55.0),
        ("StepAdvanced", 60.0),
        ("TransitionCompleted", 65.0),
    ]
    ramp = [round(r["weights"]["batch"], 6) for r in first if r["kind"] == "SetWeights"]
    assert ramp == [0.2, 0.5, 0.8, 1.0, 0.8, 0.5, 0.2, 0.0]


def test_records_are_json_ready():
    import json

    s = Scenario(quick_params(hold_s=0.0))
    s.run(3, "batch")
    for action in s.log:
        record = action.as_record()
        json.dumps(record, allow_nan=False)
        assert record["kind"] == action.kind and "figures" in record


@pytest.mark.parametrize(
    ("steps", "message"),
    [
        ((0.2, 1.5, 1.0), "each step must be in \\(0, 1\\]"),
        ((0.5, 0.4, 1.0), "must increase"),
        ((0.2, 0.8), "must be 1.0"),
    ],
)
def test_steps_are_validated(steps, message):
    with pytest.raises(ValidationError, match=message):
        SwitchingParams(steps=steps)


def test_progress_deadline_must_exceed_the_step():
    with pytest.raises(ValidationError, match="progress_deadline"):
        SwitchingParams(step_s=60, progress_deadline_s=30)
