"""A controller driven second by second with traffic split by its own weights."""

from __future__ import annotations

import random

from policies.control.actions import Action, Command
from policies.control.protocol import Proposal
from policies.control.switching import SwitchingController
from policies.control.switching_params import SwitchingParams
from tests.policies.helpers import MODES, feed_split, make_monitor


class Scenario:
    def __init__(self, params: SwitchingParams, initial_mode: str = "realtime", seed: int = 1):
        self.monitor = make_monitor(window_s=10.0)
        self.controller = SwitchingController(MODES, initial_mode, params)
        self.rng = random.Random(seed)
        self.now_s = 0.0
        self.log: list[Action] = []
        self.latency_s = {"realtime": 0.02, "batch": 0.2}
        self.errors: dict[str, float] = {}
        self.rate_per_s = 40.0
        self.fed: list[tuple[float, list[tuple[str, float, bool]]]] = []  # (tick time, what came before it)

    def run(
        self, seconds: float, target: str | None = None, policy: str = "test", hold_s: float | None = None
    ) -> list[Action]:
        """Advance `seconds`, one tick per second, proposing `target` each tick."""
        out: list[Action] = []
        for _ in range(int(seconds)):
            fed = feed_split(
                self.monitor,
                self.controller.weights,
                self.now_s,
                self.now_s + 1.0,
                self.rate_per_s,
                self.latency_s,
                self.rng,
                self.errors,
            )
            self.now_s += 1.0
            self.fed.append((self.now_s, fed))
            proposal = Proposal(target, f"test wants {target}", policy, {}, hold_s) if target else None
            out += self.controller.on_tick(self.snapshot(), proposal)
        self.log += out
        return out

    def command(self, command: Command) -> list[Action]:
        out = self.controller.handle(command, self.snapshot())
        self.log += out
        return out

    def requests(self, lane: str, after_s: float, until_s: float) -> list[tuple[str, float, bool]]:
        """What was fed to `lane` for the ticks in (after_s, until_s]."""
        return [r for t, fed in self.fed if after_s < t <= until_s for r in fed if r[0] == lane]

    def snapshot(self):
        return self.monitor.snapshot(self.now_s, self.controller.view())


def kinds(actions: list[Action]) -> list[str]:
    return [a.kind for a in actions]
