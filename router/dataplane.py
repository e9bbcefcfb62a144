"""The data-plane HTTP server: aiohttp's low-level server around the proxy.

The proxy routes by its own table, so it runs on `web.Server` (no URL
dispatcher, no middlewares). The parser's limits come from the config: a
single header line may use the whole `max_header_bytes`, and the proxy
checks the total. What the parser refuses before any handler runs (a header
line past the limit, too many headers, malformed HTTP) is answered here in
the router's JSON error shape instead of aiohttp's plain text.

Handler cancellation is on: when a client disconnects, its request's task is
cancelled, and with it the upstream call.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import BadHttpMessage, LineTooLong

from configs.schema import ServerConfig
from router.errors import ProxyError, bad_request, headers_too_large

# Headers counted one by one: enough for any real client, and a bound on work.
MAX_HEADER_COUNT = 256


class _DataPlaneHandler(web.RequestHandler):
    max_header_bytes = 0

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        error: ProxyError | None = None
        if isinstance(exc, LineTooLong) or (isinstance(exc, BadHttpMessage) and "Too many headers" in str(exc)):
            error = headers_too_large(self.max_header_bytes)
        elif status == 400 and isinstance(exc, BadHttpMessage):
            error = bad_request(f"malformed HTTP request: {exc.message}")
            error.close = True
        if error is None or request.writer.output_size > 0:
            return super().handle_error(request, status, exc, message)
        return error.response(None)


class DataPlaneServer(web.Server):
    def __init__(self, handler: Any, server: ServerConfig, **kwargs: Any):
        limit = server.max_header_bytes
        super().__init__(
            handler,
            handler_cancellation=True,
            max_line_size=limit,
            max_field_size=limit,
            max_headers=MAX_HEADER_COUNT,
            access_log=None,
            **kwargs,
        )
        self._max_header_bytes = limit

    def __call__(self) -> web.RequestHandler:
        handler = _DataPlaneHandler(self, loop=self._loop, **self._kwargs)
        handler.max_header_bytes = self._max_header_bytes
        return handler
