"""`composite`: ask an ordered list of policies; let guards have the last word.

The first policy in `policies` that has an opinion gives the candidate
proposal. Then each guard in `guards` is asked in order: a guard that
proposes a different mode vetoes the candidate, and its own proposal stands
(a latency guard that sees the batch lane too slow both blocks a move to
batch and asks to go back). A guard that agrees, or has no opinion, lets the
candidate through. With no candidate, the first guard with an opinion
decides.

A `fleet` policy among the members (policies.builtin.fleet) plans the
replicas as well as a split: it is asked every tick, whoever has the first
opinion, and its plan is the one the capacity rule sizes the lanes for
(`planned_weights`).

    policy:
      type: composite
      params:
        policies: [{type: load}, {type: cost}]
        guards: [{type: latency, params: {max_latency: 200ms}}]
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Mapping

from pydantic import Field

from policies.control.protocol import BasePolicy, PlansFleet, Policy, PolicyParams, Proposal
from policies.control.snapshot import Snapshot
from policies.registry import PolicySpec


class CompositeParams(PolicyParams):
    policies: tuple[PolicySpec, ...] = Field(min_length=1, description="asked in order; the first opinion wins")
    guards: tuple[PolicySpec, ...] = Field((), description="each may veto the candidate with its own proposal")

    def references(self) -> Iterator[tuple[tuple[str | int, ...], str, str]]:
        for group in ("policies", "guards"):
            for i, spec in enumerate(getattr(self, group)):
                for path, kind, name in spec.params.references():
                    yield (group, i, "params", *path), kind, name


class CompositePolicy(BasePolicy):
    name = "composite"
    Params = CompositeParams
    params: CompositeParams

    def __init__(self, params: CompositeParams, rng: random.Random | None = None):
        super().__init__(params, rng)
        self.members = [spec.build(self.rng) for spec in params.policies]
        self.guards = [spec.build(self.rng) for spec in params.guards]

    def planned_weights(self) -> Mapping[str, float] | None:
        """The split the first member that plans the fleet planned (policies.control.protocol.PlansFleet)."""
        planner = self._planner
        return planner.planned_weights() if isinstance(planner, PlansFleet) else None

    @property
    def _planner(self) -> Policy | None:
        """The first member that plans the fleet, if any."""
        return next((m for m in self.members if isinstance(m, PlansFleet)), None)

    def decide(self, snapshot: Snapshot) -> Proposal | None:
        candidate, asked = None, 0
        for member in self.members:
            asked += 1
            if (candidate := member.decide(snapshot)) is not None:
                break
        planner = self._planner
        if planner is not None and planner not in self.members[:asked]:
            planner.decide(snapshot)  # its plan stays current, though another member's opinion came first
        for guard in self.guards:
            verdict = guard.decide(snapshot)
            if verdict is None:
                continue
            if candidate is None:
                return verdict
            if verdict.target_mode != candidate.target_mode:
                reason = (
                    f"{verdict.policy} guard vetoed {candidate.policy} -> {candidate.target_mode}: {verdict.reason}"
                )
                return Proposal(
                    target_mode=verdict.target_mode,
                    reason=reason,
                    policy=f"{self.name}/{verdict.policy}",
                    figures={**candidate.figures, **verdict.figures},
                    hold_s=verdict.hold_s,
                )
        return candidate
