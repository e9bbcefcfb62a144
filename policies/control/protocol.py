"""The policy protocol: what a policy is, what it returns, how it is configured.

A policy is an object with a `Params` model (pydantic, frozen, unknown keys
refused) and one method, `decide(snapshot) -> Proposal | None`. It is built
as `cls(params, rng)`: `params` is a validated instance of its Params model
and `rng` an injected `random.Random`, the only randomness a policy may use.
It must not read a clock or do I/O: the snapshot's `now_s` is the time.

A Proposal names the mode the policy wants, says why in words a human can
read in the audit log, and carries the figures it used. It may ask for its
own `hold_s` (a cost policy wants 5 minutes of evidence, a latency guard 2);
otherwise the switching controller's hold applies. Returning None means "no
opinion": the controller keeps the current mode, and a pending hold lapses.

Fields of a Params model that name a mode or a lane are typed `ModeName` or
`LaneName`, so the config loader can check that each one exists.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any, ClassVar, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict

from policies.control.snapshot import Snapshot


@dataclass(frozen=True, slots=True)
class Reference:
    """Marks a Params field whose value names a configured `kind` ("mode" or "lane")."""

    kind: str


ModeName = Annotated[str, Reference("mode")]
OptionalModeName = Annotated[str | None, Reference("mode")]
LaneName = Annotated[str, Reference("lane")]


class PolicyParams(BaseModel):
    """Base of every policy's Params model."""

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    def references(self) -> Iterator[tuple[tuple[str | int, ...], str, str]]:
        """(path inside the params, kind, name) for each field typed ModeName or LaneName."""
        for name, info in type(self).model_fields.items():
            value = getattr(self, name)
            for marker in info.metadata:
                if isinstance(marker, Reference) and value is not None:
                    yield (info.alias or name,), marker.kind, value


@dataclass(frozen=True, slots=True)
class Proposal:
    """A policy's wish: move to `target_mode`, because `reason`."""

    target_mode: str
    reason: str
    policy: str
    figures: Mapping[str, float] = field(default_factory=dict)
    hold_s: float | None = None

    def as_record(self) -> dict[str, Any]:
        return {
            "target_mode": self.target_mode,
            "reason": self.reason,
            "policy": self.policy,
            "figures": dict(self.figures),
            "hold_s": self.hold_s,
        }


@runtime_checkable
class PlansFleet(Protocol):
    """A policy that plans the replicas with the split (policies.builtin.fleet): the capacity rule sizes each
    autoscaled lane for the split it planned, not for what the lane takes while the replicas start."""

    def planned_weights(self) -> Mapping[str, float] | None: ...


@runtime_checkable
class Policy(Protocol):
    name: ClassVar[str]
    Params: ClassVar[type[PolicyParams]]

    def __init__(self, params: Any, rng: random.Random | None = None) -> None: ...

    def decide(self, snapshot: Snapshot) -> Proposal | None: ...


class BasePolicy:
    """Convenience base: keeps params and rng, and builds proposals."""

    name: ClassVar[str] = "policy"
    Params: ClassVar[type[PolicyParams]] = PolicyParams

    def __init__(self, params: PolicyParams, rng: random.Random | None = None):
        self.params = params
        self.rng = rng if rng is not None else random.Random(0)

    def propose(
        self, target_mode: str, reason: str, figures: Mapping[str, float], hold_s: float | None = None
    ) -> Proposal:
        return Proposal(target_mode=target_mode, reason=reason, policy=self.name, figures=figures, hold_s=hold_s)

    def decide(self, snapshot: Snapshot) -> Proposal | None:  # pragma: no cover - abstract
        raise NotImplementedError
