"""Each limit answers with its status and a JSON body that says what was wrong."""

import asyncio

from aiohttp import web

from tests.router.helpers import two_lane_config


async def error_of(response) -> dict:
    assert response.content_type == "application/json"
    return (await response.json())["error"]


def content_length(head: bytes) -> int:
    return next(int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length"))


async def raw_exchange(address, data: bytes) -> bytes:
    """Send raw bytes; the answer's head and its Content-Length body.

    Not read to EOF: after an error the server may linger, reading what is
    left of the request before it closes (as nginx does).
    """
    reader, writer = await asyncio.open_connection(*address)
    writer.write(data)
    await writer.drain()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=10)
    body = await asyncio.wait_for(reader.readexactly(content_length(head)), timeout=10)
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


async def slow_client(address, trickle_s: float) -> bytes:
    """Sends a request head one byte at a time; what the router answered before closing."""
    reader, writer = await asyncio.open_connection(*address)
    answer = bytearray()

    async def read_all() -> None:
        try:
            while chunk := await reader.read(65536):
                answer.extend(chunk)
        except ConnectionError:
            pass

    reading = asyncio.ensure_future(read_all())
    try:
        for byte in b"GET /x HTTP/1.1\r\nHost: a\r\nX-Slow: " + b"y" * 1000:
            if reading.done():
                break
            writer.write(bytes([byte]))
            await asyncio.sleep(trickle_s)
        await asyncio.wait_for(reading, timeout=10)
    finally:
        writer.close()
    return bytes(answer)


async def test_slow_clients_are_cut_at_the_header_deadline_and_make_way_for_ready_ones_at_the_cap(
    upstream, start_router, client
):
    realtime = await upstream()
    server = {"header_timeout": "500ms", "max_connections": 30}
    router = await start_router(two_lane_config([realtime.url], [realtime.url], server=server))
    address = router.router.data_address
    slow = []
    for _ in range(60):  # twice the cap: the later ones take the places of the earlier ones
        slow.append(asyncio.ensure_future(slow_client(address, 0.05)))
        await asyncio.sleep(0.001)
    await asyncio.sleep(0.1)
    served = []
    for i in range(20):
        headers = {"Connection": "close"} if i % 2 else {}  # new connections too, while the cap is full
        async with client.get(f"{router.url}/x", headers=headers) as response:
            served.append(response.status)
    answers = await asyncio.gather(*slow)
    assert served == [200] * 20  # the slow ones never took a ready client's place
    assert all(answer.startswith(b"HTTP/1.1 408") for answer in answers), [a[:40] for a in answers]
    made_way = [a for a in answers if b"needed this connection" in a]
    timed_out = [a for a in answers if b"server.header_timeout" in a]
    assert made_way and timed_out and len(made_way) + len(timed_out) == 60
    assert b'"type": "request_timeout"' in timed_out[0] and b"X-Request-Id" in timed_out[0]


async def test_at_the_cap_with_every_connection_in_a_request_a_new_one_gets_503_at_once(upstream, start_router):
    release = asyncio.Event()

    async def held(request: web.Request) -> web.Response:
        await release.wait()
        return web.Response(text="done")

    realtime = await upstream(held)
    router = await start_router(two_lane_config([realtime.url], [realtime.url], server={"max_connections": 3}))
    address = router.router.data_address
    busy = []
    for _ in range(3):
        reader, writer = await asyncio.open_connection(*address)
        writer.write(b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n")
        busy.append((reader, writer))
    while len(realtime.seen) < 3:
        await asyncio.sleep(0.01)
    answer = await slow_client(address, 0.01)
    assert answer.startswith(b"HTTP/1.1 503") and b"Retry-After: 1" in answer
    assert b'"type": "too_many_connections"' in answer and b"server.max_connections" in answer
    release.set()
    for reader, writer in busy:
        assert (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)).startswith(b"HTTP/1.1 200")
        writer.close()


async def test_an_idle_keep_alive_connection_is_closed_after_keepalive_timeout(upstream, start_router):
    realtime = await upstream()
    router = await start_router(two_lane_config([realtime.url], [realtime.url], server={"keepalive_timeout": "300ms"}))
    reader, writer = await asyncio.open_connection(*router.router.data_address)
    writer.write(b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n")
    await writer.drain()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=5)
    assert head.startswith(b"HTTP/1.1 200")
    length = next(
        int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")
    )
    await reader.readexactly(length)
    assert await asyncio.wait_for(reader.read(), timeout=5) == b""  # closed by the router, not by the client
    writer.close()
