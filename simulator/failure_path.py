"""The request path of lanes that fail: the router's answers to errors, outages and slow calls, in virtual time.

A server lane whose service model has `failures:` (simulator.service) takes
this path for every call it makes (provider batch files do not fail here).
It plays what router.proxy, router.forward and router.microbatch do, with
their own rules:

- the call goes to the replica the lane's pool picks (policies.path.upstream_pool:
  least in flight, ejected replicas left out); one that is down refuses the
  connection, which ejects it at once (nothing was sent), and the request
  tries the next replica if the retry budget (policies.path.retry_budget) lets it
  retry; when no replica of the lane takes it, the lane records a failure
  and the request fails over to the next lane (policies.path.lane_choice) while
  it may retry and is not pinned, else it is a 502;
- a call whose answer has not come `timeout` after it was sent is a 504 (the
  replica keeps working on it until its service time is over: the server is
  busy until then), counted against the replica;
- a replica answers a share `error_rate` of its calls with a 500, which is
  relayed as it is and counted against the replica (`consecutive_errors` in
  a row eject it);
- lanes with every replica ejected are left out of lane choice and of the
  places a request may wait, as the router leaves them out;
- a merged call (a micro-batch) tries every replica of its lane, as the
  router's micro-batcher does; when none takes it, each request in it moves
  on alone (the retry budget, then the next lane, else a 502); its timeout
  is a 504 for each; its error (drawn with its first request's draw) is
  bisected as the router's is (policies.path.batching.bisects): each half is
  sent again at once, down to single requests, and a request's answer
  carries its share of every call it rode in; the batch holds its slot
  (`max_in_flight`) until its last call is over, and the flush rule hears
  how long that took.

Which calls fail is drawn per request from its own stream (`error_draws`),
so a run stays a pure function of (config, service model, trace, seed).

What must not live here: the path of lanes that do not fail (simulator.engine).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

from configs.schema import OutlierConfig
from policies.path.batching import bisects
from policies.path.retry_budget import RetryBudget
from policies.path.upstream_pool import ReplicaWalk, Upstream, UpstreamPool
from policies.pricing import item_shares
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


@dataclass(eq=False, slots=True)
class MergedRun:
    """One batch taken on a failing lane: its merged call and, when one errs, the halves sent again."""

    items: int
    started_s: float
    calls: int = 0  # its calls still under way


@dataclass(eq=False, slots=True)
class MergedCall:
    """A micro-batch sent to a replica of a failing lane, until it is answered or times out."""

    members: list[int]
    sent_s: float
    upstream: Upstream
    run: MergedRun
    state: str = "sent"  # sent -> answered | timed out


def error_draws(seed: int, n: int) -> list[float]:
    """Each request's uniform draw for `error_rate` (a call errs when its draw is below it)."""
    rng = random.Random(seed ^ 0x5EED_E77)
    return [rng.random() for _ in range(n)]


