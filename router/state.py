"""The router's state for one config, and how a reload carries it over.

A `RouterState` is everything one config makes: the lanes (pools, gates,
clients), the route table, the control loop and the lane-draw RNG. A reload
decides lane by lane what to keep, builds only what is new, and swaps the
whole state in at once; requests already running finish on the state they
started with.

What a reload keeps, so that it never throws traffic around:
- a lane whose config (and the jobs' share) is unchanged keeps its runtime
  (pool, gate, client, ejections); a changed one gets a new runtime and the old one is closed
  once its in-flight requests are done;
- every lane that still exists keeps its metrics window when the window
  settings are unchanged;
- the control loop (policy, controller, weights, any transition in
  progress) is kept whole when nothing it depends on changed (lane names and
  costs, modes, policy, switching, metrics). Otherwise a new controller
  starts in the mode in force, or, in the middle of a transition, in the mode
  the transition started from (the safe side, as a rollback would), or in
  the new file's initial mode when that mode is gone.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from configs.assembly import build_control_loop, mode_weights
from configs.schema import ModeshiftConfig
from policies.control.loop import ControlLoop
from policies.control.snapshot import JobsBacklog
from policies.control.switching import SwitchingController
from policies.path.retry_budget import RetryBudget
from router.claims import Gatekeeper
from router.lanes import Lane
from router.routing import RouteTable


@dataclass(eq=False)
class RouterState:
    config: ModeshiftConfig
    lanes: dict[str, Lane]
    routes: RouteTable
    control: ControlLoop
    draw: random.Random
    retries: RetryBudget = field(default_factory=RetryBudget)

    def ready_replicas(self, now_s: float) -> dict[str, int]:
        """Each lane's replicas that take calls now: its upstreams, less those ejected for failing."""
        return {
            name: sum(not upstream.ejected(now_s) for upstream in lane.pool.upstreams)
            for name, lane in self.lanes.items()
        }

    def before_tick(self, backlogs: Mapping[str, JobsBacklog]) -> None:
        """The monitor's preamble to a control tick (policies.control.monitor.Monitor.before_tick), by a lone
        router and a cluster replica alike. A lane is paid for its upstreams, ejected ones included, or the
        desired count where an autoscaler brings more up."""
        planner = self.control.capacity
        desired = planner.desired if planner is not None else {}
        self.control.monitor.before_tick(
            waiting={name: lane.waiting for name, lane in self.lanes.items()},
            paid={name: max(len(lane.pool.upstreams), desired.get(name, 0)) for name, lane in self.lanes.items()},
            backlogs=backlogs,
        )

    @cached_property
    def gatekeeper(self) -> Gatekeeper:
        """Who may claim what (router.claims), made once per state."""
        return Gatekeeper(self.config.access, self.control.monitor.objectives)

    @cached_property
    def live_lanes(self) -> tuple[str, ...]:
        """The lanes that take live requests (all but provider batch lanes), in config order; made once per state."""
        return tuple(name for name, lane in self.lanes.items() if lane.live)


@dataclass(frozen=True, slots=True)
class Carried:
    """What a reload kept and what it replaced, for the decision log."""

    kept_lanes: tuple[str, ...]
    replaced_lanes: tuple[Lane, ...]
    kept_control: bool
    mode: str | None
    abandoned_transition: str | None


def build_state(config: ModeshiftConfig, *, now_s: float, clock: Callable[[], float] = time.monotonic) -> RouterState:
    control = build_control_loop(config, now_s=now_s, rng=random.Random(config.server.seed))
    lanes = {name: _lane(name, config, control, clock) for name in config.lanes}
    return RouterState(config, lanes, RouteTable(config.routes), control, random.Random(config.server.seed))


def _lane(name: str, config: ModeshiftConfig, control: ControlLoop, clock: Callable[[], float]) -> Lane:
    return Lane(name, config.lanes[name], control.monitor.lanes[name], clock, job_share=config.jobs.max_share)


def _control_inputs(config: ModeshiftConfig) -> tuple[Any, ...]:
    return (
        {name: (lane.cost, lane.autoscale, lane.replica) for name, lane in config.lanes.items()},
        config.modes,
        config.initial_mode,
        config.policy,
        config.switching,
        config.metrics,
    )


def carry_over(
    old: RouterState, config: ModeshiftConfig, *, now_s: float, clock: Callable[[], float] = time.monotonic
) -> tuple[RouterState, Carried]:
    """A state for `config` that keeps what it can of `old` (see the module docstring).

    Decides what to keep first, then builds only what is new: no lane runtime
    (pool, client, micro-batcher) is made only to be thrown away.
    """
    kept_control = _control_inputs(old.config) == _control_inputs(config)
    same_share = old.config.jobs.max_share == config.jobs.max_share
    kept = {
        name: lane
        for name, lane in old.lanes.items()
        if name in config.lanes and config.lanes[name] == lane.config and same_share
    }
    replaced = tuple(lane for name, lane in old.lanes.items() if name not in kept)
    if kept_control:
        control, draw, abandoned = old.control, old.draw, None
    else:
        control, abandoned = _restarted_control(old, config, now_s)
        draw = random.Random(config.server.seed)
    lanes = {}
    for name in config.lanes:
        lane = kept.get(name) or _lane(name, config, control, clock)
        lane.window = control.monitor.lanes[name]
        lanes[name] = lane
    state = RouterState(config, lanes, RouteTable(config.routes), control, draw, old.retries)
    return state, Carried(tuple(kept), replaced, kept_control, control.controller.mode, abandoned)


def _restarted_control(old: RouterState, config: ModeshiftConfig, now_s: float) -> tuple[ControlLoop, str | None]:
    """A new control loop in the mode in force (or the one a transition started from), keeping the windows it can."""
    control = build_control_loop(config, now_s=now_s, rng=random.Random(config.server.seed))
    t = old.control.controller.view().transition
    wanted = old.control.controller.mode if t is None else t.from_mode
    if wanted is not None and wanted in config.modes and wanted != config.initial_mode:
        control.controller = SwitchingController(mode_weights(config), wanted, config.switching)
    if config.metrics == old.config.metrics:
        for name in config.lanes:
            if name in old.control.monitor.lanes:
                control.monitor.lanes[name] = old.control.monitor.lanes[name]
    return control, (f"{t.from_mode} -> {t.to_mode}" if t is not None else None)
