"""A span per proxied request (OpenTelemetry), with W3C trace context carried upstream.

Sampling is parent-based: a request whose `traceparent` says sampled is
traced; one that says not sampled is not (its header goes upstream as it
came); a request without one is traced with probability `ratio`. The draw
comes first and OpenTelemetry is touched only for the requests it keeps, so
the untraced majority pays one dictionary lookup and one random number.

A traced request's span is the parent of the upstream call: its context
replaces the `traceparent` (and `tracestate`) sent upstream. A micro-batched
request's span names its batch; the merged call itself carries no one
request's context.

Span attributes follow OpenTelemetry's HTTP conventions where they exist
(`http.request.method`, `http.route`, `http.response.status_code`,
`server.address`) and `modeshift.*` for the rest: lane, pinned, batch id,
queue wait, attributed cost, request id, error type.

What must not live here: exporters and their set-up (router.telemetry.reporter).
"""

from __future__ import annotations

import random
from collections.abc import Callable, MutableMapping

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, format_trace_id, set_span_in_context
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from router.headers import TRACEPARENT, Headers, parent_trace
from router.trail import Trail


class Tracing:
    def __init__(self, provider: TracerProvider, ratio: float, draw: Callable[[], float] = random.random):
        self.provider = provider
        self.tracer = provider.get_tracer("modeshift.router")
        self.ratio = ratio
        self.draw = draw
        self.propagator = TraceContextTextMapPropagator()

    def begin(self, trail: Trail, headers: Headers) -> Span | None:
        """The request's span, or None when it is not traced (its trace id still goes on the trail)."""
        value = headers.get(TRACEPARENT)
        parent = parent_trace(value) if value is not None else None
        if parent is None:
            if self.draw() >= self.ratio:
                return None
            context = None
        else:
            trail.trace_id, sampled = parent
            if not sampled:
                return None
            context = self.propagator.extract(headers)
        span = self.tracer.start_span(f"{trail.method} {trail.path}", context=context, kind=SpanKind.SERVER)
        trail.trace_id = format_trace_id(span.get_span_context().trace_id)
        return span

    def inject(self, span: Span, headers: MutableMapping[str, str]) -> None:
        """Make `span` the parent of the upstream call."""
        self.propagator.inject(headers, context=set_span_in_context(span))

    def end(self, span: Span, trail: Trail) -> None:
        span.update_name(f"{trail.method} {trail.route}")
        attributes: dict[str, str | bool | int | float] = {
            "http.request.method": trail.method,
            "url.path": trail.path,
            "http.route": trail.route,
            "http.response.status_code": trail.status,
            "modeshift.request_id": trail.request_id,
            "modeshift.pinned": trail.pinned,
            "modeshift.queue_wait_s": trail.queue_wait_s,
            "modeshift.cost_usd": trail.cost_usd,
        }
        optional = {
            "modeshift.lane": trail.lane,
            "server.address": trail.upstream,
            "modeshift.batch_id": trail.batch,
            "error.type": trail.error,
        }
        attributes.update({k: v for k, v in optional.items() if v is not None})  # spans take no None
        span.set_attributes(attributes)
        if trail.status >= 500:
            span.set_status(Status(StatusCode.ERROR, trail.error or f"status {trail.status}"))
        span.end()

    def shutdown(self) -> None:
        self.provider.shutdown()
