"""What the switching controller says and what it is told: values only.

Outputs (past tense for events, imperative for the one instruction):
- SetWeights: the driver must route auto traffic with these weights now.
- TransitionStarted, StepAdvanced, TransitionCompleted, RolledBack: the
  steps of a transition.
- RollbackWithheld: the stream regressed, but the lanes a rollback would
  send traffic back to miss their objectives too; the step holds.
- ProposalIgnored: a policy's proposal was seen and not acted on, and why.
- Paused, Resumed, CommandRejected: answers to operator commands.
- ReplicasWanted: the capacity rule (policies.control.capacity) changed the replicas
  a lane needs; the driver publishes it for the autoscaler.

Inputs (operator commands): Force, Pause, Resume, Rollback.

Every output carries `at_s` and the snapshot figures behind it; the list of
outputs is the audit log, and `as_record()` is its one format, shared by the
live router's log and the simulator's.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from policies.control.weights import Weights


@dataclass(frozen=True, slots=True, kw_only=True)
class Action:
    at_s: float
    reason: str
    figures: Mapping[str, float] = field(default_factory=dict, repr=False)

    @property
    def kind(self) -> str:
        return type(self).__name__

    def as_record(self) -> dict[str, Any]:
        record: dict[str, Any] = {"kind": self.kind}
        for f in fields(self):
            record[f.name] = plain(getattr(self, f.name))
        return record


def plain(value: Any) -> Any:
    """Strict-JSON-ready: weights and mappings as dicts, sequences as lists, NaN and infinities as None
    (JSON has no NaN: `jq` and browsers refuse it), floats to 12 significant digits."""
    if isinstance(value, Mapping):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, tuple | list):
        return [plain(v) for v in value]
    if isinstance(value, float):
        # 12 significant digits: 0.2, not the 0.19999999999999996 that 1 - 0.8 leaves.
        return float(f"{value:.12g}") if math.isfinite(value) else None
    return value


@dataclass(frozen=True, slots=True, kw_only=True)
class SetWeights(Action):
    weights: Weights


@dataclass(frozen=True, slots=True, kw_only=True)
class ReplicasWanted(Action):
    lane: str
    replicas: int
    was: int


@dataclass(frozen=True, slots=True, kw_only=True)
class TransitionStarted(Action):
    from_mode: str | None
    to_mode: str
    cause: str
    baseline_weights: Weights
    target_weights: Weights
    steps: tuple[float, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class StepAdvanced(Action):
    to_mode: str
    step_index: int
    fraction: float
    weights: Weights


@dataclass(frozen=True, slots=True, kw_only=True)
class TransitionCompleted(Action):
    mode: str
    weights: Weights


@dataclass(frozen=True, slots=True, kw_only=True)
class RolledBack(Action):
    """`cause`: "regression" (the stream kept its objectives worse than before
    the step, and the lanes it returns to were keeping theirs), "stalled" (no
    step could be promoted for progress_deadline_s) or "manual";
    `traffic_class`: the class whose regression decided it; `lane`: the lane
    that had gained the most traffic."""

    from_mode: str | None
    to_mode: str
    cause: str
    restored_weights: Weights
    lane: str | None = None
    traffic_class: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class RollbackWithheld(Action):
    """A rollback would not make the stream better: `failing_lanes` (where the
    traffic would return) miss their objectives as well."""

    to_mode: str
    step_index: int
    failing_lanes: tuple[str, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class ProposalIgnored(Action):
    target_mode: str
    policy: str
    proposal_reason: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Paused(Action):
    pass


@dataclass(frozen=True, slots=True, kw_only=True)
class Resumed(Action):
    pass


@dataclass(frozen=True, slots=True, kw_only=True)
class CommandRejected(Action):
    command: str


@dataclass(frozen=True, slots=True)
class Force:
    """Move to `mode`: through the steps (gradual) or at once."""

    mode: str
    gradual: bool = True
    reason: str = "operator"


@dataclass(frozen=True, slots=True)
class Pause:
    reason: str = "operator"


@dataclass(frozen=True, slots=True)
class Resume:
    reason: str = "operator"


@dataclass(frozen=True, slots=True)
class Rollback:
    reason: str = "operator"


Command = Force | Pause | Resume | Rollback
