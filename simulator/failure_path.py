"""The request path of lanes that fail: the router's answers to errors, outages and slow calls, in virtual time.

A server lane whose service model has `failures:` (simulator.service) takes
this path for every call it serves alone (micro-batched calls and provider
batch files do not fail here). It plays what router.proxy and
router.forward do, with their own rules:

- the call goes to the replica the lane's pool picks (policies.upstream_pool:
  least in flight, ejected replicas left out); one that is down refuses the
  connection, which ejects it at once (nothing was sent), and the request
  tries the next replica if the retry budget (policies.retry_budget) lets it
  retry; when no replica of the lane takes it, the lane records a failure
  and the request fails over to the next lane (policies.lane_choice) while
  it may retry and is not pinned, else it is a 502;
- a call whose answer has not come `timeout` after it was sent is a 504 (the
  replica keeps working on it until its service time is over: the server is
  busy until then), counted against the replica;
- a replica answers a share `error_rate` of its calls with a 500, which is
  relayed as it is and counted against the replica (`consecutive_errors` in
  a row eject it);
- lanes with every replica ejected are left out of lane choice and of the
  places a request may wait, as the router leaves them out.

Which calls fail is drawn per request from its own stream (`error_draws`),
so a run stays a pure function of (config, service model, trace, seed).

What must not live here: the path of lanes that do not fail (simulator.engine).
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from configs.schema import OutlierConfig
from policies.retry_budget import RetryBudget
from policies.upstream_pool import Upstream, UpstreamPool
from simulator.service import Failures

REFUSED, ERROR, TIMED_OUT = 502, 500, 504


class LaneFailures:
    """One lane's replicas as the router's pool sees them, and when each refuses or errs."""

    def __init__(self, lane: str, failures: Failures, replicas: int, outlier: OutlierConfig, timeout_s: float):
        self.pool = UpstreamPool(
            tuple(f"{lane}/{k}" for k in range(replicas)),
            consecutive_errors=outlier.consecutive_errors,
            base_ejection_s=outlier.base_ejection_s,
            max_ejected_fraction=outlier.max_ejected_fraction,
        )
        self.replica = {upstream: k for k, upstream in enumerate(self.pool.upstreams)}
        self.down = failures.down
        self.error_rate = failures.error_rate
        self.timeout_s = timeout_s

    def refuses(self, upstream: Upstream, t: float) -> bool:
        k = self.replica[upstream]
        return any(o.from_s <= t < o.to_s and (o.replicas is None or k < o.replicas) for o in self.down)


def error_draws(seed: int, n: int) -> list[float]:
    """Each request's uniform draw for `error_rate` (a call errs when its draw is below it)."""
    rng = random.Random(seed ^ 0x5EED_E77)
    return [rng.random() for _ in range(n)]


class FailurePath:
    """Mixed into the engine's run (simulator.engine._Run): the handlers of calls on lanes that fail."""

    budget: RetryBudget
    retrying: set[int]
    upstream_of: dict[int, Upstream]
    errors: Sequence[float]

    def available_lanes(self, t: float) -> list[str]:
        """The lanes with a replica not ejected: what lane choice draws from."""
        return [name for name, lane in self.lanes.items() if lane.failures is None or lane.failures.pool.available(t)]

    def candidates(self, drawn, t: float) -> list[str]:
        """The lanes a request drawn to `drawn` may wait on: it, and every other lane with a replica in."""
        return [
            name
            for name, lane in self.lanes.items()
            if lane is drawn or lane.failures is None or lane.failures.pool.available(t)
        ]

    def _send_failing(self, i: int, lane, t: float, service_s: float, visited: list[str]) -> None:
        """Reach a replica (or fail over, or answer 502), then call it with a timeout."""
        failures = lane.failures
        tried: list[Upstream] = []
        while (upstream := failures.pool.pick(t, exclude=tuple(tried))) is not None:
            if not failures.refuses(upstream, t):
                upstream.in_flight += 1
                self.upstream_of[i] = upstream
                self._call(lane, t, service_s, self.DONE, i)
                self._push(t + failures.timeout_s, self.TIMEOUT, lane, i)
                return
            failures.pool.failed(upstream, t, connect=True)
            tried.append(upstream)
            if not self._may_retry(i):
                break
        lane.window.completed(t, None, ok=False)
        self._leave_gate(lane, t)
        following = None if self.pinned[i] or i not in self.retrying else self._failover(visited)
        if following is None:
            self._finish(i, lane, t, REFUSED)
            return
        self._dispatch(i, following, self.pinned[i], t, visited, self.batchable[i])

    def _may_retry(self, i: int) -> bool:
        """The request retries on (once it holds a retry from the budget, it keeps it to its end)."""
        if i in self.retrying:
            return True
        self.budget.active = self.in_flight
        if self.budget.try_acquire():
            self.retrying.add(i)
            return True
        return False

    def _failing_done(self, t: float, lane, i: int) -> bool:
        """A failing lane's call came back: False when it had timed out (the server is only freed), or when
        the replica erred (a 500, recorded here); True when it is an answer for the usual path."""
        if self.status[i]:  # answered 504 at its timeout: the replica has only now finished with it
            self._server_freed(lane, t)
            return False
        upstream = self.upstream_of.pop(i)
        upstream.in_flight -= 1
        if self.errors[i] >= lane.failures.error_rate:
            lane.failures.pool.succeeded(upstream, t)
            return True
        lane.failures.pool.failed(upstream, t)
        latency = t - self.started_s[i]
        usd = self.cost[i] = lane.cost(0, 0, latency)  # an answer, billed as the router bills it: no tokens in it
        lane.window.completed(t, latency, ok=False, cost_usd=usd, busy_s=latency)
        self._finish(i, lane, t, ERROR)
        self._server_freed(lane, t)
        self._leave_gate(lane, t)
        return False

    def _on_timeout(self, t: float, lane, i: int) -> None:
        if self.status[i]:
            return  # answered in time
        upstream = self.upstream_of.pop(i)
        upstream.in_flight -= 1
        lane.failures.pool.failed(upstream, t)
        lane.window.completed(t, t - self.started_s[i], ok=False)
        self._finish(i, lane, t, TIMED_OUT)
        self._leave_gate(lane, t)  # the server stays busy until the replica is done with the call

    def _released(self, i: int) -> None:
        """The request ended: give back the retry it held, if any."""
        if i in self.retrying:
            self.retrying.discard(i)
            self.budget.release()
