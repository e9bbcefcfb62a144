"""GET /metrics on the admin listener: the router's figures in Prometheus' text format.

Read at scrape time from what the router keeps anyway (the lanes' windows,
the route stats, the controller, the decision log), through a custom
collector, so serving requests pays nothing for exposition. Names follow
Prometheus conventions: base units (seconds, dollars), `_total` counters.

    modeshift_requests_total{route,lane,code}            counter
    modeshift_request_duration_seconds{route,lane}       histogram
    modeshift_lane_requests_total{lane,outcome}          counter (ok | error)
    modeshift_cost_usd_total{lane}                       counter, attributed cost
    modeshift_tokens_total{lane,kind}                    counter (input | output)
    modeshift_in_flight{lane}, modeshift_queue_depth{lane}
    modeshift_lane_weight{lane}                          the share of auto traffic now
    modeshift_mode{mode}                                 1 for the mode in force
    modeshift_transitions_total, modeshift_rollbacks_total{cause}
    modeshift_upstream_ejected{lane,upstream}            1 while ejected

Histogram buckets come from the router's log-spaced histograms; each `le`
count is exact to within their 1% relative accuracy.

What must not live here: recording (router.route_stats, policies.metrics).
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric

from router.runtime import Runtime

BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class RouterCollector:
    def __init__(self, runtime: Runtime):
        self.runtime = runtime

    def collect(self) -> Iterator[Metric]:
        runtime = self.runtime
        state = runtime.state
        now = runtime.now_s()
        yield from self._routes()

        lane_requests = CounterMetricFamily(
            "modeshift_lane_requests", "Requests each lane finished, by outcome.", labels=["lane", "outcome"]
        )
        cost = CounterMetricFamily("modeshift_cost_usd", "Attributed cost in US dollars.", labels=["lane"])
        tokens = CounterMetricFamily("modeshift_tokens", "Tokens counted, by kind.", labels=["lane", "kind"])
        in_flight = GaugeMetricFamily("modeshift_in_flight", "Requests in flight on the lane.", labels=["lane"])
        queued = GaugeMetricFamily("modeshift_queue_depth", "Requests waiting for the lane.", labels=["lane"])
        weight = GaugeMetricFamily("modeshift_lane_weight", "The lane's share of auto traffic.", labels=["lane"])
        ejected = GaugeMetricFamily(
            "modeshift_upstream_ejected", "1 while the upstream is ejected.", labels=["lane", "upstream"]
        )
        weights = state.control.weights
        for name, lane in state.lanes.items():
            totals = lane.window.since_start
            lane_requests.add_metric([name, "ok"], totals.completions - totals.errors)
            lane_requests.add_metric([name, "error"], totals.errors)
            cost.add_metric([name], totals.cost_usd)
            tokens.add_metric([name, "input"], totals.input_tokens)
            tokens.add_metric([name, "output"], totals.output_tokens)
            in_flight.add_metric([name], lane.window.in_flight)
            queued.add_metric([name], lane.window.queue_depth)
            weight.add_metric([name], weights[name])
            for upstream in lane.pool.upstreams:
                ejected.add_metric([name, upstream.base], 1.0 if upstream.ejected(now) else 0.0)
        yield from (lane_requests, cost, tokens, in_flight, queued, weight, ejected)

        mode = GaugeMetricFamily("modeshift_mode", "1 for the mode in force (none while moving).", labels=["mode"])
        current = state.control.controller.mode
        for name in state.config.modes:
            mode.add_metric([name], 1.0 if name == current else 0.0)
        yield mode
        decisions = runtime.decisions
        yield CounterMetricFamily(
            "modeshift_transitions", "Transitions started.", value=decisions.counts["TransitionStarted"]
        )
        rollbacks = CounterMetricFamily("modeshift_rollbacks", "Transitions rolled back, by cause.", labels=["cause"])
        for cause, n in sorted(decisions.rollback_causes.items()):
            rollbacks.add_metric([cause], n)
        yield rollbacks

    def _routes(self) -> Iterator[Metric]:
        stats = self.runtime.route_stats
        requests = CounterMetricFamily(
            "modeshift_requests",
            "Client requests answered, by route, lane and status.",
            labels=["route", "lane", "code"],
        )
        for (route, lane, code), n in sorted(stats.requests.items()):
            requests.add_metric([route, lane, str(code)], n)
        yield requests
        duration = HistogramMetricFamily(
            "modeshift_request_duration_seconds",
            "Time from a request's arrival to the end of its answer.",
            labels=["route", "lane"],
            unit="seconds",
        )
        for (route, lane), histogram in sorted(stats.latency.items()):
            counts = histogram.counts_at_most(BUCKETS_S)
            buckets = [(f"{b:g}", n) for b, n in zip(BUCKETS_S, counts)] + [("+Inf", histogram.count)]
            duration.add_metric([route, lane], buckets, sum_value=histogram.sum)
        yield duration


def exposition(runtime: Runtime) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(RouterCollector(runtime))
    return generate_latest(registry)
