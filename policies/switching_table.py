"""The switching controller's states and the table of every move between them.

policies.switching explains what each state and trigger means and enforces
this table in `_move`: a state change that is not a row here is a bug and
raises. Rules about *when* a trigger fires (stream health, withheld
rollbacks, urgency) live in the controller; *which* changes exist lives here.
"""

from __future__ import annotations

import enum


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
