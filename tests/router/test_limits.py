"""Each limit answers with its status and a JSON body that says what was wrong."""

import asyncio

from aiohttp import web

from tests.router.conftest import two_lane_config


async def error_of(response) -> dict:
    assert response.content_type == "application/json"
    return (await response.json())["error"]


async def raw_exchange(address, data: bytes) -> bytes:
    """Send raw bytes; the answer's head and its Content-Length body.

    Not read to EOF: after an error the server may linger, reading what is
    left of the request before it closes (as nginx does).
    """
    reader, writer = await asyncio.open_connection(*address)
    writer.write(data)
    await writer.drain()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=10)
    lines = head.split(b"\r\n")
    length = next(int(line.split(b":")[1]) for line in lines if line.lower().startswith(b"content-length"))
    body = await asyncio.wait_for(reader.readexactly(length), timeout=10)
    writer.close()
    return head + body


async def test_body_over_the_limit_is_413_before_anything_goes_upstream(upstream, start_router, client):
    realtime = await upstream()
    router = await start_router(two_lane_config([realtime.url], [realtime.url], server={"max_body_bytes": "1KiB"}))
    async with client.post(f"{router.url}/x", data=b"x" * 1025) as response:
        assert response.status == 413
        error = await error_of(response)
        assert error["type"] == "body_too_large" and "1024 bytes" in error["message"]
        assert error["request_id"] == response.headers["X-Request-Id"]

    async def chunked():  # no Content-Length: the router must count
        for _ in range(10):
            yield b"y" * 200

    async with client.post(f"{router.url}/x", data=chunked()) as response:
        assert response.status == 413
    async with client.post(f"{router.url}/x", data=b"x" * 1024) as response:
        assert response.status == 200
    assert len(realtime.seen) == 1


async def test_headers_over_the_limit_are_431(upstream, start_router, client):
    realtime = await upstream()
    router = await start_router(two_lane_config([realtime.url], [realtime.url], server={"max_header_bytes": "2KiB"}))
    many = {f"X-H{i}": "v" * 100 for i in range(30)}  # each line fits, the total does not
    async with client.get(f"{router.url}/x", headers=many) as response:
        assert response.status == 431
        assert (await error_of(response))["type"] == "headers_too_large"
    answer = await raw_exchange(
        router.router.data_address, b"GET /x HTTP/1.1\r\nHost: h\r\nX-Long: " + b"a" * 5000 + b"\r\n\r\n"
    )
    assert answer.split(b"\r\n", 1)[0].endswith(b"431 Request Header Fields Too Large")
    assert b'"type": "headers_too_large"' in answer
    assert not realtime.seen


async def test_a_body_not_received_in_time_is_408(upstream, start_router):
    realtime = await upstream()
    router = await start_router(two_lane_config([realtime.url], [realtime.url], server={"receive_timeout": "200ms"}))
    answer = await raw_exchange(
        router.router.data_address, b"POST /x HTTP/1.1\r\nHost: h\r\nContent-Length: 100\r\n\r\n" + b"z" * 10
    )
    assert answer.startswith(b"HTTP/1.1 408")
    assert b'"type": "request_timeout"' in answer
    assert not realtime.seen


async def test_an_upstream_that_refuses_is_502(upstream, start_router, client):
    gone = await upstream()
    url = gone.url
    await gone.stop()
    router = await start_router(two_lane_config([url], [url]))
    async with client.get(f"{router.url}/x") as response:
        assert response.status == 502
        error = await error_of(response)
        # realtime failed before anything was sent, so batch was tried too
        assert error["type"] == "upstream_unavailable" and error["lane"] == "batch"
        assert "lanes tried: realtime, batch" in error["message"]


async def test_an_upstream_that_does_not_answer_in_time_is_504(upstream, start_router, client):
    async def never(request: web.Request) -> web.Response:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    stuck = await upstream(never)
    lanes = {"realtime": {"upstreams": [stuck.url], "timeout": "200ms"}}
    config = two_lane_config([stuck.url], [stuck.url], lanes=lanes)
    router = await start_router(config)
    async with client.get(f"{router.url}/x") as response:
        assert response.status == 504
        error = await error_of(response)
        assert error["type"] == "upstream_timeout" and "200ms" not in error["message"] and "0.2s" in error["message"]


async def test_a_full_lane_refuses_a_pinned_request_at_once_and_moves_a_switchable_one(upstream, start_router, client):
    release = asyncio.Event()

    async def held(request: web.Request) -> web.Response:
        await release.wait()
        return web.Response(text="ok")

    realtime, batch = await upstream(held), await upstream()
    full = {"max_in_flight": 1, "queue_depth": 0}
    config = two_lane_config([realtime.url], [batch.url], lanes={"realtime": {"upstreams": [realtime.url], **full}})
    router = await start_router(config)
    first = asyncio.create_task(client.get(f"{router.url}/x"))
    while not realtime.seen:
        await asyncio.sleep(0.01)
    async with client.get(f"{router.url}/x", headers={"X-Modeshift-Mode": "realtime"}) as response:
        assert response.status == 503
        assert int(response.headers["Retry-After"]) >= 1
        error = await error_of(response)
        assert error["type"] == "lane_full" and error["lane"] == "realtime"
        assert "queue is full (0 requests wait)" in error["message"] and "spill" in error["message"]
    async with client.get(f"{router.url}/x") as response:  # switchable: bound to the lane that has room
        assert response.status == 200
        assert response.headers["X-Modeshift-Lane"] == "batch"
    release.set()
    (await first).release()


async def test_malformed_http_gets_a_json_400(upstream, start_router):
    realtime = await upstream()
    router = await start_router(two_lane_config([realtime.url], [realtime.url]))
    answer = await raw_exchange(router.router.data_address, b"GET /x HTTP/1.1\r\nBad Header\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 400") or answer.startswith(b"HTTP/1.0 400")
    assert b'"type": "bad_request"' in answer
