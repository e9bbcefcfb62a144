"""Spans, OTLP metrics and request log lines, exported over real OTLP/HTTP to a loopback collector."""

from __future__ import annotations

import asyncio
import logging
import random

import pytest
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from router.headers import parent_trace
from router.telemetry.tracing import Tracing
from router.trail import Trail
from tests.router.helpers import two_lane_config
from tests.router.test_microbatch import BATCH, batching_config

PARENT_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_SPAN = "00f067aa0ba902b7"


class Collector:
    """An OTLP/HTTP receiver: decodes what the exporters post to /v1/traces and /v1/metrics."""

    def __init__(self) -> None:
        self.spans: list = []
        self.metrics: list = []
        self.url = ""

    async def traces(self, request: web.Request) -> web.Response:
        message = ExportTraceServiceRequest.FromString(await request.read())
        for resource in message.resource_spans:
            for scope in resource.scope_spans:
                self.spans.extend(scope.spans)
        return web.Response(content_type="application/x-protobuf")

    async def metric_posts(self, request: web.Request) -> web.Response:
        message = ExportMetricsServiceRequest.FromString(await request.read())
        for resource in message.resource_metrics:
            for scope in resource.scope_metrics:
                self.metrics.append({m.name: m for m in scope.metrics})
        return web.Response(content_type="application/x-protobuf")


@pytest.fixture
async def collector():
    sink = Collector()
    app = web.Application()
    app.router.add_post("/v1/traces", sink.traces)
    app.router.add_post("/v1/metrics", sink.metric_posts)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    sink.url = f"http://{host}:{port}"
    yield sink
    await runner.cleanup()


def traced_config(upstream_url: str, collector: Collector, sampling: float, **overrides):
    telemetry = {"otlp_endpoint": collector.url, "trace_sampling": sampling, **overrides.pop("telemetry", {})}
    return two_lane_config(
        [upstream_url],
        [upstream_url],
        routes=[{"path": "/v1", "protocol": "http"}],
        telemetry=telemetry,
        **overrides,
    )


async def flush_spans(router) -> None:
    await asyncio.to_thread(router.runtime.telemetry.tracing.provider.force_flush)


def attributes(span) -> dict:
    return {a.key: getattr(a.value, a.value.WhichOneof("value")) for a in span.attributes}


async def test_a_traced_request_is_one_span_that_parents_the_upstream_call(collector, upstream, start_router, client):
    server = await upstream()
    router = await start_router(traced_config(server.url, collector, sampling=0.0))
    traceparent = f"00-{PARENT_TRACE}-{PARENT_SPAN}-01"
    async with client.post(f"{router.url}/v1/things?x=1", data=b"abc", headers={"traceparent": traceparent}) as r:
        assert r.status == 200
        sent_upstream = (await r.json())["headers"]["traceparent"]
    await flush_spans(router)
    [span] = collector.spans
    assert span.trace_id.hex() == PARENT_TRACE and span.parent_span_id.hex() == PARENT_SPAN
    assert sent_upstream == f"00-{PARENT_TRACE}-{span.span_id.hex()}-01"
    found = attributes(span)
    assert span.name == "POST /v1"
    assert found["http.route"] == "/v1" and found["url.path"] == "/v1/things"
    assert found["http.response.status_code"] == 200
    assert found["modeshift.lane"] == "realtime" and found["modeshift.pinned"] is False
    assert found["server.address"] == server.url
    assert found["modeshift.request_id"] == r.headers["X-Request-Id"]


async def test_an_unsampled_parent_is_passed_upstream_as_it_came_and_not_traced(
    collector, upstream, start_router, client
):
    server = await upstream()
    router = await start_router(traced_config(server.url, collector, sampling=1.0))
    traceparent = f"00-{PARENT_TRACE}-{PARENT_SPAN}-00"
    async with client.get(f"{router.url}/v1/a", headers={"traceparent": traceparent}) as r:
        assert (await r.json())["headers"]["traceparent"] == traceparent
    async with client.get(f"{router.url}/v1/b") as r:  # no parent: sampled at 1.0
        assert int((await r.json())["headers"]["traceparent"][-2:], 16) & 1  # the sampled flag
    await flush_spans(router)
    assert [attributes(s)["url.path"] for s in collector.spans] == ["/v1/b"]


async def test_a_micro_batched_span_names_its_batch_and_queue_wait(collector, upstream, start_router, client):
    async def embeddings(request: web.Request) -> web.Response:
        payload = await request.json()
        data = [{"object": "embedding", "index": i, "embedding": [0.0]} for i in range(len(payload["input"]))]
        return web.json_response({"object": "list", "data": data, "model": "m", "usage": {"prompt_tokens": 2}})

    server = await upstream(embeddings)
    config = batching_config(server.url, server.url, max_wait="30ms")
    config = config.model_copy(
        update={"telemetry": config.telemetry.model_copy(update={"otlp_endpoint": collector.url, "trace_sampling": 1})}
    )
    router = await start_router(config)
    answers = await asyncio.gather(
        *(client.post(f"{router.url}/v1/embeddings", json={"input": "x"}, headers=BATCH) for _ in range(3))
    )
    batch_ids = {a.headers["X-Modeshift-Batch"] for a in answers}
    await flush_spans(router)
    found = [attributes(s) for s in collector.spans]
    assert len(found) == 3 and {f["modeshift.batch_id"] for f in found} == batch_ids
    assert all(f["modeshift.lane"] == "batch" and f["modeshift.pinned"] for f in found)
    assert all(0.0 < f["modeshift.queue_wait_s"] < 10 for f in found)


