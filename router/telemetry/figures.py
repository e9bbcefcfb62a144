"""The router's metrics as plain data, read at export time, for every exporter.

`collect(state, route_stats, decisions, now_s)` reads what the router keeps
anyway (the lanes' windows, the route stats, the controller, the decision
log) and returns metric families:
a name, a kind (counter, gauge or histogram), a unit, a help line and its
points. The Prometheus endpoint (router.telemetry.prometheus) and the OTLP exporter
(router.telemetry.otlp) each turn the same families into their own format, so the two
always agree and serving requests pays nothing for either.

    modeshift_requests{route,lane,code}                  counter
    modeshift_request_duration_seconds{route,lane}       histogram
    modeshift_lane_requests{lane,outcome}                counter (ok | error)
    modeshift_cost_usd{lane}                             counter, attributed cost
    modeshift_tokens{lane,kind}                          counter (input | output)
    modeshift_in_flight{lane}, modeshift_queue_depth{lane}
    modeshift_lane_weight{lane}                          the share of auto traffic now
    modeshift_mode{mode}                                 1 for the mode in force
    modeshift_transitions, modeshift_rollbacks{cause}, modeshift_rollbacks_withheld
    modeshift_attainment{class}                          share within objective, over the metrics window
    modeshift_upstream_ejected{lane,upstream}            1 while ejected
    modeshift_lane_replicas{lane,state}                  ready; desired and starting where the lane autoscales
    modeshift_provider_batches{lane,event}               counter (submitted | ended | refused | dropped)
    modeshift_provider_lines{lane,outcome}               counter (answered | rerun on the fallback lane)
    modeshift_provider_calls_failed{lane}                counter, provider calls tried again later
    modeshift_provider_fallbacks{lane,reason}            counter: jobs run on the fallback lane at its price
                                                         (refused, completion_window)
    modeshift_cluster_connected{replica}, modeshift_cluster_leader{replica}, modeshift_cluster_epoch
                                                         in a cluster: Redis reachable, this replica leads
    modeshift_cluster_agrees{replica}                    0 while it refuses the leader's state (other lanes/modes)
    modeshift_cluster_bad_records{kind}                  counter: records in Redis skipped (publication, state, ...)

(Prometheus adds `_total` to counters.) Histogram buckets come from the
router's log-spaced histograms; each bucket count is exact to within their 1%
relative accuracy.

What must not live here: recording (router.telemetry.route_stats, policies.control.metrics),
any exporter's format.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from policies.control import stream_health

if TYPE_CHECKING:
    from router.jobs.provider.bridge import BridgeCounts
    from router.state import RouterState
    from router.telemetry.decisions import DecisionLog
    from router.telemetry.route_stats import RouteStats

BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


@dataclass(frozen=True, slots=True)
class Buckets:
    """A histogram point: `at_most[i]` requests took at most BUCKETS_S[i]; `count` in all."""

    at_most: tuple[int, ...]
    count: int
    sum: float
    min: float
    max: float


@dataclass(slots=True)
class Family:
    name: str
    kind: Literal["counter", "gauge", "histogram"]
    help: str
    labels: tuple[str, ...] = ()
    unit: str = ""
    points: list[tuple[tuple[str, ...], float | Buckets]] = field(default_factory=list)

    def add(self, labels: tuple[str, ...], value: float | Buckets) -> None:
        self.points.append((labels, value))

    def numbers(self) -> list[tuple[tuple[str, ...], float]]:
        """A counter's or a gauge's points (a histogram's are Buckets: read `points`)."""
        out = []
        for labels, point in self.points:
            assert not isinstance(point, Buckets), f"{self.name} is a {self.kind}: its points are numbers"
            out.append((labels, point))
        return out


def collect(
    state: RouterState,
    route_stats: RouteStats,
    decisions: DecisionLog,
    now_s: float,
    provider: BridgeCounts | None = None,
    cluster: dict[str, Any] | None = None,
) -> list[Family]:
    families = [*_routes(route_stats), *_lanes(state, now_s), *_control(state, decisions)]
    if provider is not None:
        families += _provider(provider)
    if cluster is not None:
        families += _cluster(cluster)
    return families


def _cluster(view: dict[str, Any]) -> list[Family]:
    """This replica's view of its cluster (router.cluster.coordinator.ClusterMember.view)."""
    connected = Family("modeshift_cluster_connected", "gauge", "1 while Redis answers this replica.", ("replica",))
    connected.add((view["replica"],), 1.0 if view["connected"] else 0.0)
    leader = Family("modeshift_cluster_leader", "gauge", "1 while this replica leads the cluster.", ("replica",))
    leader.add((view["replica"],), 1.0 if view["leading"] else 0.0)
    epoch = Family("modeshift_cluster_epoch", "gauge", "The epoch of the cluster's leader as last seen.", ())
    epoch.add((), float(view["epoch"]))
    agrees = Family(
        "modeshift_cluster_agrees",
        "gauge",
        "0 while this replica refuses the leader's state (other lanes or modes).",
        ("replica",),
    )
    agrees.add((view["replica"],), 1.0 if view["agrees"] else 0.0)
    bad = Family(
        "modeshift_cluster_bad_records", "counter", "Records in Redis this replica skipped, by kind.", ("kind",)
    )
    for kind, n in sorted(view["bad_records"].items()):
        bad.add((kind,), float(n))
    return [connected, leader, epoch, agrees, bad]


def _provider(counts: BridgeCounts) -> list[Family]:
    """What a provider batch lane's bridge did (router.jobs.provider.bridge)."""
    batches = Family(
        "modeshift_provider_batches", "counter", "Provider batches, by what happened to them.", ("lane", "event")
    )
    for name, n in sorted(counts.batches.items()):
        batches.add((counts.lane, name), n)
    lines = Family(
        "modeshift_provider_lines", "counter", "Jobs back from provider batches, by outcome.", ("lane", "outcome")
    )
    for name, n in sorted(counts.lines.items()):
        lines.add((counts.lane, name), n)
    failed = Family(
        "modeshift_provider_calls_failed",
        "counter",
        "Provider batch calls that failed and are tried again.",
        ("lane",),
    )
    failed.add((counts.lane,), counts.failed_calls)
    fallbacks = Family(
        "modeshift_provider_fallbacks",
        "counter",
        "Jobs a provider batch lane ran on its fallback lane at that lane's price, by why.",
        ("lane", "reason"),
    )
    for reason, n in sorted(counts.fallbacks.items()):
        fallbacks.add((counts.lane, reason), n)
    return [batches, lines, failed, fallbacks]


def _routes(stats: RouteStats) -> list[Family]:
    requests = Family(
        "modeshift_requests",
        "counter",
        "Client requests answered, by route, lane and status.",
        ("route", "lane", "code"),
    )
    for (route, lane, code), n in sorted(stats.requests.items()):
        requests.add((route, lane, str(code)), n)
    duration = Family(
        "modeshift_request_duration_seconds",
        "histogram",
        "Time from a request's arrival to the end of its answer.",
        ("route", "lane"),
        unit="seconds",
    )
    for (route, lane), histogram in sorted(stats.latency.items()):
        at_most = tuple(histogram.counts_at_most(BUCKETS_S))
        low, high = histogram.quantiles((0.0, 1.0))
        duration.add((route, lane), Buckets(at_most, histogram.count, histogram.sum, low, high))
    return [requests, duration]


def _lanes(state: RouterState, now: float) -> list[Family]:
    lane_requests = Family(
        "modeshift_lane_requests", "counter", "Requests each lane finished, by outcome.", ("lane", "outcome")
    )
    cost = Family("modeshift_cost_usd", "counter", "Attributed cost in US dollars.", ("lane",), unit="usd")
    tokens = Family("modeshift_tokens", "counter", "Tokens counted, by kind.", ("lane", "kind"))
    in_flight = Family("modeshift_in_flight", "gauge", "Requests in flight on the lane.", ("lane",))
    queued = Family("modeshift_queue_depth", "gauge", "Requests waiting for the lane.", ("lane",))
    weight = Family("modeshift_lane_weight", "gauge", "The lane's share of auto traffic.", ("lane",))
    ejected = Family("modeshift_upstream_ejected", "gauge", "1 while the upstream is ejected.", ("lane", "upstream"))
    weights = state.control.weights
    for name, lane in state.lanes.items():
        totals = lane.window.since_start
        lane_requests.add((name, "ok"), totals.completions - totals.errors)
        lane_requests.add((name, "error"), totals.errors)
        cost.add((name,), totals.cost_usd)
        tokens.add((name, "input"), totals.input_tokens)
        tokens.add((name, "output"), totals.output_tokens)
        in_flight.add((name,), lane.window.in_flight)
        queued.add((name,), lane.waiting)
        weight.add((name,), weights[name])
        for upstream in lane.pool.upstreams:
            ejected.add((name, upstream.base), 1.0 if upstream.ejected(now) else 0.0)
    return [lane_requests, cost, tokens, in_flight, queued, weight, ejected, _replicas(state, now)]


def _replicas(state: RouterState, now: float) -> Family:
    """Each lane's replicas: ready (answering, not ejected) on every lane; desired and starting where the lane
    has `autoscale:`, for KEDA or an HPA to act on (policies.control.capacity)."""
    replicas = Family(
        "modeshift_lane_replicas",
        "gauge",
        "Replicas of the lane: desired (autoscaled lanes), ready, starting.",
        ("lane", "state"),
    )
    ready = state.ready_replicas(now)
    planner = state.control.capacity
    for name in state.lanes:
        replicas.add((name, "ready"), float(ready[name]))
        if planner is not None and name in planner.desired:
            replicas.add((name, "desired"), float(planner.desired[name]))
            replicas.add((name, "starting"), float(max(planner.desired[name] - ready[name], 0)))
    return replicas


def _control(state: RouterState, decisions: DecisionLog) -> list[Family]:
    mode = Family("modeshift_mode", "gauge", "1 for the mode in force (none while moving).", ("mode",))
    current = state.control.controller.mode
    for name in state.config.modes:
        mode.add((name,), 1.0 if name == current else 0.0)
    transitions = Family("modeshift_transitions", "counter", "Transitions started.")
    transitions.add((), decisions.counts["TransitionStarted"])
    rollbacks = Family("modeshift_rollbacks", "counter", "Transitions rolled back, by cause.", ("cause",))
    for cause, n in sorted(decisions.rollback_causes.items()):
        rollbacks.add((cause,), n)
    withheld = Family(
        "modeshift_rollbacks_withheld", "counter", "Rollbacks withheld: the lanes they would return to failed too."
    )
    withheld.add((), decisions.counts["RollbackWithheld"])
    attainment = Family(
        "modeshift_attainment", "gauge", "Share of the class's requests within its objective, last window.", ("class",)
    )
    snapshot = state.control.last_snapshot
    if snapshot is not None:
        window = stream_health.windows(snapshot.outcomes)
        for name, reading in stream_health.readings(window, snapshot.objectives).items():
            if reading.requests:
                attainment.add((name,), reading.attainment)
    return [mode, transitions, rollbacks, withheld, attainment]
