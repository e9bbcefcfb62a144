"""Receiving a request within its limits, before anything goes upstream.

The body is read whole (as nginx does by default with proxy_request_buffering)
and counted as it streams in, for three reasons: a body over the limit gets
413 before a byte reaches an upstream, whatever Content-Length claimed or
chunked encoding hid; a slow client holds a router slot, not an upstream's;
and a request that failed to connect can be sent again, to another upstream
or lane, because its body is still here. Responses, by contrast, stream.
A client that asks `Expect: 100-continue` gets its go-ahead here, once the
declared size passed; the upstream never sees the Expect, since the body
reaches it whole.
"""

from __future__ import annotations

import asyncio
from itertools import chain

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from router.errors import bad_request, body_too_large, headers_too_large, request_timeout

# Each header line costs its name, its value, ": " and CRLF on the wire.
_HEADER_LINE_OVERHEAD = 4


def check_header_size(request: web.BaseRequest, limit: int) -> None:
    raw = request.raw_headers
    size = sum(map(len, chain.from_iterable(raw))) + _HEADER_LINE_OVERHEAD * len(raw)
    if size > limit:
        raise headers_too_large(limit, size)


async def read_body(request: web.BaseRequest, *, limit: int, timeout_s: float) -> bytes:
    """The whole body; 413 over `limit` bytes, 408 if it takes longer than `timeout_s`."""
    declared = request.content_length
    if declared is not None and declared > limit:
        raise body_too_large(limit)
    if not request.body_exists:
        return b""
    if request.version >= (1, 1) and request.headers.get("Expect", "").lower() == "100-continue":
        # The client waits for a go-ahead before it sends the body (curl does
        # for bodies over 1 KiB); the low-level server leaves that to us.
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(timeout_s):
            async for chunk in request.content.iter_any():
                size += len(chunk)
                if size > limit:
                    raise body_too_large(limit)
                chunks.append(chunk)
    except TimeoutError:
        raise request_timeout(timeout_s) from None
    except HttpProcessingError as exc:  # a malformed chunked body, a short Content-Length
        raise bad_request(f"the request body could not be read: {exc}") from None
    return b"".join(chunks)
