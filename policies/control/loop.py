"""The control loop: measure, ask the policy, let the controller decide the weights and the capacity rule
the replicas.

Both drivers own one ControlLoop. The router calls `tick(now_s)` from an
asyncio task every `switching.tick` and carries out the returned actions; the
simulator calls it from its event heap with virtual time. The snapshot of the
last tick stays readable as `last_snapshot` (the router's deadline routing
reads each lane's expected latency from it). Commands from the
admin API go through `command()`, so they see the same snapshot a tick would.

    actions = loop.tick(now_s)
    for action in actions:          # SetWeights, TransitionStarted, RolledBack ...
        apply(action)               # the driver: swap weights, log, count, trace
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace

from policies.control.actions import Action, Command
from policies.control.capacity import CapacityPlanner
from policies.control.monitor import Monitor
from policies.control.protocol import PlansFleet, Policy
from policies.control.snapshot import Snapshot
from policies.control.switching import SwitchingController
from policies.control.weights import Weights


class ControlLoop:
    def __init__(
        self, monitor: Monitor, policy: Policy, controller: SwitchingController, capacity: CapacityPlanner | None = None
    ):
        self.monitor = monitor
        self.policy = policy
        self.controller = controller
        self.capacity = capacity  # lanes with autoscale: (policies.control.capacity); None: no lane has it
        self.last_snapshot: Snapshot | None = None

    @property
    def weights(self) -> Weights:
        return self.controller.weights

    def snapshot(self, now_s: float, ready: Mapping[str, int] | None = None) -> Snapshot:
        snapshot = self.monitor.snapshot(now_s, self.controller.view())
        if self.capacity is not None:  # the replicas answering now and what the rule plans with
            if ready is not None:
                self.capacity.measure(now_s, snapshot.lanes, ready)
            snapshot = replace(snapshot, replicas=self.capacity.views(ready))
        return snapshot

    def tick(self, now_s: float, ready: Mapping[str, int] | None = None) -> list[Action]:
        """One tick at `now_s`; `ready`: replicas answering now per autoscaled lane (the driver's count)."""
        self.last_snapshot = snapshot = self.snapshot(now_s, ready)
        actions = self.controller.on_tick(snapshot, self.policy.decide(snapshot))
        if self.capacity is not None:
            sized_for = self.policy.planned_weights() if isinstance(self.policy, PlansFleet) else None
            actions += self.capacity.decide(snapshot, ready if ready is not None else self.capacity.desired, sized_for)
        return actions

    def command(self, command: Command, now_s: float) -> list[Action]:
        return self.controller.handle(command, self.snapshot(now_s))
