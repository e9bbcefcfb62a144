"""The discrete-event engine: a trace through the control core, in virtual time.

One run builds the control loop from the config exactly as the router does
(configs.assembly, the same seeds), and plays the router's request path over
the lanes' service models:

- each request's route and lane come from configs.routes and
  policies.path.lane_choice, with a uniform draw from `random.Random(server.seed)`,
  the router's own stream, taken once per request in arrival order;
- admission is the router's own rules, called here too: policies.path.admission
  `place` chooses where a request may wait (its drawn lane, the cheapest
  lane predicted to meet its objective, a spill, or a 503 at once) and a
  policies.path.admission Gate per lane admits up to `max_in_flight` calls and
  queues up to `queue_depth` more by priority for at most `queue_timeout`,
  then spills or answers 503; admitted calls then wait for one of the
  lane's `replicas x concurrency` servers;
- a lane with `batching:` merges requests on batchable routes with the
  policies.path.batching Batcher and the lane's flush rule, at most
  `max_in_flight` merged calls at once, each charged to its items by share;
- a `batch_api` lane has no queue and no gate: its requests are submitted
  as jobs, gathered into batch files by the router's own rule
  (policies.path.provider_batching: full by count or bytes, or `max_wait` after
  the first line), and every request of a file is answered one turnaround
  after the file went;
- every completion is recorded into the monitor's LaneWindow with the
  latency and attributed cost the router would record (from admission, not
  from arrival), and the loop ticks every `switching.tick`;
- a lane with `autoscale:` gets the replicas the capacity rule asks for each
  tick (simulator.lane_scale): a new one serves only `cold_start` later,
  one scaled away finishes its calls first, and the lane is billed its
  ready and starting replicas over time;
- the latency in the outcome is the client's: the service model's `hop`
  (the router's own time and the network's) is added to it, and to nothing
  the control loop reads.

Events sit on one heap ordered by (time, seq); arrivals come from the sorted
trace and go after heap events at the same time (so a tick at t sees the
requests before t, as the router's would). The random sources are the
config's seed for routing and policy, and `seed` for service times, so a run
is a pure function of (config, service model, trace, seed).

What must not live here: reading files, printing, plotting (simulator.report).
"""

from __future__ import annotations

import heapq
import math
import random
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from backends.codecs import codec_for
from backends.codecs.base import BYTES_PER_TOKEN
from configs.assembly import build_control_loop
from configs.routes import RoutesByPrefix
from configs.schema import ModeshiftConfig
from policies.control.actions import Action
from policies.path.admission import Placed, Waiter, place
from policies.path.arrival import arrive
from policies.path.lane_choice import lanes_in, next_lane
from policies.path.retry_budget import RetryBudget
from simulator.batch_path import BatchPath
from simulator.failure_path import FailurePath, error_draws
from simulator.lane_run import Call, LaneRun, Queued
from simulator.lane_scale import LaneScale
from simulator.outcome import NO_LANE, NO_REPLICA, Outcome, TimelineRow
from simulator.service import ServerLane, ServiceModel, check_covers
from simulator.traces import TraceRequest

OK, LANE_FULL = 200, 503
_DONE, _BATCH_DONE, _FLUSH, _GATE_TIMEOUT, _FILE_DUE, _CALL_TIMEOUT, _BATCH_TIMEOUT, _REPLICA_UP, _TICK = range(9)
LINE_OVERHEAD_BYTES = 200  # a batch file line's JSON around its body (custom_id, method, url, keys)


# An entry of the event heap: (t, seq, kind, lane, payload), ordered by (t, seq); seq is unique, so nothing
# after it is ever compared. `kind` (_DONE ... _TICK) says which handler runs it. A plain tuple, named by this
# alias and unpacked by name in one place (_handle): a NamedTuple costs 40x a tuple to make, and the heap
# sees about three events per request (18% of a million-request run).
_Event = tuple[float, int, int, "LaneRun | None", Any]


class Engine:
    def __init__(self, config: ModeshiftConfig, service: ServiceModel, *, seed: int = 0):
        check_covers(service, list(config.lanes))
        self.config = config
        self.service = service
        self.seed = seed

    def run(
        self,
        trace: Sequence[TraceRequest],
        *,
        progress: Callable[[int], None] | None = None,
        progress_every: int = 10_000,
    ) -> Outcome:
        return _Run(self, trace, progress, progress_every).play()


