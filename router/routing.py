"""Where a request goes: its route (by path prefix) and its lane.

Lane choice, in order:
1. a route with `pin` sends everything to that lane;
2. `X-Modeshift-Mode: <lane>` pins the request to that lane (`auto` or no
   header: switchable);
3. `X-Modeshift-Deadline-Ms: N` rules out every lane whose expected latency
   (its p95 over the metrics window) exceeds N ms; a lane with no figures yet
   is not ruled out ("no data" is not "too slow");
4. a lane whose upstreams are all ejected is left out of the draw;
5. a weighted draw from the controller's weights over the lanes still in,
   with a uniform sample from the router's seeded RNG, so a split is exact
   over many requests and reproducible from the seed.
When 3 and 4 leave no lane with a share, the request goes to the lane still
in with the lowest expected latency, or, if nothing is left, is drawn as if
nothing was ruled out.

Nothing here does I/O or reads a clock: the proxy passes in what it knows.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping
from typing import NamedTuple

from configs.schema import RouteConfig
from policies.weights import Weights
from router.errors import bad_request, no_route

MODE_HEADER = "X-Modeshift-Mode"
DEADLINE_HEADER = "X-Modeshift-Deadline-Ms"
AUTO = "auto"


class RouteTable:
    """Longest path prefix wins; a prefix matches whole path segments only."""

    def __init__(self, routes: tuple[RouteConfig, ...]):
        self.routes = sorted(routes, key=lambda r: len(r.path), reverse=True)

    def match(self, path: str) -> RouteConfig:
        for route in self.routes:
            prefix = route.path
            if prefix == "/" or path == prefix or path.startswith(prefix if prefix.endswith("/") else prefix + "/"):
                return route
        raise no_route(path, [r.path for r in self.routes])


class LaneChoice(NamedTuple):
    lane: str
    how: str  # "route", "pinned", "deadline" or "auto"

    @property
    def pinned(self) -> bool:
        return self.how in ("route", "pinned")


def requested_lane(value: str | None, lanes: Collection[str]) -> str | None:
    """The lane `X-Modeshift-Mode` pins, or None for auto."""
    if value is None or value.strip().lower() == AUTO:
        return None
    name = value.strip()
    if name not in lanes:
        raise bad_request(f"{MODE_HEADER}: {value!r} is not a lane; use one of {', '.join(sorted(lanes))} or auto")
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


def choose_lane(
    *,
    route_pin: str | None,
    header_pin: str | None,
    deadline: float | None,
    weights: Weights,
    expected_latency_s: Mapping[str, float],
    available: Collection[str],
    u: float,
) -> LaneChoice:
    if route_pin is not None:
        return LaneChoice(route_pin, "route")
    if header_pin is not None:
        return LaneChoice(header_pin, "pinned")
    lanes = weights.lanes
    if deadline is None and len(available) == len(lanes):
        return LaneChoice(weights.draw(u), "auto")  # the common case, kept short
    fast_enough = [lane for lane in lanes if not _too_slow(expected_latency_s.get(lane, math.nan), deadline)]
    allowed = [lane for lane in fast_enough if lane in available]
    how = "deadline" if len(fast_enough) < len(lanes) else "auto"
    if len(allowed) == len(lanes):
        return LaneChoice(weights.draw(u), how)
    total = math.fsum(weights[lane] for lane in allowed)
    if total > 0:
        target = u * total
        for lane in allowed:
            target -= weights[lane]
            if target < 0 and weights[lane] > 0:
                return LaneChoice(lane, how)
        return LaneChoice(max(allowed, key=weights.__getitem__), how)
    if allowed:
        return LaneChoice(min(allowed, key=lambda lane: _latency_key(expected_latency_s.get(lane, math.nan))), how)
    return LaneChoice(weights.draw(u), how)


def _too_slow(expected_s: float, deadline: float | None) -> bool:
    return deadline is not None and not math.isnan(expected_s) and expected_s > deadline


def _latency_key(expected_s: float) -> float:
    return math.inf if math.isnan(expected_s) else expected_s
