"""Which lane one request goes to: pins, deadlines, ejected lanes, then the weights.

Lane choice, in order:
1. a route with `pin` sends everything to that lane;
2. a request pinned by its client (the router's `X-Modeshift-Mode: <lane>`,
   a trace's `mode`) goes to that lane;
3. a request with a deadline rules out every lane whose expected latency
   (its p95 over the metrics window) exceeds it; a lane with no figures yet
   is not ruled out ("no data" is not "too slow");
4. a lane whose upstreams are all ejected is left out of the draw;
5. a weighted draw from the controller's weights over the lanes still in,
   with a uniform sample `u` from the driver's seeded RNG, so a split is
   exact over many requests and reproducible from the seed.
When 3 and 4 leave no lane with a share, the request goes to the lane still
in with the lowest expected latency, or, if nothing is left, is drawn as if
nothing was ruled out.

`lanes_in` is which lanes a request may be drawn to, wait on, or fail over
to: the live ones (a provider batch lane takes jobs only) with an upstream
not ejected.

`expected_latency_s` is what a deadline is held against: each lane's p95 in
the last snapshot (NaN for a lane with no figures yet). `failover_lane` is
the lane a request tries next after its lane failed or overflowed: the one
with the largest weight among those not yet visited; `next_lane` adds when
it may go on at all (not pinned; a lane that turned it away must spill).

The router and the simulator both call `choose_lane`, `lanes_in` and
`next_lane`, so a trace request lands where the live router would have sent
it. Nothing here reads headers, a clock or a socket.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping
from typing import NamedTuple, Protocol

from policies.control.snapshot import Snapshot
from policies.control.weights import Weights
from policies.path.upstream_pool import UpstreamPool


class LaneChoice(NamedTuple):
    lane: str
    how: str  # "route", "pinned", "deadline" or "auto"

    @property
    def pinned(self) -> bool:
        return self.how in ("route", "pinned")


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


def failover_lane(weights: Weights, lanes: Collection[str], visited: Collection[str]) -> str | None:
    """The lane not yet visited with the largest weight (the first such in `lanes` on a tie), or None."""
    rest = [lane for lane in lanes if lane not in visited]
    return max(rest, key=weights.__getitem__) if rest else None


def next_lane(
    weights: Weights, lanes: Collection[str], visited: Collection[str], *, pinned: bool, spills: bool = True
) -> str | None:
    """Where a request goes after its lane turned it away (full, its queue timed out) or failed it: nowhere
    when it is pinned, or when the lane turned it away and does not spill (`spills`: its 503 stands); else
    the failover lane."""
    if pinned or not spills:
        return None
    return failover_lane(weights, lanes, visited)


def expected_latency_s(snapshot: Snapshot | None) -> dict[str, float]:
    """Each lane's p95 over the last window, the latency a deadline is held against (empty before a tick)."""
    if snapshot is None:
        return {}
    return {lane: figures.p95_s for lane, figures in snapshot.lanes.items()}


class LaneOfPool(Protocol):
    """What `lanes_in` reads of a driver's lane (router.lanes.Lane, simulator.lane_run.LaneRun)."""

    @property
    def live(self) -> bool:
        """It takes live requests (a provider batch lane takes jobs only)."""

    @property
    def pool(self) -> UpstreamPool | None:
        """Its upstreams as the pool ejects them; None: a lane modelled without replicas to eject."""


def lanes_in(lanes: Mapping[str, LaneOfPool], now_s: float, drawn: object = None) -> list[str]:
    """The live lanes with an upstream not ejected, in config order, and `drawn` (the lane a request was
    drawn to, which it may still wait on) whatever its upstreams."""
    return [
        name
        for name, lane in lanes.items()
        if lane is drawn or (lane.live and (lane.pool is None or lane.pool.available(now_s)))
    ]