class FailurePath:
    """Mixed into the engine's run (simulator.engine._Run): the handlers of calls on lanes that fail."""

    budget: RetryBudget
    retrying: set[int]
    upstream_of: dict[int, Upstream]
    replica_of: list[int]  # the replica each request's call went to (simulator.outcome.NO_REPLICA: none)
    charged: dict[int, tuple[float, float]]  # (USD, busy s) of erred merged calls a request rode in, until it ends
    errors: Sequence[float]

    def _send_failing(self, i: int, lane, t: float, service_s: float, visited: list[str]) -> None:
        """Reach a replica (or fail over, or answer 502), then call it with a timeout."""
        failures = lane.failures
        walk = ReplicaWalk(failures.pool)
        while (upstream := walk.next(t)) is not None:
            if not failures.refuses(upstream, t):
                upstream.in_flight += 1
                self.upstream_of[i] = upstream
                self.replica_of[i] = failures.replica[upstream]
                self._call(lane, t, service_s, self.DONE, i)
                self._push(t + failures.timeout_s, self.TIMEOUT, lane, i)
                return
            walk.refused(upstream, t)
            if not self._may_retry(i):
                break
        lane.window.completed(t, None, ok=False)
        self._leave_gate(lane, t)
        following = self._next_lane(visited, self.pinned[i]) if i in self.retrying else None
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

    def _run_merged_failing(self, lane, t: float, members: list[int]) -> None:
        """A batch taken on a failing lane: its merged call, and its halves again if it errs (`lane.running`
        counts the batch until its last call is over, as the router's slot is held)."""
        run = MergedRun(sum(self.trace[j].items for j in members), t)
        self._send_merged_failing(lane, t, members, run)
        self._merged_run_over(lane, run, t)

    def _send_merged_failing(self, lane, t: float, members: list[int], run: MergedRun) -> None:
        """The first replica that takes the merged call gets it; with none, each request moves on alone."""
        failures = lane.failures
        walk = ReplicaWalk(failures.pool)
        while (upstream := walk.next(t)) is not None:
            if not failures.refuses(upstream, t):
                upstream.in_flight += 1
                run.calls += 1
                call = MergedCall(members, t, upstream, run)
                for i in members:
                    self.replica_of[i] = failures.replica[upstream]
                self._call(lane, t, self._merged_call_s(lane, members), self.BATCH_DONE, call)
                self._push(t + failures.timeout_s, self.BATCH_TIMEOUT, lane, call)
                return
            walk.refused(upstream, t)
        for i in members:
            lane.window.completed(t, None, ok=False)
            self.charged.pop(i, None)  # what its earlier calls cost is not reported: it starts over elsewhere
            visited = self.visited_of.pop(i, [lane.name])
            following = self._next_lane(visited, self.pinned[i]) if self._may_retry(i) else None
            if following is None:
                self._finish(i, lane, t, REFUSED)
            else:
                self._dispatch(i, following, self.pinned[i], t, visited, self.batchable[i])

    def _failing_merged_done(self, t: float, lane, call: MergedCall) -> None:
        """A failing lane's merged call came back: answered, or erred (then bisected, or a 500 for each)."""
        if call.state == "timed out":  # answered 504 at its timeout: the replica has only now finished with it
            self._server_freed(lane, t)
            return
        call.state = "answered"
        call.upstream.in_flight -= 1
        members = call.members
        bisected = False
        if self.errors[members[0]] < lane.failures.error_rate:
            lane.failures.pool.failed(call.upstream, t)
            bisected = self._merged_error(t, lane, call)
        else:
            lane.failures.pool.succeeded(call.upstream, t)
            self._answer_merged(t, lane, members, call.sent_s)
            self._ended(members)
        self._server_freed(lane, t)
        if bisected:  # each half again, as the router's micro-batcher sends them
            half = len(members) // 2
            self._send_merged_failing(lane, t, members[:half], call.run)
            self._send_merged_failing(lane, t, members[half:], call.run)
        call.run.calls -= 1
        self._merged_run_over(lane, call.run, t)

    def _merged_error(self, t: float, lane, call: MergedCall) -> bool:
        """A merged call's 500, billed by share: kept for the requests' next calls when it is bisected (True),
        else each request's answer."""
        members, trace, busy_s = call.members, self.trace, t - call.sent_s
        total = lane.cost(0, 0, busy_s)  # an error: no tokens read from it
        shares = item_shares([trace[j].items for j in members])
        if bisects(ERROR, len(members)):
            for j, share in zip(members, shares, strict=True):
                usd, busy = self.charged.get(j, (0.0, 0.0))
                self.charged[j] = (usd + total * share, busy + busy_s * share)
            return True
        for j, share in zip(members, shares, strict=True):
            usd, busy = self._charges(j, total * share, busy_s * share)
            lane.window.completed(t, t - self.started_s[j], ok=False, cost_usd=usd, busy_s=busy)
            self.cost[j] = usd
            self._finish(j, lane, t, ERROR)
        self._ended(members)
        return False

    def _on_merged_timeout(self, t: float, lane, call: MergedCall) -> None:
        if call.state != "sent":
            return  # answered in time
        call.state = "timed out"
        call.upstream.in_flight -= 1
        lane.failures.pool.failed(call.upstream, t)
        for j in call.members:
            self.charged.pop(j, None)  # an answer that never came reports no cost, nor do the calls before it
            lane.window.completed(t, t - self.started_s[j], ok=False)
            self._finish(j, lane, t, TIMED_OUT)
        self._ended(call.members)
        call.run.calls -= 1  # the router stops waiting; the server stays busy until the replica is done
        self._merged_run_over(lane, call.run, t)

    def _ended(self, members: list[int]) -> None:
        """Requests of a merged call that ended on this lane: no failover from it is left to them."""
        for j in members:
            self.visited_of.pop(j, None)

    def _merged_run_over(self, lane, run: MergedRun, t: float) -> None:
        """When a batch's last call is over: the flush rule hears how long it took, and its slot is free."""
        if run.calls:
            return
        self._batch_over(lane, run.items, run.started_s, t)
        self._arm(lane, t)

    def _charges(self, i: int, usd: float, busy_s: float) -> tuple[float, float]:
        """A call's share for request `i`, plus what its earlier calls cost (a merged call that erred and was
        bisected): what the router reports for the request when it is answered."""
        if not self.charged:
            return usd, busy_s
        earlier_usd, earlier_busy_s = self.charged.pop(i, (0.0, 0.0))
        return usd + earlier_usd, busy_s + earlier_busy_s

    def _released(self, i: int) -> None:
        """The request ended: give back the retry it held, if any."""
        if i in self.retrying:
            self.retrying.discard(i)
            self.budget.release()
