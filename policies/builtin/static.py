"""`static`: always the same mode.

The baseline in every simulator comparison (always-realtime, always-batch) and
the policy for manual operation: the mode changes only by operator command.
"""

from __future__ import annotations

from policies.control.protocol import BasePolicy, ModeName, PolicyParams, Proposal
from policies.control.snapshot import Snapshot


class StaticParams(PolicyParams):
    mode: ModeName = "realtime"


class StaticPolicy(BasePolicy):
    name = "static"
    Params = StaticParams
    params: StaticParams

    def decide(self, snapshot: Snapshot) -> Proposal | None:
        return self.propose(self.params.mode, f"static policy: always {self.params.mode}", {})