class _Run(BatchPath, FailurePath):
    # The event kinds simulator.batch_path and simulator.failure_path push.
    DONE, BATCH_DONE, FLUSH, TIMEOUT, BATCH_TIMEOUT = _DONE, _BATCH_DONE, _FLUSH, _CALL_TIMEOUT, _BATCH_TIMEOUT

    def __init__(self, engine: Engine, trace: Sequence[TraceRequest], progress, progress_every: int):
        config = engine.config
        self.config = config
        self.trace = trace
        self.progress = progress
        self.progress_every = progress_every
        self.hop_s = engine.service.hop_s
        self.loop = build_control_loop(config, now_s=0.0, rng=random.Random(config.server.seed))
        self.draw = random.Random(config.server.seed)
        names = tuple(config.lanes)
        self.lanes = {
            name: LaneRun(i, name, config, engine.service.lanes[name], self.loop.monitor)
            for i, name in enumerate(names)
        }
        self.scales: dict[str, LaneScale] = {}  # the autoscaled lanes' replicas (simulator.lane_scale)
        planner = self.loop.capacity
        for name, service in engine.service.lanes.items():  # a lane's per_replica_hour is paid per replica
            if isinstance(service, ServerLane) and name in self.loop.monitor.replicas:
                self.loop.monitor.replicas[name] = service.replicas
                autoscale = config.lanes[name].autoscale
                if autoscale is not None and planner is not None:
                    self.scales[name] = LaneScale(service.replicas, service.concurrency, autoscale.cold_start_s)
                    planner.desired[name] = service.replicas  # the run starts with the model's replicas
        n = len(trace)
        # Lanes that fail (simulator.failure_path): their replicas, retries, and each request's error draw.
        self.failing = any(lane.failures is not None for lane in self.lanes.values())
        self.live_lanes = tuple(name for name, lane in self.lanes.items() if lane.live)  # what live requests take
        self.budget = RetryBudget()
        self.retrying: set[int] = set()
        self.upstream_of: dict[str, Any] = {}
        self.charged: dict[int, tuple[float, float]] = {}
        self.replica_of = [NO_REPLICA] * n
        self.visited_of: dict[int, list[str]] = {}
        self.errors = error_draws(engine.seed, n) if self.failing else []
        self.batchable = [False] * n
        self.z = np.random.default_rng(engine.seed).standard_normal(n).tolist()
        self.routes = RoutesByPrefix(config.routes)
        self.heap: list[_Event] = []
        self.seq = 0
        self.lane_of = [NO_LANE] * n
        self.status = [0] * n
        self.done_s = [math.nan] * n
        self.started_s = [0.0] * n
        self.cost = [0.0] * n
        self.pinned = [False] * n
        self.traffic_class = [""] * n
        self.objectives = self.loop.monitor.objectives
        self.in_flight = 0
        self.last_arrival_s = trace[-1].t_s if n else 0.0
        self.decisions: list[dict[str, Any]] = []
        self.timeline: list[TimelineRow] = []

    def play(self) -> Outcome:
        trace, heap = self.trace, self.heap
        tick_s = self.config.switching.tick_s
        self._push(tick_s, _TICK, None, None)
        route_info = self._route_info()
        handlers = (
            self._on_done,
            self._on_batch_done,
            self._on_flush,
            self._on_gate_timeout,
            self._on_file_due,
            self._on_timeout,
            self._on_merged_timeout,
            self._on_replica_up,
        )
        for i, request in enumerate(trace):
            t = request.t_s
            while heap and heap[0][0] <= t:  # the earliest event's time
                self._handle(heapq.heappop(heap), handlers, tick_s)
            self._arrive(i, request, t, *route_info(request))
            if self.progress is not None and i % self.progress_every == 0:
                self.progress(i)
        while self.in_flight and heap:
            self._handle(heapq.heappop(heap), handlers, tick_s)
        end_s = max((d for d in self.done_s if not math.isnan(d)), default=0.0)
        end_s = max(end_s, trace[-1].t_s if trace else 0.0)
        if self.progress is not None:
            self.progress(len(trace))
        return self._outcome(end_s)

    def _handle(self, event: _Event, handlers, tick_s: float) -> None:
        t, _, kind, lane, payload = event
        if kind == _TICK:
            self._tick(t)
            # Ticks stop with the last arrival: a batch API's answers may take
            # hours to drain, and no decision then changes where anything goes.
            if t < self.last_arrival_s:
                self._push(t + tick_s, _TICK, None, None)
        else:
            handlers[kind](t, lane, payload)

    def _push(self, t: float, kind: int, lane: LaneRun | None, payload) -> None:
        self.seq += 1
        heapq.heappush(self.heap, (t, self.seq, kind, lane, payload))

    def _tick(self, t: float) -> None:
        self.loop.monitor.before_tick(
            waiting={name: lane.waiting for name, lane in self.lanes.items()},
            paid={name: scale.paid for name, scale in self.scales.items()},
            backlogs={},
        )
        ready = {name: scale.ready for name, scale in self.scales.items()}
        actions: list[Action] = self.loop.tick(t, ready)
        self.decisions.extend(action.as_record() for action in actions)
        if self.scales:
            self._scale(t)
        provisioned = {name: self._provisioned_usd(name, t) for name in self.scales}
        self.timeline.append(TimelineRow.after_tick(t, self.loop, tuple(self.lanes), provisioned))

    def _scale(self, t: float) -> None:
        """Each autoscaled lane toward the replicas the capacity rule wants (simulator.lane_scale)."""
        assert self.loop.capacity is not None
        for name, scale in self.scales.items():
            lane = self.lanes[name]
            started, removed = scale.want(t, self.loop.capacity.desired[name])
            for due_s in started:
                self._push(due_s, _REPLICA_UP, lane, due_s)
            idle = min(removed, lane.free)  # idle servers go at once, busy ones when their call ends
            lane.free -= idle
            lane.retire += removed - idle
            self.loop.monitor.replicas[name] = scale.paid

    def _on_replica_up(self, t: float, lane: LaneRun, due_s: float) -> None:
        scale = self.scales[lane.name]
        if scale.answered(t, due_s):
            for _ in range(scale.concurrency):
                self._server_freed(lane, t)
            self.loop.monitor.replicas[lane.name] = scale.paid

    def _route_info(self):
        """Per request: (route pin, batchable, route class), cached by route path."""
        cache: dict[str, tuple[str | None, bool, str | None]] = {}
        lanes, routes, objectives = self.lanes, self.routes, self.objectives

        def info(request: TraceRequest) -> tuple[str | None, bool, str | None]:
            found = cache.get(request.route)
            if found is None:
                route = routes.find(request.route)
                if route is None:
                    raise ValueError(f"trace route {request.route!r} matches no configured route")
                batchable = codec_for(route.protocol).batchable
                found = cache[request.route] = (route.pin, batchable, route.traffic_class)
            if request.mode is not None and request.mode not in lanes:
                raise ValueError(f"trace request pinned to {request.mode!r}, which is not a lane of this config")
            if request.traffic_class is not None and request.traffic_class not in objectives:
                raise ValueError(
                    f"trace request of class {request.traffic_class!r}, which this config has no objective for"
                )
            return found

        return info

    def _arrive(
        self, i: int, request: TraceRequest, t: float, route_pin: str | None, batchable: bool, route_class: str | None
    ) -> None:
        choice, self.traffic_class[i] = arrive(
            route_pin=route_pin,
            route_class=route_class,
            header_pin=request.mode,
            header_class=request.traffic_class,
            deadline_s=request.deadline_ms / 1000.0 if request.deadline_ms is not None else None,
            snapshot=self.loop.last_snapshot,
            weights=self.loop.weights,
            available=lanes_in(self.lanes, t) if self.failing else self.live_lanes,
            objectives=self.objectives,
            u=self.draw.random(),
        )
        self.pinned[i] = choice.pinned
        self.in_flight += 1
        if self.failing:  # where a request that no replica took fails over from (simulator.failure_path)
            self.batchable[i] = batchable
        self._dispatch(i, self.lanes[choice.lane], choice.pinned, t, [], batchable)

    def _dispatch(self, i: int, lane: LaneRun, pinned: bool, t: float, visited: list[str], batchable: bool) -> None:
        while True:
            placed = self._place(i, lane, pinned, t, visited, batchable)
            if placed is None:
                return
            lane = placed
            if lane.batcher is None or not batchable:
                break
            visited.append(lane.name)
            if lane.failures is not None:
                self.visited_of[i] = visited  # where it fails over from if no replica takes its merged call
            if self._offer(i, lane, t):
                return
            spill = self._next_lane(visited, pinned, spills=lane.spill)
            if spill is None:
                self._finish(i, lane, t, LANE_FULL)
                return
            lane = spill
        self._admit(i, lane, pinned, t, visited, lane)

    def _place(
        self, i: int, lane: LaneRun, pinned: bool, t: float, visited: list[str], batchable: bool
    ) -> LaneRun | None:
        """policies.path.admission.place, as the router asks it; None when refused (503 recorded)."""
        objective = self.objectives[self.traffic_class[i]]
        snapshot = self.loop.last_snapshot
        if lane.takes_now(snapshot, objective.latency_s, lane.batcher is not None and batchable):
            return lane  # the common case, without building outlooks
        lanes = self.lanes

        def outlook_of(name: str):
            other = lanes[name]
            return other.outlook(snapshot, objective.priority, other.batcher is not None and batchable)

        placed = place(
            lane.name,
            lanes_in(lanes, t, drawn=lane) if self.failing or not lane.live else self.live_lanes,
            outlook_of,
            movable=not pinned,
            latency_s=objective.latency_s,
            visited=visited,
            weights=self.loop.weights,
        )
        if isinstance(placed, Placed):
            return self.lanes[placed.lane]
        lane.window.refused(t, pinned)
        self._finish(i, lane, t, LANE_FULL)
        return None

    def _admit(self, i: int, lane: LaneRun, pinned: bool, t: float, visited: list[str], first: LaneRun) -> None:
        visited.append(lane.name)
        if lane.batch_api:
            self._start(i, lane, t, visited)  # submitted, not held open: no slot to wait for
        elif lane.gate.try_enter():
            self._start(i, lane, t, visited)
        elif (waiter := self._enqueue(i, lane, pinned, t, visited, first)) is not None:
            self._push(t + lane.queue_timeout_s, _GATE_TIMEOUT, lane, waiter)
        else:
            self._overflow(i, lane, pinned, t, visited, first)

    def _enqueue(
        self, i: int, lane: LaneRun, pinned: bool, t: float, visited: list[str], first: LaneRun
    ) -> Waiter[Queued] | None:
        """A place in the lane's queue, shedding a less urgent waiter from a full one (it overflows at once)."""
        priority = self._priority(i)
        shed = lane.gate.make_room(priority)
        waiter = lane.gate.enqueue(Queued(i, pinned, visited, first), priority, t)
        if shed is not None:
            queued = shed.ticket
            self._overflow(queued.i, lane, queued.pinned, t, queued.visited, queued.first)
        return waiter

    def _priority(self, i: int) -> int:
        return self.objectives[self.traffic_class[i]].priority

    def _overflow(self, i: int, lane: LaneRun, pinned: bool, t: float, visited: list[str], first: LaneRun) -> None:
        spill = self._next_lane(visited, pinned, spills=lane.spill)
        if spill is not None:
            self._admit(i, spill, pinned, t, visited, first)
            return
        first.window.refused(t, pinned)
        self._finish(i, first, t, LANE_FULL)

    def _next_lane(self, visited: list[str], pinned: bool, *, spills: bool = True) -> LaneRun | None:
        """The lane a request goes on to (policies.path.lane_choice.next_lane), if any."""
        name = next_lane(self.loop.weights, self.live_lanes, visited, pinned=pinned, spills=spills)
        return self.lanes[name] if name is not None else None

    def _start(self, i: int, lane: LaneRun, t: float, visited: list[str]) -> None:
        """Admitted: the router records the arrival and sends the call."""
        request = self.trace[i]
        self.started_s[i] = t
        self.lane_of[i] = lane.index
        lane.window.arrived(t, self.pinned[i])
        if lane.gathering is not None:
            self._gather(i, lane, t)
            return
        service_s = lane.call_s(request.items, request.input_tokens, request.output_tokens, self.z[i])
        if lane.failures is not None:
            self._send_failing(i, lane, t, service_s, visited)
            return
        self._call(lane, t, service_s, _DONE, i)

    def _gather(self, i: int, lane: LaneRun, t: float) -> None:
        """Into the lane's open batch file, sent first when the request does not fit; sent when full."""
        rule = lane.gathering
        size = LINE_OVERHEAD_BYTES + BYTES_PER_TOKEN * self.trace[i].input_tokens
        if not rule.fits(len(lane.file), lane.file_bytes, size):
            self._send_file(lane, t)
        if not lane.file:
            self._push(rule.due_at(t, 0, 0), _FILE_DUE, lane, lane.files)
        lane.file.append(i)
        lane.file_bytes += size
        if rule.full(len(lane.file), lane.file_bytes):
            self._send_file(lane, t)

    def _send_file(self, lane: LaneRun, t: float) -> None:
        """The open file goes: one turnaround for all of it (drawn with its first request's number)."""
        members = lane.file
        lane.file, lane.file_bytes = [], 0
        lane.files += 1
        turnaround_s = lane.call_s(0, 0, 0, self.z[members[0]])
        for j in members:
            self._push(t + turnaround_s, _DONE, lane, j)

    def _on_file_due(self, t: float, lane: LaneRun, serial: int) -> None:
        if serial == lane.files and lane.file:  # still the open file: its max_wait is up
            self._send_file(lane, t)

    def _call(self, lane: LaneRun, t: float, service_s: float, kind: int, payload) -> None:
        if lane.batch_api:
            self._push(t + service_s, kind, lane, payload)
        elif lane.free:
            lane.free -= 1
            self._push(t + service_s, kind, lane, payload)
        else:
            lane.backlog.append(Call(service_s, kind, payload))

    def _server_freed(self, lane: LaneRun, t: float) -> None:
        if lane.batch_api:
            return
        if lane.retire:  # its replica was scaled away
            lane.retire -= 1
            return
        if lane.backlog:
            service_s, kind, payload = lane.backlog.popleft()
            self._push(t + service_s, kind, lane, payload)
        else:
            lane.free += 1

    def _on_done(self, t: float, lane: LaneRun, i: int) -> None:
        if lane.failures is not None and not self._failing_done(t, lane, i):
            return
        request = self.trace[i]
        latency = t - self.started_s[i]
        usd = lane.cost(request.input_tokens, request.output_tokens, latency)
        lane.window.completed(
            t,
            latency,
            items=request.items,
            input_tokens=request.input_tokens,
            output_tokens=request.output_tokens,
            cost_usd=usd,
            busy_s=latency,
        )
        self.cost[i] = usd
        self._finish(i, lane, t, OK)
        self._server_freed(lane, t)
        if not lane.batch_api:
            self._leave_gate(lane, t)

    def _leave_gate(self, lane: LaneRun, t: float) -> None:
        waiter = lane.gate.release(t)
        if waiter is not None:  # the slot passes to the waiter
            self._start(waiter.ticket.i, lane, t, waiter.ticket.visited)

    def _on_gate_timeout(self, t: float, lane: LaneRun, waiter: Waiter[Queued]) -> None:
        if not lane.gate.withdraw(waiter):
            return  # admitted before its time ran out
        queued = waiter.ticket
        self._overflow(queued.i, lane, queued.pinned, t, queued.visited, queued.first)

    def _finish(self, i: int, lane: LaneRun, t: float, status: int) -> None:
        self.lane_of[i] = lane.index
        self.status[i] = status
        self.done_s[i] = t
        self.in_flight -= 1
        if self.retrying:
            self._released(i)
        self.loop.monitor.served(t, self.traffic_class[i], lane.name, t - self.trace[i].t_s, status < 500)

    def _replica_hours(self, name: str, end_s: float) -> float:
        scale = self.scales.get(name)
        return scale.hours(end_s) if scale is not None else self.loop.monitor.replicas[name] * end_s / 3600.0

    def _provisioned_usd(self, name: str, end_s: float) -> float:
        return self.loop.monitor.costs[name].provisioned_usd(end_s, self._replica_hours(name, end_s) * 3600.0)

    def _outcome(self, end_s: float) -> Outcome:
        trace = self.trace
        arrival_s = np.fromiter((r.t_s for r in trace), float, len(trace))
        return Outcome(
            lanes=tuple(self.lanes),
            arrival_s=arrival_s,
            lane=np.array(self.lane_of, dtype=np.int16),
            status=np.array(self.status, dtype=np.int16),
            latency_s=np.array(self.done_s) - arrival_s + self.hop_s,
            cost_usd=np.array(self.cost),
            pinned=np.array(self.pinned, dtype=bool),
            deadline_s=np.fromiter(
                (r.deadline_ms / 1000.0 if r.deadline_ms is not None else math.nan for r in trace), float, len(trace)
            ),
            idle_cost_usd={name: self._provisioned_usd(name, end_s) for name in self.lanes},
            replica_hours={name: self._replica_hours(name, end_s) for name in self.lanes},
            end_s=end_s,
            decisions=self.decisions,
            timeline=self.timeline,
            files={name: lane.files for name, lane in self.lanes.items() if lane.gathering is not None},
            replica=np.array(self.replica_of, dtype=np.int16),
        )
