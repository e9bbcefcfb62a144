"""The data plane end to end: real upstreams and the real router on loopback."""

import asyncio
import math
from collections import Counter

import aiohttp
from aiohttp import web
from multidict import CIMultiDict
from scipy.stats import binom

from policies.control.actions import Force
from tests.router.helpers import echo, gather_limited, two_lane_config


async def test_auto_split_matches_the_weights_within_a_binomial_99_interval(upstream, start_router, client):
    realtime, batch = await upstream(), await upstream()
    router = await start_router(two_lane_config([realtime.url], [batch.url], initial_mode="hybrid"))
    n = 10_000

    async def one(i: int) -> str:
        async with client.get(f"{router.url}/v1/x") as response:
            assert response.status == 200
            return response.headers["X-Modeshift-Lane"]

    lanes = Counter(await gather_limited(n, 64, one))
    low, high = binom.interval(0.99, n, 0.5)
    assert low <= lanes["batch"] <= high, lanes
    assert lanes["batch"] == len(batch.seen) and lanes["realtime"] == len(realtime.seen)


async def test_pinned_requests_ignore_the_weights(upstream, start_router, client):
    realtime, batch = await upstream(), await upstream()
    router = await start_router(two_lane_config([realtime.url], [batch.url], initial_mode="realtime"))
    for _ in range(20):
        async with client.get(f"{router.url}/x", headers={"X-Modeshift-Mode": "batch"}) as response:
            assert response.headers["X-Modeshift-Lane"] == "batch"
    async with client.get(f"{router.url}/x", headers={"X-Modeshift-Mode": "gpu"}) as response:
        assert response.status == 400
        error = (await response.json())["error"]
        assert error["type"] == "bad_request" and "realtime" in error["message"]
    assert len(batch.seen) == 20 and not realtime.seen


async def test_the_priority_header_names_a_declared_class_or_gets_a_json_400(upstream, start_router, client):
    realtime, batch = await upstream(), await upstream()
    objectives = {"interactive": {"latency": "300ms", "priority": 0}}
    router = await start_router(two_lane_config([realtime.url], [batch.url], objectives=objectives))
    async with client.get(f"{router.url}/x", headers={"X-Modeshift-Priority": "urgent"}) as response:
        assert response.status == 400
        error = (await response.json())["error"]
        assert error["type"] == "bad_request" and error["request_id"] == response.headers["X-Request-Id"]
        # No class is listed: a client learns nothing of the classes others may claim.
        assert "interactive" not in error["message"] and "switchable" not in error["message"]
    async with client.get(f"{router.url}/x", headers={"X-Modeshift-Priority": "interactive"}) as response:
        assert response.status == 200
    router.tick()
    outcomes = router.runtime.state.control.last_snapshot.outcomes
    assert outcomes[("interactive", "realtime")].window.completions == 1  # judged by its own objective
    assert realtime.seen[0].headers.get("X-Modeshift-Priority") == "interactive"  # passed on as it came
    assert len(realtime.seen) == 1


async def test_a_route_pin_sends_everything_on_it_to_its_lane(upstream, start_router, client):
    realtime, batch = await upstream(), await upstream()
    routes = [{"path": "/health", "pin": "realtime"}, {"path": "/"}]
    config = two_lane_config([realtime.url], [batch.url], initial_mode="batch", routes=routes)
    router = await start_router(config)
    async with client.get(f"{router.url}/health", headers={"X-Modeshift-Mode": "batch"}) as response:
        assert response.headers["X-Modeshift-Lane"] == "realtime"
    async with client.get(f"{router.url}/other") as response:
        assert response.headers["X-Modeshift-Lane"] == "batch"


