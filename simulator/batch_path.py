"""The request path of micro-batching lanes, in virtual time: offers to the lane's batcher, flushes, merged calls.

A request on a batchable route drawn to a lane with `batching:` is offered
to the lane's policies.path.batching Batcher (the router's own, with the lane's
flush rule); a flush takes a batch when the rule says so and at most
`max_in_flight` merged calls run at once; a merged call's answer ends every
request in it, its cost and busy time shared out by items
(policies.pricing.item_shares), as the router's micro-batcher does.

Mixed into the engine's run (simulator.engine._Run), whose state and event
heap it uses. What must not live here: lanes without a batcher (simulator.engine).
"""

from __future__ import annotations

import math

from policies.path.batching import BatchItem
from policies.pricing import item_shares
from simulator.lane_run import LaneRun

OK = 200


class BatchPath:
    """The handlers of merged calls (offer, arm, flush, done); `self` is the engine's run."""

    def _offer(self, i: int, lane: LaneRun, t: float) -> bool:
        request = self.trace[i]
        lane.window.arrived(t, self.pinned[i])
        self.started_s[i] = t
        self.lane_of[i] = lane.index
        if not lane.batcher.offer(BatchItem(payload=i, items=request.items, tokens=request.input_tokens), t):
            lane.window.completed(t, 0.0, ok=False)
            return False
        self._arm(lane, t)
        return True

    def _arm(self, lane: LaneRun, t: float) -> None:
        """Wake the lane's batcher when its next batch is due, if a merged call may start."""
        if lane.running >= lane.limit:
            return
        due = lane.batcher.due_at()
        if due is None or due == math.inf:
            return
        due = max(due, t)
        if due < lane.armed_at:
            lane.armed_at = due
            self._push(due, self.FLUSH, lane, due)

    def _on_flush(self, t: float, lane: LaneRun, armed_for: float) -> None:
        if armed_for != lane.armed_at:
            return  # superseded by an earlier wake-up
        lane.armed_at = math.inf
        if lane.running >= lane.limit:
            return
        taken = lane.batcher.take(t)
        if taken.batch:
            members = [item.payload for item in taken.batch]
            lane.running += 1
            if lane.failures is not None:
                self._run_merged_failing(lane, t, members)
            else:
                self._call(lane, t, self._merged_call_s(lane, members), self.BATCH_DONE, (members, t))
        self._arm(lane, t)

    def _merged_call_s(self, lane: LaneRun, members: list[int]) -> float:
        """The service time of one merged call of `members`, drawn with its first request's draw."""
        trace = self.trace
        items = sum(trace[j].items for j in members)
        input_tokens = sum(trace[j].input_tokens for j in members)
        output_tokens = sum(trace[j].output_tokens for j in members)
        return lane.call_s(items, input_tokens, output_tokens, self.z[members[0]])

    def _on_batch_done(self, t: float, lane: LaneRun, payload) -> None:
        if lane.failures is not None:  # simulator.failure_path: it may have timed out, erred, or be split
            self._failing_merged_done(t, lane, payload)
            return
        members, sent_s = payload
        self._answer_merged(t, lane, members, sent_s)
        self._batch_over(lane, sum(self.trace[j].items for j in members), sent_s, t)
        self._server_freed(lane, t)
        self._arm(lane, t)

    def _batch_over(self, lane: LaneRun, items: int, sent_s: float, t: float) -> None:
        """A batch's last call is over: the flush rule hears how long it took, the pace how much it served,
        and its merged-call slot is free."""
        lane.batcher.rule.observe(items, t - sent_s)
        lane.pace.ended(items, t, lane.running)
        lane.running -= 1

    def _answer_merged(self, t: float, lane: LaneRun, members: list[int], sent_s: float) -> None:
        """A merged call's 2xx: each request in it answered with its share of the call's cost and busy time."""
        trace = self.trace
        # The router reads the input tokens of a merged answer; a batch call's
        # busy time is its time upstream, shared out by items.
        input_tokens = sum(trace[j].input_tokens for j in members)
        busy_s = t - sent_s
        total = lane.cost(input_tokens, 0, busy_s)
        for j, share in zip(members, item_shares([trace[j].items for j in members])):
            usd, busy = self._charges(j, total * share, busy_s * share)
            lane.window.completed(
                t,
                t - self.started_s[j],
                items=trace[j].items,
                input_tokens=trace[j].input_tokens,
                cost_usd=usd,
                busy_s=busy,
            )
            self.cost[j] = usd
            self._finish(j, lane, t, OK)
