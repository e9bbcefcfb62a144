"""What one client request went through, for its span, its log lines and the route stats.

The proxy fills a `Trail` as the request moves (route, lane, pinned or auto,
upstream, micro-batch, queue wait, attributed cost, status, the router's own
error), and router.telemetry.reporter reads it once the answer is done. Plain data:
nothing here reads a clock or does I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(slots=True)
class Trail:
    request_id: str
    method: str
    path: str
    started_s: float
    route: str = "unmatched"
    lane: str | None = None  # the lane that answered; None when the router answered before choosing
    pinned: bool = False
    claims_denied: str | None = None  # the kinds of the claims its credential may not make, dropped
    traffic_class: str | None = None  # the objectives it is judged by, once its lane was chosen
    placement: str | None = None  # "moved" or "spilled" when admission sent it off its drawn lane
    upstream: str | None = None
    batch: str | None = None  # "<batch id>/<requests in the call>" when micro-batched
    queue_wait_s: float = 0.0
    cost_usd: float = 0.0
    status: int = 0
    error: str | None = None  # the router's own error type, when it answered itself or cut an answer
    detail: str | None = None  # and its message
    trace_id: str | None = None  # 32 hex digits, when traced or the client sent a traceparent
    duration_s: float = 0.0

    def access_record(self) -> dict[str, Any]:
        return {
            "request_id": self.request_id,
            "trace_id": self.trace_id,
            "method": self.method,
            "path": self.path,
            "route": self.route,
            "lane": self.lane,
            "pinned": self.pinned,
            "claims_denied": self.claims_denied,
            "class": self.traffic_class,
            "placement": self.placement,
            "upstream": self.upstream,
            "batch": self.batch,
            "status": self.status,
            "error": self.error,
            "detail": self.detail,
            "duration_ms": round(self.duration_s * 1000, 3),
            "queue_wait_ms": round(self.queue_wait_s * 1000, 3),
            "cost_usd": self.cost_usd,
        }