async def test_a_deadline_rules_out_a_lane_slower_than_it(upstream, start_router, client):
    release = asyncio.Event()

    async def slow(request: web.Request) -> web.Response:
        await release.wait()
        return web.Response(text="late")

    realtime, batch = await upstream(), await upstream(slow)
    router = await start_router(two_lane_config([realtime.url], [batch.url], initial_mode="batch"))
    # Give the batch lane a measured p95 of about 0.2 s: hold 10 pinned requests, then let them go.
    held = [asyncio.create_task(client.get(f"{router.url}/x")) for _ in range(10)]
    while len(batch.seen) < 10:
        await asyncio.sleep(0.01)
    router.clock.advance(0.2)
    release.set()
    for response in await asyncio.gather(*held):
        response.release()
    router.tick()
    assert math.isclose(router.runtime.state.control.last_snapshot.lanes["batch"].p95_s, 0.2, rel_tol=0.02)

    async with client.get(f"{router.url}/x", headers={"X-Modeshift-Deadline-Ms": "50"}) as response:
        assert response.headers["X-Modeshift-Lane"] == "realtime"
    async with client.get(f"{router.url}/x", headers={"X-Modeshift-Deadline-Ms": "500"}) as response:
        assert response.headers["X-Modeshift-Lane"] == "batch"
    async with client.get(f"{router.url}/x", headers={"X-Modeshift-Deadline-Ms": "soon"}) as response:
        assert response.status == 400


