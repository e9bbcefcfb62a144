"""A lane at run time: its upstream pool, admission gate and upstream client.

One `Lane` per configured lane. The metrics window it records into belongs
to the control loop's monitor (policies.control.metrics.LaneWindow) and is attached
by router.state, so a reload can keep a lane's history.

The client (router.upstream_client) keeps connections alive per upstream,
with no cap of its own (the gate caps calls per lane); bytes pass through as
the upstream encoded them.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable
from typing import Any

from configs.schema import LaneConfig
from policies.control.metrics import LaneWindow
from policies.control.snapshot import Snapshot
from policies.path.admission import Outlook, outlook, retry_after_s
from policies.path.upstream_pool import UpstreamPool
from router.admission import LaneGate
from router.microbatch import MicroBatcher
from router.upstream_client import UpstreamClient


class Lane:
    def __init__(
        self,
        name: str,
        config: LaneConfig,
        window: LaneWindow,
        clock: Callable[[], float] = time.monotonic,
        *,
        job_share: float = 1.0,
    ):
        self.name = name
        self.config = config
        self.window = window
        self.pool = UpstreamPool(
            config.upstreams,
            consecutive_errors=config.outlier.consecutive_errors,
            base_ejection_s=config.outlier.base_ejection_s,
            max_ejected_fraction=config.outlier.max_ejected_fraction,
        )
        self.gate = LaneGate(config.max_in_flight, config.queue_depth, config.queue_timeout_s, config.aging_s, clock)
        # The lane's timeout is the longest the upstream may stay silent,
        # before its answer and between chunks.
        self.client = UpstreamClient(connect_timeout_s=config.connect_timeout_s, read_timeout_s=config.timeout_s)
        # Router-side micro-batching, for batchable routes, when the lane asks for it.
        self.batching = (
            MicroBatcher(name, config, self.pool, self.client, clock, job_share=job_share)
            if config.batching is not None
            else None
        )

    @property
    def live(self) -> bool:
        """Whether the lane takes live requests: a provider batch lane (`batch_api`) takes jobs only."""
        return self.config.batch_api is None

    @property
    def waiting(self) -> int:
        """Requests waiting for this lane: in its gate's queue and its micro-batcher's queues."""
        return self.gate.waiting + (self.batching.waiting if self.batching is not None else 0)

    def retry_after_s(self, snapshot: Snapshot | None) -> int:
        """A client's wait before a retry can expect a slot: the queue's predicted drain time, at least 1 s."""
        return retry_after_s(self.gate.core.drain_s(self.service_s(snapshot)))

    def service_s(self, snapshot: Snapshot | None) -> float:
        """Time from admission to answer over the last window (NaN when nothing was measured)."""
        if snapshot is None or self.name not in snapshot.lanes:
            return math.nan
        return snapshot.lanes[self.name].mean_latency_s

    def outlook(self, snapshot: Snapshot | None, priority: int, batched: bool) -> Outlook:
        """This lane for one request of `priority` (`batched`: it would ride in the micro-batcher)."""
        config = self.config
        batcher, rule = (self.batching, config.batching) if batched else (None, None)
        room = batcher is not None and rule is not None and batcher.waiting < rule.queue_capacity
        return outlook(
            self.name,
            snapshot,
            gate=None if batched else self.gate.core,
            priority=priority,
            queue_timeout_s=config.queue_timeout_s,
            spill=config.spill,
            batch_room=room,
            batch_waiting=batcher.waiting_items if batcher is not None else 0,
            batch_saturated=batcher is not None and batcher.saturated,
            batch_pace=batcher.pace if batcher is not None else None,
        )

    def describe(self, now_s: float) -> dict[str, Any]:
        totals = self.window.since_start
        return {
            "since_start": {
                "requests": totals.completions,
                "errors": totals.errors,
                "cost_usd": totals.cost_usd,
                "input_tokens": totals.input_tokens,
            },
            "slots_taken": self.gate.in_flight,
            "queued": self.gate.waiting,
            "max_in_flight": self.gate.max_in_flight,
            "queue_limit": self.gate.queue_depth,
            "upstreams": self.pool.describe(now_s),
        }

    async def close_when_idle(self, limit_s: float) -> None:
        """Close the client once nothing is in flight here (after a reload replaced the lane)."""
        try:
            async with asyncio.timeout(limit_s):
                await self.gate.wait_idle()
        except TimeoutError:
            pass
        await self.close()

    async def close(self) -> None:
        if self.batching is not None:
            await self.batching.close()
        await self.client.close()
