"""A lane at run time: its upstream pool, admission gate and HTTP client.

One `Lane` per configured lane. The metrics window it records into belongs
to the control loop's monitor (policies.metrics.LaneWindow) and is attached
by router.state, so a reload can keep a lane's history.

The client session is tuned for proxying: no cookie jar (an upstream's
cookies must not leak from one client to the next), no automatic
decompression (bytes pass through as the upstream encoded them), no headers
of its own, and no connection cap (the gate caps calls per lane).
"""

from __future__ import annotations

import asyncio
import math

import aiohttp

from configs.schema import LaneConfig
from policies.metrics import LaneWindow
from policies.snapshot import Snapshot
from router.admission import LaneGate
from router.upstreams import UpstreamPool

_NO_AUTO_HEADERS = ("User-Agent", "Accept", "Accept-Encoding", "Content-Type")


class Lane:
    def __init__(self, name: str, config: LaneConfig, window: LaneWindow):
        self.name = name
        self.config = config
        self.window = window
        self.pool = UpstreamPool(
            config.upstreams,
            consecutive_errors=config.outlier.consecutive_errors,
            base_ejection_s=config.outlier.base_ejection_s,
            max_ejected_fraction=config.outlier.max_ejected_fraction,
        )
        self.gate = LaneGate(config.max_in_flight, config.queue_depth, config.queue_timeout_s)
        self._session: aiohttp.ClientSession | None = None

    @property
    def session(self) -> aiohttp.ClientSession:
        # Made on first use, inside the running loop.
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0, ttl_dns_cache=300, enable_cleanup_closed=True),
                timeout=aiohttp.ClientTimeout(
                    total=None, sock_connect=self.config.connect_timeout_s, sock_read=self.config.timeout_s
                ),
                cookie_jar=aiohttp.DummyCookieJar(),
                auto_decompress=False,
                skip_auto_headers=_NO_AUTO_HEADERS,
                raise_for_status=False,
            )
        return self._session

    def expected_latency_s(self, snapshot: Snapshot | None) -> float:
        """The lane's p95 over the last window, NaN when unknown."""
        if snapshot is None or self.name not in snapshot.lanes:
            return math.nan
        return snapshot.lanes[self.name].p95_s

    def retry_after_s(self, snapshot: Snapshot | None) -> int:
        """A client's wait before a retry can expect a slot: the queue's drain time, at least 1 s."""
        if snapshot is None or self.name not in snapshot.lanes:
            return 1
        figures = snapshot.lanes[self.name]
        if not figures.throughput_per_s or math.isnan(figures.throughput_per_s):
            return 1
        return max(1, math.ceil((self.gate.waiting + 1) / figures.throughput_per_s))

    def describe(self, now_s: float) -> dict:
        return {
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
        if self._session is not None:
            await self._session.close()
            self._session = None
