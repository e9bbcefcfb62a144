"""A hypothesis state machine drives the controller with proposals, traffic,
regressions and operator commands, and checks its invariants after every step.

Besides the weights' invariants, two health rules are checked against what
the scenario fed: no step is promoted on a lane without `min_samples`
requests of evidence (urgent moves aside: they wait for nobody), and a
rollback never sends traffic back to a lane that the evidence it saw shows
missing its objectives."""

import math

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from policies.control import stream_health as health
from policies.control.actions import (
    Force,
    Pause,
    Resume,
    Rollback,
    RolledBack,
    SetWeights,
    StepAdvanced,
    TransitionCompleted,
    TransitionStarted,
)
from policies.control.switching import State
from tests.policies.helpers import LANES, MODES, quick_params
from tests.policies.scenario import Scenario

targets = st.sampled_from([None, "realtime", "hybrid", "batch", "turbo"])


class ControllerMachine(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        self.min_samples = 10
        self.s = Scenario(
            quick_params(hold_s=2.0, step_s=3.0, cooldown_s=6.0, min_samples=10, progress_deadline_s=12.0)
        )
        self.ramp_baseline = None
        self.current = self.s.controller.weights  # as the SetWeights outputs tell it
        self.undo_baseline = None  # what a rollback must restore
        self.ramp_target = None
        self.ramp_prev = None
        self.step_started_s = 0.0

    def absorb(self, actions):
        for action in actions:
            if isinstance(action, (StepAdvanced, TransitionCompleted)) and not action.reason.startswith("urgent"):
                if self.ramp_target is not None and self.ramp_baseline is not None:
                    for lane in self.ramp_target.gained(self.ramp_baseline):
                        fed = self.s.requests(lane, self.step_started_s, action.at_s)
                        assert len(fed) >= self.min_samples, f"promoted with {len(fed)} requests on {lane}"
            if isinstance(action, RolledBack) and action.cause == "regression":
                snapshot = self.s.snapshot()
                assert snapshot.now_s == action.at_s
                returns = action.restored_weights.gained(self.current)
                window = health.windows(snapshot.outcomes)
                assert not health.failing_lanes(window, snapshot.objectives, returns, self.min_samples)
            if isinstance(action, SetWeights):
                self.step_started_s = action.at_s
            if isinstance(action, TransitionStarted):
                self.ramp_baseline = action.baseline_weights
                assert action.baseline_weights == self.current
                self.undo_baseline = action.baseline_weights
                self.ramp_target, self.ramp_prev = action.target_weights, action.baseline_weights
            elif isinstance(action, TransitionCompleted):
                self.ramp_target = self.ramp_prev = None
            elif isinstance(action, RolledBack):
                assert action.restored_weights is self.undo_baseline, "a rollback must restore the exact baseline"
                self.undo_baseline = self.ramp_target = self.ramp_prev = None
            elif isinstance(action, SetWeights):
                if self.ramp_target is not None:
                    for lane in LANES:
                        before = abs(self.ramp_prev[lane] - self.ramp_target[lane])
                        after = abs(action.weights[lane] - self.ramp_target[lane])
                        assert after <= before + 1e-12, "the ramp moved away from its target"
                    self.ramp_prev = action.weights
                self.current = action.weights
        assert self.current is self.s.controller.weights

    @rule(seconds=st.integers(1, 8), wanted=targets, hold=st.sampled_from([None, 0.0, 1.0]))
    def run(self, seconds, wanted, hold):
        for _ in range(seconds):  # tick by tick, so each decision is checked against the snapshot it saw
            self.absorb(self.s.run(1, wanted, hold_s=hold))

    @rule(lane=st.sampled_from(LANES), latency=st.sampled_from([0.02, 0.2, 2.0]))
    def set_latency(self, lane, latency):
        self.s.latency_s[lane] = latency

    @rule(lane=st.sampled_from(LANES), rate=st.sampled_from([0.0, 0.5]))
    def set_errors(self, lane, rate):
        self.s.errors[lane] = rate

    @rule(rate=st.sampled_from([0.5, 5.0, 40.0]))
    def set_traffic(self, rate):
        self.s.rate_per_s = rate

    @rule(mode=st.sampled_from(["realtime", "hybrid", "batch", "turbo"]), gradual=st.booleans())
    def force(self, mode, gradual):
        before = self.s.controller.weights
        actions = self.s.command(Force(mode, gradual))
        if not gradual and actions[0].kind == "TransitionCompleted":
            self.undo_baseline = before  # an immediate force is undone to where it began
            self.ramp_target = self.ramp_prev = None
            self.current = actions[1].weights
        else:
            self.absorb(actions)

    @rule(command=st.sampled_from([Pause(), Resume(), Rollback()]))
    def operate(self, command):
        self.absorb(self.s.command(command))

    @invariant()
    def weights_are_a_split(self):
        weights = self.s.controller.weights
        assert set(weights) == set(LANES)
        assert all(0.0 <= w <= 1.0 for w in weights.values())
        assert math.isclose(sum(weights.values()), 1.0, abs_tol=1e-9)

    @invariant()
    def state_and_transition_agree(self):
        c = self.s.controller
        has_transition = c.view().transition is not None
        if c.state is State.RAMPING:
            assert has_transition
        if c.state in (State.STEADY, State.HOLDING, State.COOLDOWN):
            assert not has_transition

    @invariant()
    def a_named_mode_has_its_weights(self):
        c = self.s.controller
        if c.mode is not None:
            assert c.weights == MODES[c.mode]


ControllerMachine.TestCase.settings = settings(max_examples=60, stateful_step_count=30, deadline=None)
TestController = ControllerMachine.TestCase