async def test_a_streamed_answer_reaches_the_client_before_the_upstream_finishes(upstream, start_router, client):
    first_chunk_read = asyncio.Event()

    async def sse(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(b"data: one\n\n")
        await first_chunk_read.wait()  # the upstream cannot finish until the client has chunk one
        await response.write(b"data: two\n\n")
        await response.write_eof()
        return response

    realtime = await upstream(sse)
    router = await start_router(two_lane_config([realtime.url], [realtime.url]))
    async with client.get(f"{router.url}/v1/chat/completions") as response:
        assert response.headers["Content-Type"] == "text/event-stream"
        first = await asyncio.wait_for(response.content.readuntil(b"\n\n"), timeout=5)
        assert first == b"data: one\n\n"
        first_chunk_read.set()
        assert await response.content.read() == b"data: two\n\n"


async def test_path_query_and_body_reach_the_upstream_with_forwarding_headers(upstream, start_router, client):
    realtime = await upstream()
    router = await start_router(two_lane_config([realtime.url], [realtime.url]))
    headers = {
        "Connection": "close, X-Forwarded-For",
        "X-Forwarded-For": "6.6.6.6",
        "X-Request-Id": "client-id-1",
        "Keep-Alive": "timeout=5",
    }
    async with client.post(f"{router.url}/v1/x/y?a=1&b=%20", data=b"x" * 1000, headers=headers) as response:
        seen = await response.json()
        assert response.headers["X-Request-Id"] == "client-id-1"
    assert seen["path"] == "/v1/x/y?a=1&b=%20" and seen["size"] == 1000
    forwarded = CIMultiDict(seen["headers"])
    assert forwarded["X-Forwarded-For"] == "127.0.0.1"
    assert "Keep-Alive" not in forwarded and forwarded.get("Connection") != "close, X-Forwarded-For"
    assert forwarded["X-Request-Id"] == "client-id-1"


async def test_an_absolute_form_target_never_reaches_the_host_it_names(upstream, start_router):
    lane_upstream, elsewhere = await upstream(), await upstream()
    router = await start_router(two_lane_config([lane_upstream.url], [lane_upstream.url]))
    host, port = router.router.data_address
    reader, writer = await asyncio.open_connection(host, port)
    target = f"{elsewhere.url}/secret?x=1"
    writer.write(f"GET {target} HTTP/1.1\r\nHost: {elsewhere.url[7:]}\r\nConnection: close\r\n\r\n".encode())
    await writer.drain()
    answer = await asyncio.wait_for(reader.read(), timeout=5)
    writer.close()
    assert answer.startswith(b"HTTP/1.1 200")
    assert not elsewhere.seen
    assert [r.path_qs for r in lane_upstream.seen] == ["/secret?x=1"]


async def test_a_client_disconnect_cancels_the_upstream_call(upstream, start_router):
    started, cancelled = asyncio.Event(), asyncio.Event()

    async def forever(request: web.Request) -> web.Response:
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise

    realtime = await upstream(forever)
    router = await start_router(two_lane_config([realtime.url], [realtime.url]))
    host, port = router.router.data_address
    _, writer = await asyncio.open_connection(host, port)
    writer.write(b"GET /wait HTTP/1.1\r\nHost: x\r\n\r\n")
    await asyncio.wait_for(started.wait(), timeout=5)
    writer.close()
    await asyncio.wait_for(cancelled.wait(), timeout=5)
    lane = router.runtime.state.lanes["realtime"]
    await asyncio.wait_for(lane.gate.wait_idle(), timeout=5)
    assert lane.window.in_flight == 0


async def test_admin_paths_are_not_served_on_the_data_port(upstream, start_router, client):
    realtime = await upstream()
    config = two_lane_config([realtime.url], [realtime.url], routes=[{"path": "/v1"}])
    router = await start_router(config)
    for method, path in (("GET", "/status"), ("POST", "/mode"), ("POST", "/reload")):
        async with client.request(method, f"{router.url}{path}", json={"mode": "batch"}) as response:
            assert response.status == 404
            assert (await response.json())["error"]["type"] == "no_route"
    assert router.runtime.state.control.controller.mode == "realtime"


async def test_forced_mode_moves_auto_traffic(upstream, start_router, client):
    realtime, batch = await upstream(echo), await upstream(echo)
    router = await start_router(two_lane_config([realtime.url], [batch.url]))
    router.runtime.command(Force(mode="batch", gradual=False))
    async with client.get(f"{router.url}/x") as response:
        assert response.headers["X-Modeshift-Lane"] == "batch"


async def test_an_upstream_that_breaks_mid_stream_cuts_the_client_off_rather_than_end_cleanly(
    upstream, start_router, client
):
    async def breaks(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        await response.prepare(request)
        await response.write(b"partial ")
        request.transport.close()  # gone before the final chunk
        return response

    realtime = await upstream(breaks)
    router = await start_router(two_lane_config([realtime.url], [realtime.url]))
    async with client.get(f"{router.url}/x") as response:
        assert response.status == 200
        try:
            await response.read()
            raise AssertionError("a truncated stream must not look complete")
        except aiohttp.ClientPayloadError:
            pass
    router.tick()
    assert router.runtime.state.control.last_snapshot.lanes["realtime"].errors == 1


async def test_each_request_is_recorded_with_the_cost_its_lane_attributes(upstream, start_router, client):
    realtime = await upstream()
    lanes = {"realtime": {"upstreams": [realtime.url], "cost": {"per_request": 0.01}}}
    router = await start_router(two_lane_config([realtime.url], [realtime.url], lanes=lanes))
    for _ in range(3):
        async with client.get(f"{router.url}/x") as response:
            await response.read()
            assert float(response.headers["X-Modeshift-Cost-Usd"]) == 0.01  # the client sees its own cost
    router.tick()
    figures = router.runtime.state.control.last_snapshot.lanes["realtime"]
    assert figures.completions == 3
    assert math.isclose(figures.cost_usd, 0.03)


async def test_expect_100_continue_gets_its_go_ahead_and_stays_with_the_router(upstream, start_router):
    realtime = await upstream(echo)
    router = await start_router(two_lane_config([realtime.url], [realtime.url]))
    reader, writer = await asyncio.open_connection(*router.router.data_address)
    writer.write(b"POST /v1/x HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
    await writer.drain()
    go_ahead = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=5)
    assert go_ahead == b"HTTP/1.1 100 Continue\r\n\r\n"
    writer.write(b"hello")
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=5)
    writer.close()
    assert head.startswith(b"HTTP/1.1 200")
    assert "Expect" not in realtime.seen[0].headers
    assert (await realtime.seen[0].read()) == b"hello"
