"""A corpus of malformed and hostile HTTP/1.x, sent as raw bytes to a live router.

Each case is answered with its status in the router's JSON shape, on a
connection of its own, and the upstream never sees a request it did not
ask for: nothing smuggled behind a framing trick reaches it.
"""

from __future__ import annotations

import asyncio
import json

import pytest
from aiohttp import web

from tests.router.helpers import two_lane_config
from tests.router.test_limits import content_length

SMUGGLED = b"GET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n"
HUGE = 70 * 1024  # over the default max_header_bytes (64 KiB)

CORPUS = {
    "content-length and chunked together": (
        b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n" + SMUGGLED,
        400,
    ),
    "two different content-lengths": (
        b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 40\r\n\r\nhello" + SMUGGLED,
        400,
    ),
    "a content-length that is not a number": (
        b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: +5\r\n\r\nhello",
        400,
    ),
    "a chunk size that is not hex": (
        b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
        400,
    ),
    "a chunk longer than its size": (
        b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhello\r\n0\r\n\r\n" + SMUGGLED,
        400,
    ),
    "a transfer-encoding other than chunked last": (
        b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n" + SMUGGLED,
        400,
    ),
    "an obs-folded header": (b"GET /x HTTP/1.1\r\nHost: a\r\nX-A: b\r\n c\r\n\r\n", 400),
    "bare LF line ends": (b"GET /x HTTP/1.1\nHost: a\n\n", 400),
    "a NUL in a header value": (b"GET /x HTTP/1.1\r\nHost: a\r\nX-A: b\x00c\r\n\r\n", 400),
    "a CR alone in a header value": (b"GET /x HTTP/1.1\r\nHost: a\r\nX-A: b\rc\r\n\r\n", 400),
    "a space before the colon": (b"GET /x HTTP/1.1\r\nHost: a\r\nX-A : b\r\n\r\n", 400),
    "a header without a colon": (b"GET /x HTTP/1.1\r\nHost: a\r\nBad Header\r\n\r\n", 400),
    "a request line far too long": (b"GET /" + b"a" * HUGE + b" HTTP/1.1\r\nHost: a\r\n\r\n", 431),
    "a header line far too long": (b"GET /x HTTP/1.1\r\nHost: a\r\nX-A: " + b"a" * HUGE + b"\r\n\r\n", 431),
    "CONNECT": (b"CONNECT upstream.example:443 HTTP/1.1\r\nHost: upstream.example:443\r\n\r\n", 405),
    "TRACE": (b"TRACE /x HTTP/1.1\r\nHost: a\r\n\r\n", 405),
    "HTTP/2.0 in an HTTP/1 request line": (b"GET /x HTTP/2.0\r\nHost: a\r\n\r\n", 505),
    "HTTP/3.0": (b"GET /x HTTP/3.0\r\nHost: a\r\n\r\n", 505),
    "an HTTP/0.9 request line": (b"GET /x\r\n\r\n", 505),
    "a method with a separator in it": (b"GE(T /x HTTP/1.1\r\nHost: a\r\n\r\n", 400),
}


@pytest.fixture
async def router_and_upstream(upstream, start_router):
    seen: list[str] = []

    async def record(request: web.Request) -> web.Response:
        seen.append(request.raw_path)
        await request.read()
        return web.Response(text="ok")

    server = await upstream(record)
    router = await start_router(two_lane_config([server.url], [server.url]))
    return router, seen


async def exchange(address, data: bytes) -> tuple[bytes, bytes]:
    """The status line and the body of the first answer to `data`, then everything else until the close."""
    reader, writer = await asyncio.open_connection(*address)
    writer.write(data)
    await writer.drain()
    try:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=10)
        body = await asyncio.wait_for(reader.readexactly(content_length(head)), timeout=10)
        rest = await asyncio.wait_for(reader.read(), timeout=10)  # a second answer here would be a smuggled one
    finally:
        writer.close()
    assert b"HTTP/1.1 200" not in rest and b"smuggled" not in rest
    return head.split(b"\r\n", 1)[0], body


@pytest.mark.parametrize("case", list(CORPUS))
async def test_each_malformed_request_gets_its_status_and_reaches_no_upstream(case, router_and_upstream):
    router, seen = router_and_upstream
    data, status = CORPUS[case]
    status_line, body = await exchange(router.router.data_address, data)
    assert status_line.startswith(b"HTTP/1.") and int(status_line.split()[1]) == status, (case, status_line)
    error = json.loads(body)["error"]
    assert error["type"] and error["message"]
    assert seen == []


async def test_an_absolute_form_target_is_routed_by_its_path_and_sent_on_in_origin_form(router_and_upstream):
    router, seen = router_and_upstream
    status_line, _ = await exchange(
        router.router.data_address,
        b"GET http://elsewhere.example/x?q=1 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    )
    assert status_line.startswith(b"HTTP/1.1 200")
    assert seen == ["/x?q=1"]
