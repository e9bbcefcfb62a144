"""The monitor: each lane's window and cost model, read into a Snapshot.

The drivers (router, simulator) record into `monitor.lanes[name]` as requests
arrive and complete, and call `snapshot(now_s, control_view)` once per tick.
When a request has finished for its client, the driver also calls
`served(...)` once with its traffic class, the lane it ended on and the
client's latency: those outcomes, per (class, lane), are what objectives are
judged on (a lane window counts visits, an outcome counts requests).
The monitor turns window totals into rates, percentiles and dollars: the
variable cost the driver attributed to each request plus the provisioned
(hourly) cost of the window's span.

What must not live here: decisions. The monitor measures; policies decide.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from types import MappingProxyType

from policies.control.metrics import LaneWindow, WindowReading
from policies.control.objectives import Objectives
from policies.control.snapshot import ControlView, JobsBacklog, LaneFigures, OutcomeFigures, Snapshot, freeze_lanes
from policies.pricing import CostModel

_QUANTILES = (0.5, 0.95, 0.99)


class Monitor:
    def __init__(
        self,
        costs: Mapping[str, CostModel],
        *,
        now_s: float,
        window_s: float = 60.0,
        slot_s: float = 1.0,
        objectives: Objectives | None = None,
    ):
        self.costs = dict(costs)
        # Replicas each lane is paid for now (ready and starting), set by the driver; a lane's per_replica_hour
        # is billed on them over the window (at the count of the tick: a change within a window is not split).
        self.replicas: dict[str, int] = dict.fromkeys(self.costs, 1)
        self.backlogs: dict[str, JobsBacklog] = {}  # jobs waiting with deadlines, by lane (the job runner's count)
        self.objectives = objectives if objectives is not None else Objectives()
        self.lanes: dict[str, LaneWindow] = {
            lane: LaneWindow(now_s=now_s, window_s=window_s, slot_s=slot_s) for lane in self.costs
        }
        self.outcomes: dict[tuple[str, str], LaneWindow] = {
            (traffic_class, lane): LaneWindow(now_s=now_s, window_s=window_s, slot_s=slot_s)
            for traffic_class in self.objectives
            for lane in self.costs
        }

    def before_tick(
        self,
        waiting: Mapping[str, int],
        paid: Mapping[str, int],
        backlogs: Mapping[str, JobsBacklog],
    ) -> None:
        """What a driver tells the monitor just before a control tick: each lane's requests waiting now (its
        queue depth), the replicas each lane is paid for now (ready and starting: a GPU loading is billed), and
        the jobs waiting with deadlines (the job runner's count; none in the simulator). Lanes the monitor
        does not know are left out (a reload may have dropped them)."""
        for lane, depth in waiting.items():
            if lane in self.lanes:
                self.lanes[lane].queue_depth = depth
        self.replicas.update({lane: n for lane, n in paid.items() if lane in self.replicas})
        self.backlogs = {lane: backlog for lane, backlog in backlogs.items() if lane in self.lanes}

    def served(self, now_s: float, traffic_class: str, lane: str, latency_s: float, ok: bool) -> None:
        """A request of `traffic_class` finished on `lane` for its client, `latency_s` after it arrived.

        `ok` False: it failed (any 5xx, the router's own refusals included);
        its latency is not recorded, so a fast refusal never passes for a
        fast answer.
        """
        self.outcomes[(traffic_class, lane)].served(now_s, latency_s if ok else None, ok)

    def attributed_cost_usd(
        self,
        lane: str,
        input_tokens: int = 0,
        output_tokens: int = 0,
        busy_s: float = 0.0,
        *,
        discounted: bool = True,
    ) -> float:
        """The variable cost of one request on `lane` (what the driver records).

        `discounted=False`: the provider did not run it the discounted way (a flex
        lane's answer served at the default tier), so it is booked at list price.
        """
        cost = self.costs[lane]
        if not discounted:
            cost = cost.model_copy(update={"discount": 0.0})
        return cost.request_cost_usd(input_tokens, output_tokens, busy_s)

    def snapshot(self, now_s: float, control: ControlView) -> Snapshot:
        readings = {lane: window.read(now_s) for lane, window in self.lanes.items()}
        # The traffic mix across all lanes: what any one lane would face if it
        # took all of it (the basis of each lane's estimated cost per request).
        completions = sum(r.window.completions for r in readings.values())
        arrivals_per_s = sum(_rate(r.window.arrivals, r.span_s) for r in readings.values())
        mix_input = _ratio(sum(r.window.input_tokens for r in readings.values()), completions)
        mix_output = _ratio(sum(r.window.output_tokens for r in readings.values()), completions)
        # A lane that served nothing has no busy time of its own to price; the
        # other lanes' mean stands in (NaN when no lane served anything).
        mix_busy = _ratio(sum(r.window.busy_s for r in readings.values()), completions)
        figures = {
            lane: self._figures(lane, reading, arrivals_per_s, mix_input, mix_output, mix_busy)
            for lane, reading in readings.items()
        }
        outcomes = {}
        for (traffic_class, lane), window in self.outcomes.items():
            reading = window.read(now_s)
            outcomes[(traffic_class, lane)] = OutcomeFigures(traffic_class, lane, reading.window, reading.cumulative)
        return Snapshot(
            now_s=now_s,
            lanes=freeze_lanes(figures),
            arrival_rate_per_s=arrivals_per_s,
            control=control,
            objectives=self.objectives,
            outcomes=MappingProxyType(outcomes),
            backlogs=MappingProxyType(dict(self.backlogs)),
        )

    def _figures(
        self,
        lane: str,
        reading: WindowReading,
        arrivals_per_s: float,
        mix_input: float,
        mix_output: float,
        mix_busy: float,
    ) -> LaneFigures:
        w = reading.window
        span = reading.span_s
        cost_model = self.costs[lane]
        p50, p95, p99 = w.latency.quantiles(_QUANTILES)
        replicas = self.replicas.get(lane, 1)
        cost = w.cost_usd + cost_model.idle_cost_usd(span, replicas)
        busy_s = _ratio(w.busy_s, w.completions) if w.completions else mix_busy
        estimate = cost_model.estimate_per_request_usd(
            rate_per_s=arrivals_per_s,
            replicas=replicas,
            input_tokens=mix_input,
            output_tokens=mix_output,
            busy_s=busy_s,
        )
        return LaneFigures(
            lane=lane,
            span_s=span,
            arrivals=w.arrivals,
            completions=w.completions,
            errors=w.errors,
            arrival_rate_per_s=_rate(w.arrivals, span),
            pinned_arrival_rate_per_s=_rate(w.pinned_arrivals, span),
            throughput_per_s=_rate(w.completions, span),
            items_per_s=_rate(w.items, span),
            items_per_busy_s=_ratio(w.items, w.busy_s),
            input_tokens_per_s=_rate(w.input_tokens, span),
            output_tokens_per_s=_rate(w.output_tokens, span),
            error_rate=w.error_rate,
            p50_s=p50,
            p95_s=p95,
            p99_s=p99,
            mean_latency_s=w.latency.mean(),
            in_flight=reading.in_flight,
            queue_depth=reading.queue_depth,
            cost_usd=cost,
            cost_per_request_usd=_ratio(cost, w.completions),
            estimated_cost_per_request_usd=estimate,
            marginal_cost_per_request_usd=cost_model.marginal_per_request_usd(mix_input, mix_output, busy_s),
            cumulative=reading.cumulative,
        )


def _rate(count: float, span_s: float) -> float:
    # A window younger than a second would turn one request into a huge rate.
    return count / max(span_s, 1.0)


def _ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator else math.nan
