"""What the router tells operators about each request: its span, its log lines.

`Telemetry` is built from the config's `telemetry:` section:
- spans (router.telemetry.tracing) and OTLP metrics (router.telemetry.otlp), both only when
  `otlp_endpoint` is set. OpenTelemetry is the `telemetry` extra; asking for
  OTLP without it installed is a clear error at start-up;
- one JSON log line per request the router failed or answered with an error
  of its own (`request_failed`: 5xx at warning, the router's 4xx at info),
  with its request id and trace id;
- the access log, one JSON line per request, when `access_log` is on.

The proxy calls `begin` when a request arrives, `inject` to carry its trace
upstream, and `finish` once the answer is done or the client went away. With
nothing configured, each is a check of one attribute.

What must not live here: what a request went through (router.trail, filled
by the proxy), which figures exist (router.telemetry.figures).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, MutableMapping
from typing import TYPE_CHECKING, Any

from configs.schema import TelemetryConfig
from router.headers import TRACEPARENT, Headers, parent_trace
from router.logs import event
from router.trail import Trail

if TYPE_CHECKING:
    from router.telemetry.figures import Family
    from router.telemetry.otlp import MetricPusher
    from router.telemetry.tracing import Tracing

access_logger = logging.getLogger("modeshift.access")
error_logger = logging.getLogger("modeshift.requests")


class TelemetryUnavailable(RuntimeError):
    pass


class Telemetry:
    def __init__(self, config: TelemetryConfig, tracing: Tracing | None = None, pusher: MetricPusher | None = None):
        self.access_log = config.access_log
        self.tracing = tracing
        self.pusher = pusher

    @classmethod
    def build(
        cls,
        config: TelemetryConfig,
        *,
        span_exporter: Any = None,
        metric_exporter: Any = None,
    ) -> Telemetry:
        """From the config; the exporters default to OTLP/HTTP at `otlp_endpoint` (tests pass their own)."""
        endpoint = config.otlp_endpoint
        if endpoint is None and span_exporter is None and metric_exporter is None:
            return cls(config)
        try:
            from opentelemetry.sdk.resources import Resource
            from opentelemetry.sdk.trace import TracerProvider
            from opentelemetry.sdk.trace.export import BatchSpanProcessor

            from router.telemetry.otlp import MetricPusher
            from router.telemetry.tracing import Tracing
        except ImportError as exc:
            raise TelemetryUnavailable(
                f"telemetry.otlp_endpoint is set but OpenTelemetry is not installed ({exc.name}): "
                "pip install 'modeshift[telemetry]', or remove otlp_endpoint"
            ) from None
        if endpoint is not None:
            from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            base = endpoint.rstrip("/")
            span_exporter = span_exporter or OTLPSpanExporter(endpoint=f"{base}/v1/traces")
            metric_exporter = metric_exporter or OTLPMetricExporter(endpoint=f"{base}/v1/metrics")
        resource = Resource.create({"service.name": config.service_name})
        tracing = pusher = None
        if span_exporter is not None:
            provider = TracerProvider(resource=resource)
            provider.add_span_processor(BatchSpanProcessor(span_exporter))
            tracing = Tracing(provider, config.trace_sampling)
        if metric_exporter is not None:
            pusher = MetricPusher(metric_exporter, resource, config.otlp_interval_s)
        return cls(config, tracing, pusher)

    def configure(self, config: TelemetryConfig) -> None:
        """What a reload may change: the access log and the sampling ratio (exporters need a restart)."""
        self.access_log = config.access_log
        if self.tracing is not None:
            self.tracing.ratio = config.trace_sampling

    def begin(self, trail: Trail, headers: Headers) -> Any:
        """The request's span, if traced; the trail gets the trace id of the span or the client's traceparent."""
        if self.tracing is not None:
            return self.tracing.begin(trail, headers)
        value = headers.get(TRACEPARENT)
        if value is not None and (parent := parent_trace(value)) is not None:
            trail.trace_id = parent[0]
        return None

    def inject(self, span: Any, headers: MutableMapping[str, str]) -> None:
        """Make `span` (one `begin` made: never without tracing) the parent of the upstream call."""
        if self.tracing is not None:
            self.tracing.inject(span, headers)

    def finish(self, span: Any, trail: Trail) -> None:
        if span is not None and self.tracing is not None:
            self.tracing.end(span, trail)
        if trail.status >= 500 or trail.error is not None:
            level = logging.WARNING if trail.status >= 500 or trail.error == "upstream_broke_off" else logging.INFO
            event(error_logger, "request_failed", level, **trail.access_record())
        if self.access_log:
            event(access_logger, "access", **trail.access_record())

    def start(self, read_figures: Callable[[], list[Family]]) -> None:
        """Push the metric families `read_figures` returns, every otlp_interval, when OTLP is on."""
        if self.pusher is not None:
            self.pusher.start(read_figures)

    async def close(self) -> None:
        if self.pusher is not None:
            await self.pusher.close()
        if self.tracing is not None:
            await asyncio.to_thread(self.tracing.shutdown)  # flushes the spans still queued
