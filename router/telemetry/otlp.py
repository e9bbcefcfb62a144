"""The router's figures pushed over OTLP: the same families as /metrics, every `interval`.

Each export reads router.telemetry.figures on the event loop (so the figures are
consistent with each other) and hands them to OpenTelemetry's OTLP exporter
on a worker thread (it blocks on HTTP). Counters and the latency histogram
are cumulative since the router started; gauges are the value now. Nothing
is recorded per request: OpenTelemetry's own instruments cost more per
request than the whole proxy budget allows, and the router already keeps
every figure.

What must not live here: which figures exist (router.telemetry.figures), spans
(router.telemetry.tracing).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    Gauge,
    Histogram,
    HistogramDataPoint,
    Metric,
    MetricExporter,
    MetricsData,
    NumberDataPoint,
    ResourceMetrics,
    ScopeMetrics,
    Sum,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.util.instrumentation import InstrumentationScope

from router.telemetry.figures import BUCKETS_S, Buckets, Family

logger = logging.getLogger("modeshift.telemetry")
_SCOPE = InstrumentationScope("modeshift.router")
_UNITS = {"seconds": "s", "usd": "USD", "": "1"}


def metrics_data(families: list[Family], resource: Resource, start_ns: int, now_ns: int) -> MetricsData:
    metrics = [_metric(family, start_ns, now_ns) for family in families]
    return MetricsData([ResourceMetrics(resource, [ScopeMetrics(_SCOPE, metrics, "")], "")])


def _metric(family: Family, start_ns: int, now_ns: int) -> Metric:
    def attributes(values: tuple[str, ...]) -> dict[str, str]:
        return dict(zip(family.labels, values))

    if family.kind == "histogram":
        points = []
        for values, point in family.points:
            assert isinstance(point, Buckets)
            per_bucket = [b - a for a, b in zip((0, *point.at_most), (*point.at_most, point.count))]
            points.append(
                HistogramDataPoint(
                    attributes(values),
                    start_ns,
                    now_ns,
                    point.count,
                    point.sum,
                    per_bucket,
                    BUCKETS_S,
                    min=point.min,
                    max=point.max,
                )
            )
        data: Histogram | Sum | Gauge = Histogram(points, AggregationTemporality.CUMULATIVE)
    else:
        numbers = [NumberDataPoint(attributes(v), start_ns, now_ns, value) for v, value in family.numbers()]
        if family.kind == "counter":
            data = Sum(numbers, AggregationTemporality.CUMULATIVE, is_monotonic=True)
        else:
            data = Gauge(numbers)
    return Metric(family.name, family.help, _UNITS.get(family.unit, family.unit), data)


class MetricPusher:
    """Export `read()` every `interval_s` until closed; once more on close."""

    def __init__(self, exporter: MetricExporter, resource: Resource, interval_s: float):
        self.exporter = exporter
        self.read: Callable[[], list[Family]] = list
        self.resource = resource
        self.interval_s = interval_s
        self.start_ns = time.time_ns()
        self._task: asyncio.Task[Any] | None = None

    def start(self, read: Callable[[], list[Family]]) -> None:
        self.read = read
        self._task = asyncio.get_running_loop().create_task(self._forever())

    async def push(self) -> None:
        data = metrics_data(self.read(), self.resource, self.start_ns, time.time_ns())
        try:
            await asyncio.to_thread(self.exporter.export, data)
        except Exception:  # a collector that is down must not stop the router
            logger.warning("OTLP metric export failed", exc_info=True)

    async def _forever(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            await self.push()

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            await self.push()
        await asyncio.to_thread(self.exporter.shutdown)
