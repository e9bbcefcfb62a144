"""What each route answered, for /metrics: requests by (route, lane, status) and latency by (route, lane).

The lanes' own windows (policies.control.metrics) know nothing of routes; this is
the router's per-route view, recorded once per client request when its
answer is done (streamed answers included). The lane is the one that
answered, or "none" when the router answered itself before choosing one.

What must not live here: exposition (router.telemetry.prometheus).
"""

from __future__ import annotations

from policies.histogram import Histogram


class RouteStats:
    def __init__(self) -> None:
        self.requests: dict[tuple[str, str, int], int] = {}
        self.latency: dict[tuple[str, str], Histogram] = {}

    def record(self, route: str, lane: str, status: int, latency_s: float) -> None:
        key = (route, lane, status)
        self.requests[key] = self.requests.get(key, 0) + 1
        histogram = self.latency.get((route, lane))
        if histogram is None:
            histogram = self.latency[(route, lane)] = Histogram()
        histogram.record(latency_s)
