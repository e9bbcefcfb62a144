"""The router's side of routing: the route table, and the lane headers.

`RouteTable` answers 404 for a path no route takes; `X-Modeshift-Mode`
pins a request to a lane (`auto` or no header: switchable),
`X-Modeshift-Deadline-Ms` gives it a deadline and `X-Modeshift-Priority`
names its traffic class (policies.control.objectives). Choosing the lane from those
is policies.path.lane_choice, shared with the simulator (re-exported here).

Nothing here does I/O or reads a clock: the proxy passes in what it knows.
"""

from __future__ import annotations

import math
from collections.abc import Collection

from configs.routes import RoutesByPrefix
from configs.schema import RouteConfig
from policies.path.lane_choice import LaneChoice, choose_lane
from router.errors import bad_request, no_route
from router.headers import DEADLINE_HEADER, MODE_HEADER, PRIORITY_HEADER

__all__ = [
    "LaneChoice",
    "RouteTable",
    "choose_lane",
    "deadline_s",
    "requested_class",
    "requested_lane",
]

AUTO = "auto"


class RouteTable(RoutesByPrefix):
    """The route table, answering 404 (with the routes there are) for a path no route takes."""

    def match(self, path: str) -> RouteConfig:
        route = self.find(path)
        if route is None:
            raise no_route(path, [r.path for r in self.routes])
        return route


def requested_lane(value: str | None, lanes: Collection[str]) -> str | None:
    """The lane `X-Modeshift-Mode` pins, or None for auto."""
    if value is None or value.strip().lower() == AUTO:
        return None
    name = value.strip()
    if name not in lanes:
        raise bad_request(f"{MODE_HEADER}: {value!r} is not a lane; use one of {', '.join(sorted(lanes))} or auto")
    return name


def requested_class(value: str | None, classes: Collection[str]) -> str | None:
    """The traffic class `X-Modeshift-Priority` names, or None when absent."""
    if value is None:
        return None
    name = value.strip()
    if name not in classes:
        # The classes are not listed: a client learns nothing of what others may claim.
        raise bad_request(f"{PRIORITY_HEADER}: {value!r} is not a traffic class of this router")
    return name


def deadline_s(value: str | None) -> float | None:
    """The request's deadline from `X-Modeshift-Deadline-Ms`, in seconds."""
    if value is None:
        return None
    try:
        ms = float(value)
    except ValueError:
        ms = math.nan
    if not math.isfinite(ms) or ms <= 0:
        raise bad_request(f"{DEADLINE_HEADER}: {value!r} is not a positive number of milliseconds")
    return ms / 1000.0