async def test_metrics_are_pushed_over_otlp_with_the_same_figures_as_prometheus(
    collector, upstream, start_router, client
):
    server = await upstream()
    config = traced_config(
        server.url,
        collector,
        sampling=0.0,
        lanes={"realtime": {"upstreams": [server.url], "cost": {"per_request": 0.002}}},
    )
    router = await start_router(config)
    for _ in range(4):
        async with client.get(f"{router.url}/v1/a") as r:
            assert r.status == 200
    await router.runtime.telemetry.pusher.push()
    metrics = collector.metrics[-1]
    [requests] = metrics["modeshift_requests"].sum.data_points
    assert metrics["modeshift_requests"].sum.is_monotonic and requests.as_int == 4
    assert {a.key: a.value.string_value for a in requests.attributes} == {
        "route": "/v1",
        "lane": "realtime",
        "code": "200",
    }
    [duration] = metrics["modeshift_request_duration_seconds"].histogram.data_points
    assert duration.count == 4 and sum(duration.bucket_counts) == 4
    assert len(duration.bucket_counts) == len(duration.explicit_bounds) + 1
    assert metrics["modeshift_request_duration_seconds"].unit == "s"
    cost = {p.attributes[0].value.string_value: p.as_double for p in metrics["modeshift_cost_usd"].sum.data_points}
    assert cost["realtime"] == pytest.approx(0.008)
    weights = {
        p.attributes[0].value.string_value: p.as_double for p in metrics["modeshift_lane_weight"].gauge.data_points
    }
    assert weights == {"realtime": 1.0, "batch": 0.0}


async def test_a_failed_request_logs_one_line_with_its_request_and_trace_ids(start_router, client, caplog):
    router = await start_router(two_lane_config(["http://127.0.0.1:9"], ["http://127.0.0.1:9"]))
    traceparent = f"00-{PARENT_TRACE}-{PARENT_SPAN}-00"
    with caplog.at_level(logging.INFO, logger="modeshift"):
        async with client.get(f"{router.url}/x", headers={"traceparent": traceparent}) as r:
            assert r.status == 502
    [line] = [rec.fields for rec in caplog.records if getattr(rec, "fields", {}).get("event") == "request_failed"]
    assert line["request_id"] == r.headers["X-Request-Id"] and line["trace_id"] == PARENT_TRACE
    assert line["status"] == 502 and line["error"] == "upstream_unavailable" and "127.0.0.1:9" in line["detail"]


async def test_the_access_log_is_off_by_default_and_one_line_per_request_when_on(
    upstream, start_router, client, caplog
):
    server = await upstream()
    quiet = await start_router(two_lane_config([server.url], [server.url]))
    loud = await start_router(two_lane_config([server.url], [server.url], telemetry={"access_log": True}))
    with caplog.at_level(logging.INFO, logger="modeshift"):
        for router in (quiet, loud, loud):
            async with client.get(f"{router.url}/y", headers={"X-Modeshift-Mode": "batch"}) as r:
                assert r.status == 200
    lines = [rec.fields for rec in caplog.records if getattr(rec, "fields", {}).get("event") == "access"]
    assert len(lines) == 2
    assert lines[0]["lane"] == "batch" and lines[0]["pinned"] and lines[0]["status"] == 200
    assert lines[0]["upstream"] == server.url and lines[0]["duration_ms"] >= 0


def test_the_sampling_ratio_holds_for_requests_without_a_parent():
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing = Tracing(provider, 0.25, draw=random.Random(7).random)
    no_parent = CIMultiDictProxy(CIMultiDict())
    for i in range(2000):
        span = tracing.begin(Trail(str(i), "GET", "/", 0.0), no_parent)
        if span is not None:
            tracing.end(span, Trail(str(i), "GET", "/", 0.0, status=200))
    assert 400 <= len(exporter.get_finished_spans()) <= 600


@pytest.mark.parametrize(
    "value, expected",
    [
        (f"00-{PARENT_TRACE}-{PARENT_SPAN}-01", (PARENT_TRACE, True)),
        (f"00-{PARENT_TRACE.upper()}-{PARENT_SPAN}-00", (PARENT_TRACE, False)),
        (f"01-{PARENT_TRACE}-{PARENT_SPAN}-01-future", (PARENT_TRACE, True)),
        (f"00-{PARENT_TRACE}-{PARENT_SPAN}-01-extra", None),
        (f"ff-{PARENT_TRACE}-{PARENT_SPAN}-01", None),
        (f"00-{'0' * 32}-{PARENT_SPAN}-01", None),
        (f"00-{PARENT_TRACE}-{'0' * 16}-01", None),
        (f"00-{PARENT_TRACE}-{PARENT_SPAN}-zz", None),
        ("garbage", None),
    ],
)
def test_traceparent_parsing_follows_w3c_trace_context(value, expected):
    assert parent_trace(value) == expected
