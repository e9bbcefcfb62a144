"""One lane during a simulated run: its gate, its servers, its micro-batcher, its cost.

The engine (simulator.engine) moves requests through these; the rules they
follow are the router's own, from policies: the admission Gate and the
lane's outlook for `place` (policies.path.admission), the Batcher and its flush
rule (policies.path.batching). What a call costs in time comes from the lane's
service model (simulator.service).

What must not live here: the event loop and the request path (the engine).
"""

from __future__ import annotations

import math
from collections import deque
from typing import Any, NamedTuple

from configs.schema import ModeshiftConfig
from policies.control.monitor import Monitor
from policies.control.snapshot import Snapshot
from policies.path.admission import Gate, Outlook, batched_latency_s, outlook, takes_at_once
from policies.path.batching import Batcher, Pace
from policies.path.provider_batching import FileGathering
from policies.path.upstream_pool import UpstreamPool
from simulator.failure_path import LaneFailures
from simulator.service import BatchApiLane, ServerLane, jittered_s


class Queued(NamedTuple):
    """A request waiting in a lane's gate: what its timeout needs to spill or refuse it."""

    i: int
    pinned: bool
    visited: list[str]
    first: LaneRun


class Call(NamedTuple):
    """A call waiting for one of the lane's servers: how long it will take, and whose it is."""

    service_s: float
    kind: int  # the engine's event kind for its end
    payload: Any


class LaneRun:
    """One lane's queues and servers during a run."""

    def __init__(
        self, index: int, name: str, config: ModeshiftConfig, service: ServerLane | BatchApiLane, monitor: Monitor
    ):
        lane_config = config.lanes[name]
        self.index = index
        self.name = name
        self.window = monitor.lanes[name]
        self.cost = monitor.costs[name].request_cost_usd
        self.limit = lane_config.max_in_flight
        self.queue_timeout_s = lane_config.queue_timeout_s
        self.spill = lane_config.spill
        self.gate: Gate[Queued] = Gate(lane_config.max_in_flight, lane_config.queue_depth, lane_config.aging_s)
        self.batch_api = isinstance(service, BatchApiLane)
        self.live = lane_config.batch_api is None  # a provider batch lane takes jobs only, as the router's
        self.service = service
        # A batch API lane's open file (policies.path.provider_batching): its requests, size and serial number.
        self.gathering: FileGathering | None = None
        if isinstance(service, BatchApiLane):
            self.gathering = FileGathering(service.max_requests, service.max_bytes, service.max_wait_s)
        self.file: list[int] = []
        self.file_bytes = 0
        self.files = 0  # files sent so far; the open one is number `files`
        # A server lane's service time: base + per item + per token, jittered; a batch API has none of it.
        self.coef = (0.0, 0.0, 0.0, 0.0)
        self.sigma = 0.0
        self.free = 0  # servers free now
        self.failures: LaneFailures | None = None  # simulator.failure_path, when its service model says it fails
        if isinstance(service, ServerLane):
            latency = service.latency
            self.coef = (latency.base_s, latency.per_item_s, latency.per_input_token_s, latency.per_output_token_s)
            self.sigma = latency.jitter
            self.free = service.servers
            if service.failures is not None:
                self.failures = LaneFailures(
                    name, service.failures, service.replicas, lane_config.outlier, lane_config.timeout_s
                )
        self.backlog: deque[Call] = deque()  # calls waiting for a server
        self.retire = 0  # servers of replicas scaled away, to take as they finish their calls (simulator.lane_scale)
        # The micro-batcher, when the lane has one: its queue, merged calls running, its pace and its next flush.
        self.batcher: Batcher | None = None
        self.capacity = 0
        self.running = 0
        self.pace = Pace(self.limit)
        self.armed_at = math.inf
        if lane_config.batching is not None:
            self.capacity = lane_config.batching.queue_capacity
            self.batcher = Batcher(
                lane_config.batching.build(), capacity=self.capacity, max_tokens=lane_config.batching.max_batch_tokens
            )

    @property
    def waiting(self) -> int:
        """Requests waiting for this lane: in its gate's queue and its micro-batcher's queue."""
        return self.gate.waiting + (len(self.batcher) if self.batcher is not None else 0)

    def takes_now(self, snapshot: Snapshot | None, latency_s: float, batched: bool) -> bool:
        """The drawn lane will do without looking further: a free slot fast enough, or a batch place.

        The common case of policies.path.admission.place, asked without building an Outlook: the same rules
        (`takes_at_once`, `batched_latency_s`), on the same figures.
        """
        if self.batch_api:
            return True
        batcher = self.batcher
        if batched and batcher is not None:
            expected = batched_latency_s(snapshot, self.name, batcher.items, self.running >= self.limit, self.pace)
            return len(batcher) < self.capacity and takes_at_once(expected, latency_s)
        if not self.gate.free:
            return False
        figures = snapshot.lanes.get(self.name) if snapshot is not None else None
        return figures is None or takes_at_once(figures.mean_latency_s, latency_s)

    def outlook(self, snapshot: Snapshot | None, priority: int, batched: bool) -> Outlook:
        """This lane for one request, as router.lanes.Lane.outlook shows a live one."""
        if self.batch_api:  # submitted as a job: never full, never waits for a slot; its p95 is what it takes
            figures = snapshot.lanes.get(self.name) if snapshot is not None else None
            p95 = figures.p95_s if figures is not None else math.nan
            cost = figures.estimated_cost_per_request_usd if figures is not None else math.nan
            return Outlook(self.name, True, True, 0.0, p95, math.inf, cost, self.spill)
        batcher = self.batcher if batched else None
        return outlook(
            self.name,
            snapshot,
            gate=None if batched else self.gate,
            priority=priority,
            queue_timeout_s=self.queue_timeout_s,
            spill=self.spill,
            batch_room=batcher is not None and len(batcher) < self.capacity,
            batch_waiting=batcher.items if batcher is not None else 0,
            batch_saturated=batched and self.running >= self.limit,
            batch_pace=self.pace,
        )

    @property
    def pool(self) -> UpstreamPool | None:
        """Its replicas as the pool ejects them, on a lane that fails (simulator.failure_path); else None."""
        return self.failures.pool if self.failures is not None else None

    def call_s(self, items: int, input_tokens: int, output_tokens: int, z: float) -> float:
        if self.batch_api:
            s = self.service
            assert isinstance(s, BatchApiLane)
            return min(s.turnaround_median_s * math.exp(s.turnaround_sigma * z), s.max_turnaround_s)
        base, per_item, per_in, per_out = self.coef
        return jittered_s(base + per_item * items + per_in * input_tokens + per_out * output_tokens, self.sigma, z)
