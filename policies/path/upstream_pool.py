"""A lane's upstream servers: least-in-flight choice and passive outlier ejection (the router's and the simulator's).

Choice: the upstream with the fewest requests in flight among those not
ejected; ties go round-robin, so an idle pool still spreads its load.

Ejection (Envoy's passive outlier detection, with its defaults): an upstream
that fails `consecutive_errors` times in a row (a 5xx or a connect error) is
taken out for `base_ejection_s` times the number of times it has been
ejected, capped at `MAX_EJECTION_MULTIPLIER`; the multiplier falls back by one
for every `base_ejection_s` the upstream then stays healthy. At most
`max_ejected_fraction` of the pool is out at once, but always at least one
upstream may be ejected, so a single-server lane can still be marked down.
When every upstream is out, the pool is in panic (Envoy's term): `pick`
ignores ejection rather than refuse, because a request that must use this
lane is better tried than refused.

A connect failure (refused, or no connection within the connect timeout)
ejects at once: nothing was sent, so the request is retried elsewhere, and
least-in-flight would otherwise keep choosing the dead upstream, which has
nothing in flight, until its fifth failure. An upstream back from an
ejection is half-open: it gets one request at a time (a probe) until one
succeeds, and a failed probe ejects it again at once, rather than the whole
stream finding out that it is still down.

The members can change while the pool serves (`replace`: DNS discovery, the
admin API): an upstream that stays keeps its state (in flight, errors,
ejection); one that goes takes no new calls, and the calls it has finish,
since each holds its Upstream. One that joins is **starting** until it
first answers (an autoscaler's new replica may be listed before its model
has loaded): a refused connection then takes it out for `STARTING_RETRY_S`
only, with no ejection counted and outside the ejected share, so it takes
calls within that long of answering.

Time comes in as `now_s`; nothing here reads a clock or does I/O. The
router's pool holds its upstream URLs; the simulator's holds a lane's
replicas, so a failing replica is ejected there by the same rule.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

MAX_EJECTION_MULTIPLIER = 10
STARTING_RETRY_S = 1.0  # a joining upstream that refused a connection is tried again this much later


@dataclass(eq=False, slots=True)
class Upstream:
    address: str  # the router's upstream URL; the simulator's replica name
    base: str = field(init=False)
    in_flight: int = 0
    consecutive_errors: int = 0
    ejections: int = 0
    ejected_until_s: float = -math.inf
    healthy_since_s: float = 0.0
    probing: bool = False  # back from an ejection, not yet proven: one request at a time
    starting: bool = False  # joined while the pool served, and has not answered yet

    def __post_init__(self) -> None:
        # The upstream URL of a request is `base` + the request's path and
        # query; a base path ("http://host/api") prefixes every request.
        self.base = self.address.rstrip("/")

    def ejected(self, now_s: float) -> bool:
        return now_s < self.ejected_until_s

    def describe(self, now_s: float) -> dict[str, Any]:
        return {
            "url": self.base,
            "in_flight": self.in_flight,
            "consecutive_errors": self.consecutive_errors,
            "ejected": self.ejected(now_s),
            "ejected_for_s": max(self.ejected_until_s - now_s, 0.0),
            "ejections": self.ejections,
            "probing": self.probing and not self.ejected(now_s),
            "starting": self.starting,
        }


class UpstreamPool:
    def __init__(
        self,
        urls: tuple[str, ...],
        *,
        consecutive_errors: int = 5,
        base_ejection_s: float = 30.0,
        max_ejected_fraction: float = 0.1,
    ):
        self.upstreams = [Upstream(url) for url in urls]
        self.consecutive_errors = consecutive_errors
        self.base_ejection_s = base_ejection_s
        self.max_ejected_fraction = max_ejected_fraction
        self.max_ejected = max(1, math.floor(max_ejected_fraction * len(self.upstreams)))
        self._next = 0
        self._last_ejection_ends_s = -math.inf  # past it, nobody is ejected: the per-request check is one comparison

    def replace(self, addresses: Sequence[str]) -> tuple[list[str], list[str]]:
        """Make the pool these upstreams, in this order: (added, removed) addresses. ValueError for none: a lane
        with no upstream could only refuse, so the caller keeps the ones it has."""
        wanted = list(dict.fromkeys(addresses))
        if not wanted:
            raise ValueError("a lane needs at least one upstream")
        kept = {u.address: u for u in self.upstreams}
        added = [address for address in wanted if address not in kept]
        removed = [address for address in kept if address not in wanted]
        self.upstreams = [kept.get(address) or Upstream(address, starting=True) for address in wanted]
        self.max_ejected = max(1, math.floor(self.max_ejected_fraction * len(self.upstreams)))
        return added, removed

    def available(self, now_s: float) -> bool:
        """Whether some upstream is not ejected."""
        return now_s >= self._last_ejection_ends_s or any(not u.ejected(now_s) for u in self.upstreams)

    def pick(self, now_s: float, exclude: tuple[Upstream, ...] = ()) -> Upstream | None:
        """The least-loaded upstream not ejected and not in `exclude` (panic: ignore ejection)."""
        upstreams = self.upstreams
        n = len(upstreams)
        start = self._next % n
        self._next += 1
        best = panic = None
        for i in range(n):
            u = upstreams[(start + i) % n]
            if u in exclude:
                continue
            if u.ejected(now_s) or (u.probing and u.in_flight > 0):
                if panic is None or u.in_flight < panic.in_flight:
                    panic = u
            elif best is None or u.in_flight < best.in_flight:
                best = u
        return best if best is not None else panic

    def succeeded(self, upstream: Upstream, now_s: float) -> None:
        upstream.consecutive_errors = 0
        upstream.probing = False
        upstream.starting = False
        if upstream.ejections and now_s - upstream.healthy_since_s >= self.base_ejection_s:
            upstream.ejections -= 1
            upstream.healthy_since_s = now_s

    def failed(self, upstream: Upstream, now_s: float, *, connect: bool = False) -> bool:
        """Count a 5xx or a broken answer (`connect`: no connection at all); True when it ejected the upstream."""
        if upstream.starting and connect:  # not up yet: try it again shortly, counting nothing against it
            upstream.ejected_until_s = max(upstream.ejected_until_s, now_s + STARTING_RETRY_S)
            self._last_ejection_ends_s = max(self._last_ejection_ends_s, upstream.ejected_until_s)
            return True
        upstream.consecutive_errors += 1
        at_once = connect or (upstream.probing and not upstream.ejected(now_s))
        if (upstream.consecutive_errors < self.consecutive_errors and not at_once) or upstream.ejected(now_s):
            return False
        if sum(u.ejected(now_s) and not u.starting for u in self.upstreams) >= self.max_ejected:
            return False
        upstream.ejections = min(upstream.ejections + 1, MAX_EJECTION_MULTIPLIER)
        upstream.ejected_until_s = now_s + self.base_ejection_s * upstream.ejections
        self._last_ejection_ends_s = max(self._last_ejection_ends_s, upstream.ejected_until_s)
        upstream.healthy_since_s = upstream.ejected_until_s
        upstream.consecutive_errors = 0
        upstream.probing = True
        return True

    def describe(self, now_s: float) -> list[dict[str, Any]]:
        return [u.describe(now_s) for u in self.upstreams]


class ReplicaWalk:
    """One call's way through a lane's replicas, as both drivers take it.

    `next` is the replica the pool picks (least in flight, ejected ones left out) among those this call has
    not tried; a replica that refused the connection is ejected at once, since nothing was sent, and the call
    goes on to the next (`refused`). None: no replica of the lane is left to try.
    """

    __slots__ = ("pool", "tried")

    def __init__(self, pool: UpstreamPool):
        self.pool = pool
        self.tried: tuple[Upstream, ...] = ()

    def next(self, now_s: float) -> Upstream | None:
        return self.pool.pick(now_s, exclude=self.tried)

    def refused(self, upstream: Upstream, now_s: float) -> None:
        self.pool.failed(upstream, now_s, connect=True)
        self.tried += (upstream,)
