"""`room`: send to an autoscaled lane only the share of the stream its ready replicas can carry now.

An autoscaler takes minutes to bring a GPU replica up (a model to load);
until then a rush on the real-time lane waits or is refused, whatever the
capacity rule asked for. This policy covers the cold start by moving the
stream: each tick it reads, for its `lane`, the replicas that answer now
(the snapshot's `replicas`, from policies.capacity), the lane's service time
(read through the upstream's own queue, policies.capacity.service_time_s)
and the traffic (the lane's pinned arrivals stay there whatever the mode),
and proposes the mode that gives the lane the **largest share that fits**:
`(pinned + share x switchable) x service <= servers x (1 - headroom)`. The
rest of the stream goes where that mode sends it (a batch lane, a flex or
provider lane), which is the lane with room. When the replicas answer, the
largest share that fits grows again, and the stream comes back.

It proposes at once (`hold`, default 0: the rush is now) and lets the
switching controller carry the move out step by step, judged by the
objectives as any other. The service time it plans with is the
shortest a window of the lane has shown: the model's own, since a window in
which a queue drained, or calls waited at the upstream, shows it longer;
and a lane the stream left (no calls in the window) keeps it, so the stream
can come back. Never measured, or a
lane the capacity rule does not scale: no opinion.

What it does not do yet: ask for replicas for the share that would rather
be on the lane. The capacity rule sizes each lane for the traffic it gets,
so while a lane with room takes a rush, the lane this policy guards stays at
its size (cheapest when the lane with room is paid anyway); sizing for the
preferred share is the next step of issue 30.
"""

from __future__ import annotations

import math

from pydantic import Field

from policies.capacity import service_time_s
from policies.protocol import BasePolicy, LaneName, PolicyParams, Proposal
from policies.snapshot import Snapshot
from policies.units import Duration


class RoomParams(PolicyParams):
    lane: LaneName = Field("realtime", description="the autoscaled lane whose ready replicas bound its share")
    headroom: float = Field(0.2, ge=0, lt=1, description="share of the lane's servers kept free")
    hold_s: Duration = Field(0.0, alias="hold", description="how long a proposal must persist")


class RoomPolicy(BasePolicy):
    name = "room"
    Params = RoomParams
    params: RoomParams
    _service_s = math.inf  # the shortest service time a window of the lane has shown

    def decide(self, snapshot: Snapshot) -> Proposal | None:
        p = self.params
        view = snapshot.replicas.get(p.lane)
        figures = snapshot.lanes.get(p.lane)
        if view is None or figures is None:
            return None
        servers = view.ready * view.concurrency
        measured = service_time_s(figures, servers)
        if not math.isnan(measured):
            self._service_s = min(self._service_s, measured)
        service_s = self._service_s
        if math.isinf(service_s) or not snapshot.control.modes:
            return None
        pinned = figures.pinned_arrival_rate_per_s  # stays on the lane whatever the mode
        all_pinned = sum(f.pinned_arrival_rate_per_s for f in snapshot.lanes.values())
        switchable = max(snapshot.arrival_rate_per_s - all_pinned, 0.0)
        carried = servers * (1.0 - p.headroom) / service_s  # calls a second the ready replicas take
        fitting = [
            (weights[p.lane], mode)
            for mode, weights in snapshot.control.modes.items()
            if (pinned + weights[p.lane] * switchable) <= carried
        ]
        numbers = {
            "ready_replicas": float(view.ready),
            "carried_per_s": carried,
            "switchable_per_s": switchable,
            "pinned_per_s": pinned,
            "service_s": service_s,
        }
        if not fitting:  # not even the pinned traffic fits: give the lane as little as any mode does
            share, mode = min((weights[p.lane], mode) for mode, weights in snapshot.control.modes.items())
            reason = f"{p.lane}'s {view.ready} ready replicas carry {carried:.3g}/s, less than its pinned traffic"
            return self.propose(mode, reason, numbers, p.hold_s)
        share, mode = max(fitting)  # the most the lane can carry (a tie: the mode named last, by name)
        reason = (
            f"{p.lane}'s {view.ready} ready replicas carry {carried:.3g} calls/s: a share of {share:g} of "
            f"{switchable:.3g}/s switchable fits"
        )
        return self.propose(mode, reason, numbers, p.hold_s)
