"""`fleet`: the split and the replicas chosen together: plan the cheapest fleet that keeps every objective,
and carry the stream meanwhile on what answers now.

Moving requests between pools paid by the hour saves nothing unless a pool
can shrink, and a pool that must grow takes a cold start (a model to load)
to do it. So this policy decides two things from one plan.

The plan. Each tick, for every configured mode, at the traffic of the window
(each lane's pinned arrivals stay where they are; the switchable ones are
split by the mode's weights), the policy prices an hour of the fleet that
mode needs:

- an autoscaled lane (policies.control.capacity): the replicas its share needs to
  keep the objectives of the classes it would serve, within its headroom and
  autoscale bounds (`replicas_for`, the rule the capacity planner uses), at
  its price per replica-hour. A lane never measured is planned with the
  slowest service time measured on any autoscaled lane (a guess that errs
  slow, so a cheaper lane gets tried; the controller's rollback judges the
  try);
- any other lane: its share of the arrivals at what one more request adds to
  its bill (policies.pricing: tokens, busy seconds; a provisioned lane adds
  nothing, it is paid anyway).

The **planned** mode is the cheapest whose every autoscaled lane keeps its
objectives within its bounds (when none does: the cheapest of those that
break the fewest lanes). The mode in force stays planned unless another is
cheaper by more than `margin` of it, so a rate near a replica boundary does
not flap the plan. The capacity rule sizes each lane for the planned split
(`planned_weights`, policies.control.protocol.PlansFleet), not for what the lane
takes while the replicas start.

The proposal. The planned mode when the replicas answering now carry it
(each autoscaled lane needs no more than it has ready); while they do not,
the cheapest mode they do carry, so a rush goes to a lane with room while
the lane it belongs on grows, and comes back once its replicas answer; when
no mode fits what is ready, the one that loads its worst lane least. In a
calm the planned mode gives the real-time lane what its pinned traffic needs
where a cheaper lane keeps the rest's objectives, and the rule lets it
shrink.

It proposes at once (`hold`, default 0: a rush is now); the switching
controller carries the move out step by step, judged by the objectives as
any other. No autoscaled lane, or none measured yet: no opinion.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace

from pydantic import Field

from policies.control.capacity import lane_demand, replicas_for
from policies.control.protocol import BasePolicy, PolicyParams, Proposal
from policies.control.snapshot import ReplicasView, Snapshot
from policies.units import Duration


class FleetParams(PolicyParams):
    margin: float = Field(
        0.1, ge=0, lt=1, description="another mode replaces the planned one when cheaper by more than this share"
    )
    hold_s: Duration = Field(0.0, alias="hold", description="how long a proposal must persist")


@dataclass(frozen=True, slots=True)
class ModePlan:
    """What one mode would need and cost an hour at the traffic of the window."""

    mode: str
    usd_per_hour: float
    broken: int  # autoscaled lanes whose objectives no replicas within bounds keep
    replicas: Mapping[str, int]  # per autoscaled lane
    fits_now: bool  # every autoscaled lane has ready the replicas its traffic needs
    load: float  # the most loaded autoscaled lane's busy share of what its ready servers may run


class FleetPolicy(BasePolicy):
    name = "fleet"
    Params = FleetParams
    params: FleetParams
    _planned: Mapping[str, float] | None = None

    def planned_weights(self) -> Mapping[str, float] | None:
        """The split the last plan chose, for the capacity rule to size every lane for."""
        return self._planned

    def decide(self, snapshot: Snapshot) -> Proposal | None:
        views = _planning_views(snapshot.replicas)
        modes = snapshot.control.modes
        if not views or not modes:
            return None
        plans = sorted((plan_mode(snapshot, mode, weights, views) for mode, weights in modes.items()), key=_rank)
        planned = self._choose(plans, snapshot.mode)
        self._planned = dict(modes[planned.mode].items())
        numbers = {f"{p.mode}.usd_per_hour": p.usd_per_hour for p in plans}
        numbers |= {f"{p.mode}.load": p.load for p in plans}
        wanted = ", ".join(f"{lane} {n}" for lane, n in planned.replicas.items())
        if planned.fits_now:
            cost = f"${planned.usd_per_hour:.3g}/h"
            reason = f"{planned.mode} is the cheapest fleet that keeps the objectives ({cost}: {wanted})"
            return self.propose(planned.mode, reason, numbers, self.params.hold_s)
        fitting = [p for p in plans if p.fits_now]
        cover = fitting[0] if fitting else min(plans, key=lambda p: (p.load, p.usd_per_hour, p.mode))
        reason = (
            f"{planned.mode} is the cheapest fleet ({wanted}) but the replicas ready carry "
            f"{'only ' + cover.mode if fitting else 'no mode; ' + cover.mode + ' loads them least'} until it is up"
        )
        return self.propose(cover.mode, reason, numbers, self.params.hold_s)

    def _choose(self, plans: list[ModePlan], in_force: str | None) -> ModePlan:
        """The cheapest plan (by `_rank`), unless the mode in force keeps as much and costs within `margin`."""
        best = plans[0]
        current = next((p for p in plans if p.mode == in_force), None)
        if current is not None and current.broken <= best.broken:
            if current.usd_per_hour <= best.usd_per_hour * (1.0 + self.params.margin):
                return current
        return best


def plan_mode(
    snapshot: Snapshot, mode: str, weights: Mapping[str, float], views: Mapping[str, ReplicasView]
) -> ModePlan:
    """Price an hour of the fleet `mode` needs at the snapshot's traffic (see the module docstring)."""
    usd = 0.0
    broken = 0
    load = 0.0
    fits_now = True
    replicas = {}
    for lane, figures in snapshot.lanes.items():
        rate, objectives = lane_demand(snapshot, lane, weights)
        view = views.get(lane)
        if view is None:
            marginal = figures.marginal_cost_per_request_usd
            usd += rate * 3600.0 * (0.0 if math.isnan(marginal) else marginal)
            continue
        need = replicas_for(view, rate, objectives)
        replicas[lane] = need.replicas
        usd += need.replicas * view.per_replica_hour
        broken += not need.keeps
        if rate > 0:
            fits_now = fits_now and need.for_traffic <= view.ready
            room = view.ready * view.concurrency * (1.0 - view.headroom)
            load = max(load, rate * view.service_s / room if room > 0 else math.inf)
    return ModePlan(mode, usd, broken, replicas, fits_now, load)


def _planning_views(views: Mapping[str, ReplicasView]) -> dict[str, ReplicasView]:
    """The autoscaled lanes, each never measured given the slowest service time measured on any; none
    measured at all: nothing to plan with."""
    measured = [v.service_s for v in views.values() if not math.isnan(v.service_s)]
    if not measured:
        return {}
    guess = max(measured)
    return {lane: v if not math.isnan(v.service_s) else replace(v, service_s=guess) for lane, v in views.items()}


def _rank(plan: ModePlan) -> tuple[int, float, str]:
    return plan.broken, plan.usd_per_hour, plan.mode
