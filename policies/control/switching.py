"""The switching controller: when and how the weights move from mode to mode.

Theory of operation. A policy proposes a target mode on every tick. The
controller starts a transition only after the same proposal has persisted for
the hold time (the switch delay), then moves the weights in steps, each a
fraction of the way from the pre-transition weights to the target mode's
(default 0.2, 0.5, 0.8, 1.0: 80/20 -> 50/50 -> 20/80 -> 0/100). After a
completion or a rollback, proposals are ignored for `cooldown_s`.

Health is the stream's, judged by its objectives (policies.control.objectives), never
by a lane against its own calm past: a batch lane is meant to get slower as
its batches fill. The evidence is what the requests that ended since the
step began got (a difference of cumulative totals, so the metrics window does
not blur one step into the next), per traffic class, over every lane, the
one that lost traffic included, with the router's refusals counted as misses.
policies.control.stream_health does the statistics (only what is shown at 95%
confidence counts). On every tick of a transition:

1. regression: a class doing confidently worse than its objective and than
   before the step (the previous step's evidence, or the metrics window
   before the transition) asks for a rollback. A rollback must make the
   stream better: when a lane that would take traffic back (one whose weight
   the transition lowered) misses its objectives itself, the controller holds
   the step and says so once (RollbackWithheld); else it rolls back at once.
2. urgency: when a lane the transition takes traffic from misses its
   objectives over the metrics window and no lane it gives traffic to does,
   waiting helps nobody. With `urgency: skip` one step is taken per tick,
   with `jump` the target is taken at once, with `off` nothing changes; a
   proposal that takes traffic from such a lane skips its hold as well.
3. promotion: a step is promoted after `step_s` when every lane that gained
   traffic served at least `min_samples` requests in it and nothing above
   objected. Missing evidence never promotes a step; if no step can be
   promoted for `progress_deadline_s`, the transition rolls back ("stalled").

Invariants (tests/policies/test_switching_*.py check them):
- the weights always name every lane, each in [0, 1], summing to 1;
- during a transition each lane's weight moves monotonically from its
  pre-transition value toward its target value; only a rollback reverses it;
- a rollback restores the exact pre-transition weights (the same object),
  and only when the lanes it returns traffic to are not missing objectives;
- every state change is a row of policies.control.switching_table.TRANSITIONS;
  anything else is a bug and raises;
- the controller reads no clock and holds no randomness: the same snapshots,
  proposals and commands give the same outputs.

Pause freezes the controller: proposals are ignored and a transition in
progress stops where it is (its step clock restarts on resume). The rollback
safety net stays armed on a paused transition, because a pause is a request
to stop moving, not to stop protecting.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from policies.control import stream_health as health
from policies.control import switching_record
from policies.control.actions import (
    Action,
    Command,
    CommandRejected,
    Force,
    Pause,
    Paused,
    ProposalIgnored,
    Resume,
    Resumed,
    Rollback,
    RollbackWithheld,
    RolledBack,
    SetWeights,
    StepAdvanced,
    TransitionCompleted,
    TransitionStarted,
)
from policies.control.metrics import LaneTotals
from policies.control.protocol import Proposal
from policies.control.snapshot import ControlView, Snapshot, TransitionView
from policies.control.switching_params import SwitchingParams
from policies.control.switching_table import TRANSITIONS, Ramp, State, Undo
from policies.control.weights import Weights

__all__ = ["TRANSITIONS", "State", "SwitchingController"]


class SwitchingController:
    def __init__(self, modes: Mapping[str, Weights], initial_mode: str, params: SwitchingParams):
        if initial_mode not in modes:
            raise ValueError(f"initial mode {initial_mode!r} is not one of {sorted(modes)}")
        self.modes = dict(modes)
        self._modes_view = MappingProxyType(self.modes)
        self.params = params
        self.state = State.STEADY
        self.mode: str | None = initial_mode
        self.weights: Weights = self.modes[initial_mode]
        self._transition: Ramp | None = None
        self._undo: Undo | None = None
        self._hold: Proposal | None = None
        self._hold_since_s = 0.0
        self._cooldown_until_s: float | None = None
        self._last_ignored: tuple[str, str, str] | None = None

    def view(self) -> ControlView:
        t = self._transition
        transition = None
        if t is not None:
            transition = TransitionView(
                from_mode=t.from_mode,
                to_mode=t.to_mode,
                step_index=t.step_index,
                step_count=len(self.params.steps),
                fraction=self.params.steps[t.step_index],
                started_s=t.started_s,
                step_started_s=t.step_started_s,
                cause=t.cause,
            )
        return ControlView(
            state=self.state.value,
            mode=self.mode,
            weights=self.weights,
            modes=self._modes_view,
            transition=transition,
            holding_target=self._hold.target_mode if self._hold else None,
            holding_since_s=self._hold_since_s if self._hold else None,
            cooldown_until_s=self._cooldown_until_s,
        )

    def record(self) -> dict[str, Any]:
        """This controller's state as plain data (policies.control.switching_record), for a successor to restore."""
        return switching_record.record_of(
            self.state,
            self.mode,
            self.weights,
            self._transition,
            self._undo,
            self._hold,
            self._hold_since_s,
            self._cooldown_until_s,
        )

    def restore(self, record: dict[str, Any], snapshot: Snapshot) -> None:
        """Carry on from a record another controller with the same modes made; a transition under way starts
        its current step's evidence and clock again from `snapshot`."""
        r = switching_record.read(record)
        self.state, self.mode, self.weights = r.state, r.mode, r.weights
        self._transition, self._undo, self._hold = r.transition, r.undo, r.hold
        self._hold_since_s, self._cooldown_until_s = r.hold_since_s, r.cooldown_until_s
        self._last_ignored = None
        if self._transition is not None:
            self._restart_step_clock(snapshot)

    def on_tick(self, snapshot: Snapshot, proposal: Proposal | None) -> list[Action]:
        """Advance the controller to `snapshot.now_s` given the policy's proposal."""
        now = snapshot.now_s
        out: list[Action] = []
        if self.state is State.PAUSED:
            if self._transition is not None:
                self._judge(snapshot, out)
            self._ignore(proposal, snapshot, "controller is paused", out)
            return out
        if self.state is State.COOLDOWN and now >= (self._cooldown_until_s or 0.0):
            self._move("cooled", State.STEADY)
        if self.state is State.RAMPING:
            self._advance(snapshot, out)
            t = self._transition
            if t is not None and proposal is not None and proposal.target_mode != t.to_mode:
                self._ignore(proposal, snapshot, f"a transition to {t.to_mode} is in progress", out)
            return out
        if self.state is State.COOLDOWN:
            self._ignore(proposal, snapshot, f"cooldown until {self._cooldown_until_s:g}s", out)
            return out
        self._consider(proposal, snapshot, out)
        return out

    def _consider(self, proposal: Proposal | None, snapshot: Snapshot, out: list[Action]) -> None:
        now = snapshot.now_s
        if proposal is not None and proposal.target_mode not in self.modes:
            self._ignore(proposal, snapshot, f"unknown mode {proposal.target_mode!r}", out)
            proposal = None
        wanted = proposal is not None and not self._is_current(proposal.target_mode)
        if self.state is State.HOLDING:
            held = self._hold
            assert held is not None  # HOLDING holds a proposal
            if not (wanted and proposal is not None and proposal.target_mode == held.target_mode):
                note = f"did not persist: held {now - self._hold_since_s:g}s of {self._hold_s(held):g}s"
                self._ignore(held, snapshot, note, out)
                self._hold = None
                if not wanted:
                    self._move("proposal_lapsed", State.STEADY)
                    return
                self._move("proposal_changed", State.HOLDING)
                self._hold, self._hold_since_s = proposal, now
        elif wanted:
            self._move("proposal", State.HOLDING)
            self._hold, self._hold_since_s = proposal, now
        else:
            return
        hold = self._hold
        assert hold is not None  # set by the branches above
        urgent = self._urgency(snapshot, self.weights, self.modes[hold.target_mode])
        if urgent is not None or now - self._hold_since_s >= self._hold_s(hold):
            held, self._hold = hold, None
            self._move("hold_elapsed" if urgent is None else "urgent", State.RAMPING)
            reason = held.reason if urgent is None else f"{held.reason}; urgent, no hold: {urgent}"
            self._start(snapshot, held.target_mode, "policy", reason, held.figures, out)

    @property
    def _ongoing(self) -> Ramp:
        """The transition under way (called only while RAMPING, or PAUSED in one)."""
        assert self._transition is not None
        return self._transition

    def _hold_s(self, proposal: Proposal) -> float:
        return self.params.hold_s if proposal.hold_s is None else proposal.hold_s

    def _is_current(self, mode: str) -> bool:
        return mode in self.modes and self.weights == self.modes[mode]

    def _start(
        self,
        snapshot: Snapshot,
        target_mode: str,
        cause: str,
        reason: str,
        figures: Mapping[str, float],
        out: list[Action],
    ) -> None:
        now = snapshot.now_s
        baseline, target = self.weights, self.modes[target_mode]
        self._transition = t = Ramp(
            from_mode=self.mode,
            to_mode=target_mode,
            cause=cause,
            baseline=baseline,
            target=target,
            gaining=target.gained(baseline),
            losing=baseline.gained(target),
            started_s=now,
            before=health.windows(snapshot.outcomes),
        )
        self._undo = Undo(self.mode, target_mode, baseline)
        self.mode = None
        out.append(
            TransitionStarted(
                at_s=now,
                reason=reason,
                figures={**snapshot.figures(), **figures},
                from_mode=t.from_mode,
                to_mode=target_mode,
                cause=cause,
                baseline_weights=baseline,
                target_weights=target,
                steps=self.params.steps,
            )
        )
        self._enter_step(0, snapshot, out)

    def _enter_step(self, index: int, snapshot: Snapshot, out: list[Action], why: str | None = None) -> None:
        t = self._ongoing
        if index:
            finished = health.since(snapshot.outcomes, t.outcome_marks)
            if sum(totals.completions for totals in finished.values()) >= self.params.min_samples:
                t.before = finished  # else the older, better-founded evidence stays the bar
        t.step_index = index
        t.withheld = False
        self._restart_step_clock(snapshot)
        self.weights = t.baseline.toward(t.target, self.params.steps[index])
        if index:
            out.append(
                StepAdvanced(
                    at_s=snapshot.now_s,
                    reason=why or f"step {index - 1} healthy",
                    figures=snapshot.figures(),
                    to_mode=t.to_mode,
                    step_index=index,
                    fraction=self.params.steps[index],
                    weights=self.weights,
                )
            )
        out.append(SetWeights(at_s=snapshot.now_s, reason=f"step {index} toward {t.to_mode}", weights=self.weights))

    def _restart_step_clock(self, snapshot: Snapshot) -> None:
        t = self._ongoing
        t.step_started_s = snapshot.now_s
        t.step_marks = {lane: snapshot.lanes[lane].cumulative for lane in t.gaining}
        t.outcome_marks = health.marks(snapshot.outcomes)

    def _advance(self, snapshot: Snapshot, out: list[Action]) -> None:
        """One tick of a transition: roll back, hurry, promote, or wait."""
        verdict = self._judge(snapshot, out)
        if verdict == "rolled_back":
            return
        t = self._ongoing
        now = snapshot.now_s
        p = self.params
        urgent = self._urgency(snapshot, self.weights, t.target)
        if urgent is not None:
            why = f"urgent: {urgent}"
            if t.step_index + 1 == len(p.steps):
                self._complete(snapshot, out, why)
            else:
                self._move("urgent_step", State.RAMPING)
                self._enter_step(len(p.steps) - 1 if p.urgency == "jump" else t.step_index + 1, snapshot, out, why)
            return
        if verdict == "withheld":
            return
        if now - t.step_started_s >= p.step_s and all(
            self._step_evidence(snapshot, lane).completions >= p.min_samples for lane in t.gaining
        ):
            if t.step_index + 1 < len(p.steps):
                self._move("step_promoted", State.RAMPING)
                self._enter_step(t.step_index + 1, snapshot, out)
            else:
                self._complete(snapshot, out, f"all {len(p.steps)} steps healthy")
        elif now - t.step_started_s >= p.progress_deadline_s:
            waited = now - t.step_started_s
            reason = (
                f"step {t.step_index} could not be promoted in {waited:g}s: too few requests on {', '.join(t.gaining)}"
            )
            self._roll_back(snapshot, "stalled", reason, out)

    def _step_evidence(self, snapshot: Snapshot, lane: str) -> LaneTotals:
        return snapshot.lanes[lane].cumulative.minus(self._ongoing.step_marks[lane])

    def _judge(self, snapshot: Snapshot, out: list[Action]) -> str:
        """The stream since the step began, against before: "healthy", "rolled_back" or "withheld"."""
        t = self._ongoing
        p = self.params
        objectives = snapshot.objectives
        evidence = health.since(snapshot.outcomes, t.outcome_marks)
        regressed = health.regressions(evidence, t.before, objectives, p.min_samples)
        if not regressed:
            return "healthy"
        worst = min(regressed, key=lambda r: r.now.attainment)
        # Where a rollback sends traffic is judged on the recent window: is it failing now?
        failing = health.failing_returns(
            health.windows(snapshot.outcomes), t.before, objectives, t.losing, p.min_samples
        )
        facts = health.facts(regressed, failing)
        if failing:
            if not t.withheld:
                t.withheld = True
                self._move("rollback_withheld", self.state)
                lanes = ", ".join(failing)
                reason = (
                    f"{worst.describe()}, but a rollback would return traffic to {lanes}, which misses its "
                    f"objectives too ({'; '.join(r.describe() for r in failing.values())}): holding step {t.step_index}"
                )
                out.append(
                    RollbackWithheld(
                        at_s=snapshot.now_s,
                        reason=reason,
                        figures={**snapshot.figures(), **facts},
                        to_mode=t.to_mode,
                        step_index=t.step_index,
                        failing_lanes=tuple(failing),
                    )
                )
            return "withheld"
        self._roll_back(snapshot, "regression", worst.describe(), out, facts, worst.now.objective.traffic_class)
        return "rolled_back"

    def _urgency(self, snapshot: Snapshot, current: Weights, target: Weights) -> str | None:
        if self.params.urgency == "off":
            return None
        window = health.windows(snapshot.outcomes)
        return health.urgency(window, snapshot.objectives, current, target, self.params.min_samples)

    def _complete(self, snapshot: Snapshot, out: list[Action], reason: str) -> None:
        t = self._ongoing
        self._move("completed", State.COOLDOWN)
        self._transition = None
        self.mode = t.to_mode
        self._cooldown_until_s = snapshot.now_s + self.params.cooldown_s
        out.append(
            TransitionCompleted(
                at_s=snapshot.now_s,
                reason=reason,
                figures=snapshot.figures(),
                mode=t.to_mode,
                weights=self.weights,
            )
        )

    def _roll_back(
        self,
        snapshot: Snapshot,
        cause: str,
        reason: str,
        out: list[Action],
        facts: Mapping[str, float] | None = None,
        traffic_class: str | None = None,
    ) -> None:
        undo = self._undo
        assert undo is not None  # there is something to roll back whenever this is called
        t = self._transition
        lane = max(t.gaining, key=lambda name: t.target[name] - t.baseline[name], default=None) if t else None
        trigger = "rollback" if cause == "manual" else ("regressed" if cause == "regression" else "stalled")
        self._move(trigger, State.PAUSED if self.state is State.PAUSED else State.COOLDOWN)
        self._transition = None
        self._undo = None
        self.weights = undo.baseline
        self.mode = undo.from_mode
        self._cooldown_until_s = snapshot.now_s + self.params.cooldown_s
        out.append(
            RolledBack(
                at_s=snapshot.now_s,
                reason=reason,
                figures={**snapshot.figures(), **(facts or {})},
                from_mode=undo.from_mode,
                to_mode=undo.to_mode,
                cause=cause,
                restored_weights=undo.baseline,
                lane=lane if cause == "regression" else None,
                traffic_class=traffic_class,
            )
        )
        out.append(SetWeights(at_s=snapshot.now_s, reason=f"rollback ({cause})", weights=self.weights))

    def handle(self, command: Command, snapshot: Snapshot) -> list[Action]:
        """Carry out an operator command at `snapshot.now_s`."""
        out: list[Action] = []
        now = snapshot.now_s
        name = type(command).__name__.lower()

        def reject(why: str) -> list[Action]:
            return [CommandRejected(at_s=now, reason=why, figures=snapshot.figures(), command=name)]

        if isinstance(command, Force):
            if command.mode not in self.modes:
                return reject(f"unknown mode {command.mode!r}; known: {', '.join(sorted(self.modes))}")
            if self._is_current(command.mode) and self._transition is None:
                return reject(f"already in mode {command.mode}")
            self._hold = None
            if command.gradual:
                self._move("force_gradual", State.RAMPING)
                self._start(snapshot, command.mode, "manual", command.reason, {}, out)
            else:
                self._move("force_now", State.PAUSED if self.state is State.PAUSED else State.COOLDOWN)
                self._transition = None
                self._undo = Undo(self.mode, command.mode, self.weights)
                self.weights, self.mode = self.modes[command.mode], command.mode
                self._cooldown_until_s = now + self.params.cooldown_s
                out.append(
                    TransitionCompleted(
                        at_s=now,
                        reason=command.reason,
                        figures=snapshot.figures(),
                        mode=command.mode,
                        weights=self.weights,
                    )
                )
                out.append(SetWeights(at_s=now, reason=f"forced to {command.mode}", weights=self.weights))
        elif isinstance(command, Pause):
            if self.state is State.PAUSED:
                return reject("already paused")
            self._hold = None
            self._move("pause", State.PAUSED)
            out.append(Paused(at_s=now, reason=command.reason, figures=snapshot.figures()))
        elif isinstance(command, Resume):
            if self.state is not State.PAUSED:
                return reject("not paused")
            if self._transition is not None:
                self._move("resume", State.RAMPING)
                self._restart_step_clock(snapshot)
            elif self._cooldown_until_s is not None and now < self._cooldown_until_s:
                self._move("resume", State.COOLDOWN)
            else:
                self._move("resume", State.STEADY)
            out.append(Resumed(at_s=now, reason=command.reason, figures=snapshot.figures()))
        elif isinstance(command, Rollback):
            if self._undo is None:
                return reject("nothing to roll back")
            self._hold = None
            self._roll_back(snapshot, "manual", command.reason, out)
        else:
            raise TypeError(f"unknown command {command!r}")
        return out

    def _move(self, trigger: str, to: State) -> None:
        move = (self.state, trigger, to)
        if move not in TRANSITIONS:
            raise AssertionError(f"illegal state change {move}")
        self.state = to
        self._last_ignored = None

    def _ignore(self, proposal: Proposal | None, snapshot: Snapshot, why: str, out: list[Action]) -> None:
        """Say once (per state and target) that a proposal was not acted on."""
        if proposal is None or self._is_current(proposal.target_mode):
            return
        key = (self.state.value, proposal.target_mode, proposal.policy)
        if key == self._last_ignored:
            return
        self._last_ignored = key
        out.append(
            ProposalIgnored(
                at_s=snapshot.now_s,
                reason=why,
                figures={**snapshot.figures(), **proposal.figures},
                target_mode=proposal.target_mode,
                policy=proposal.policy,
                proposal_reason=proposal.reason,
            )
        )
