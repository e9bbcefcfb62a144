"""The switching controller's states, the table of every move between them, and its records.

policies.control.switching explains what each state and trigger means and enforces
this table in `_move`: a state change that is not a row here is a bug and
raises. Rules about *when* a trigger fires (stream health, withheld
rollbacks, urgency) live in the controller; *which* changes exist lives here,
with the records the controller keeps while it moves: the transition under
way (`Ramp`) and what a rollback restores (`Undo`).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from policies.control import stream_health as health
from policies.control.metrics import LaneTotals
from policies.control.weights import Weights


class State(enum.Enum):
    STEADY = "steady"  # weights at rest; a proposal for another mode starts a hold
    HOLDING = "holding"  # a proposal is persisting; the transition starts after hold_s
    RAMPING = "ramping"  # a transition is moving the weights step by step
    COOLDOWN = "cooldown"  # after a completion or rollback; proposals are ignored
    PAUSED = "paused"  # operator pause; a transition in progress is frozen


_ACTIVE = (State.STEADY, State.HOLDING, State.RAMPING, State.COOLDOWN)

# (from, trigger, to): every state change the controller may make.
TRANSITIONS: frozenset[tuple[State, str, State]] = frozenset(
    {
        (State.STEADY, "proposal", State.HOLDING),
        (State.HOLDING, "proposal_changed", State.HOLDING),
        (State.HOLDING, "proposal_lapsed", State.STEADY),
        (State.HOLDING, "hold_elapsed", State.RAMPING),
        # the lane losing traffic misses its objectives: no hold, no waiting for step_s
        (State.HOLDING, "urgent", State.RAMPING),
        (State.RAMPING, "urgent_step", State.RAMPING),
        (State.RAMPING, "step_promoted", State.RAMPING),
        (State.RAMPING, "completed", State.COOLDOWN),
        (State.RAMPING, "regressed", State.COOLDOWN),
        (State.RAMPING, "stalled", State.COOLDOWN),
        # the stream regressed, but the lanes it would return to fail too: hold the step
        (State.RAMPING, "rollback_withheld", State.RAMPING),
        (State.COOLDOWN, "cooled", State.STEADY),
        (State.PAUSED, "regressed", State.PAUSED),
        (State.PAUSED, "rollback_withheld", State.PAUSED),
        (State.PAUSED, "resume", State.STEADY),
        (State.PAUSED, "resume", State.COOLDOWN),
        (State.PAUSED, "resume", State.RAMPING),
        (State.PAUSED, "force_gradual", State.RAMPING),
        (State.PAUSED, "force_now", State.PAUSED),
        (State.PAUSED, "rollback", State.PAUSED),
        *((s, "force_gradual", State.RAMPING) for s in _ACTIVE),
        *((s, "force_now", State.COOLDOWN) for s in _ACTIVE),
        *((s, "rollback", State.COOLDOWN) for s in _ACTIVE),
        *((s, "pause", State.PAUSED) for s in _ACTIVE),
    }
)


@dataclass(slots=True)
class Ramp:
    """A transition under way: where it goes, what it moves, and the step it is on with its evidence."""

    from_mode: str | None
    to_mode: str
    cause: str
    baseline: Weights
    target: Weights
    gaining: tuple[str, ...]
    losing: tuple[str, ...]
    started_s: float
    step_index: int = 0
    step_started_s: float = 0.0
    step_marks: dict[str, LaneTotals] = field(default_factory=dict)  # lane totals at the step's start
    outcome_marks: health.Evidence = field(default_factory=dict)  # outcome totals at the step's start
    before: health.Evidence = field(default_factory=dict)  # the outcomes the step is compared with
    withheld: bool = False  # RollbackWithheld was said for this step


@dataclass(frozen=True, slots=True)
class Undo:
    """What a manual rollback restores once the transition is over."""

    from_mode: str | None
    to_mode: str
    baseline: Weights
