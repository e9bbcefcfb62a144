"""A request's arrival, the first step of its visit: the lane it is drawn to and the class it is judged as.

`arrive` takes what the request says of itself (the router: the claims its
credential may make, screened by policies.path.access; the simulator: the
trace's fields) and what the route says, and returns the lane choice
(policies.path.lane_choice: pins, then a deadline held against each lane's
p95 in the last snapshot, then the weights over the lanes with an upstream
in) and the traffic class (policies.control.objectives: its objective and
its place in lane queues). The router and the simulator both call it, so a
trace request arrives as the live router would have taken it.

What must not live here: reading headers or bodies (the router), placing
the request in a lane's queue (policies.path.admission).
"""

from __future__ import annotations

from collections.abc import Collection

from policies.control.objectives import Objectives
from policies.control.snapshot import Snapshot
from policies.control.weights import Weights
from policies.path.lane_choice import LaneChoice, choose_lane, expected_latency_s


def arrive(
    *,
    route_pin: str | None,
    route_class: str | None,
    header_pin: str | None,
    header_class: str | None,
    deadline_s: float | None,
    snapshot: Snapshot | None,
    weights: Weights,
    available: Collection[str],
    objectives: Objectives,
    u: float,
) -> tuple[LaneChoice, str]:
    """The lane one request is drawn to and its traffic class; `u`: a uniform sample from the driver's seeded RNG.
    A plain pair: it is made once per request on both drivers' hot path."""
    choice = choose_lane(
        route_pin=route_pin,
        header_pin=header_pin,
        deadline=deadline_s,
        weights=weights,
        expected_latency_s=expected_latency_s(snapshot) if deadline_s is not None else {},
        available=available,
        u=u,
    )
    traffic_class = objectives.classify(pinned=choice.pinned, route_class=route_class, header_class=header_class)
    return choice, traffic_class
