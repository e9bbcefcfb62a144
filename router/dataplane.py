"""The data-plane HTTP server: aiohttp's low-level server around the proxy.

The proxy routes by its own table, so it runs on `web.Server` (no URL
dispatcher, no middlewares). This module holds what is decided per
connection, before a request reaches the proxy, each answered in the
router's JSON error shape (never aiohttp's plain text) and closing the
connection:

- the parser's limits: a single header line may use the whole
  `max_header_bytes` (the proxy checks the total); a line past it, or too
  many headers, is 431; malformed HTTP is 400;
- time: a request's head must arrive within `header_timeout` of its first
  byte (408), and a connection idle for `keepalive_timeout` is closed
  (aiohttp's keep-alive timer, armed from the connection's start, so a
  client that connects and sends nothing is closed too). Without these,
  clients trickling header bytes hold file descriptors until the process
  runs out and refuses everyone;
- how many: at `max_connections` open connections (the file descriptors
  left serve upstreams), a new connection takes the place of the one that
  has gone longest without a request in progress: one trickling its head
  (answered 408) or idling in keep-alive (closed, as keep-alive allows).
  So slow clients cannot lock out a client that sends its request at
  once. Only when every connection is in a request is the new one refused
  (503, closed at once);
- what a reverse proxy must not forward: CONNECT and TRACE are 405, an HTTP
  version other than 1.0 and 1.1 is 505 (answered as HTTP/1.1).

Handler cancellation is on: when a client disconnects, its request's task is
cancelled, and with it the upstream call.
"""

from __future__ import annotations

import asyncio
import resource
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from aiohttp.abc import AbstractStreamWriter
from aiohttp.http import HttpVersion, HttpVersion10, HttpVersion11
from aiohttp.http_exceptions import BadHttpMessage, BadStatusLine, LineTooLong
from aiohttp.http_parser import RawRequestMessage
from aiohttp.streams import StreamReader

from configs.schema import ServerConfig
from router.errors import (
    ProxyError,
    bad_request,
    head_evicted,
    headers_timeout,
    headers_too_large,
    internal_error,
    method_not_allowed,
    too_many_connections,
    version_not_supported,
)
from router.headers import REQUEST_ID_KEY, request_id_from

# Headers counted one by one: enough for any real client, and a bound on work.
MAX_HEADER_COUNT = 256
NOT_FORWARDED_METHODS = frozenset({"CONNECT", "TRACE"})
_SERVED_VERSIONS = (HttpVersion10, HttpVersion11)
_WIRE_VERSION = web.RequestKey("wire_version", HttpVersion)  # as the client sent it, before the factory's repair


def default_max_connections() -> int:
    """Half the process's open-file limit: the other half is for upstream connections, the store and logs."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return max(16, soft // 2) if soft != resource.RLIM_INFINITY else 65536


class _DataPlaneHandler(web.RequestHandler):
    """One client connection."""

    def __init__(self, manager: DataPlaneServer, **kwargs: Any):
        super().__init__(manager, **kwargs)
        self.plane = manager
        self.in_request = False
        self._head_deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        if self.plane.open_connections > self.plane.max_connections and not self.plane.make_room():
            self._refuse(too_many_connections(self.plane.max_connections))
        else:
            self.plane.idle(self)

    def make_way(self) -> None:
        """Close this connection for a newer one: it has gone longest without a request in progress."""
        if self._head_deadline is not None:
            self._refuse(head_evicted(self.plane.max_connections))
        else:
            self.force_close()

    def data_received(self, data: bytes) -> None:
        if not self.in_request and self._head_deadline is None:
            # The first byte of a request head: the rest must follow within header_timeout.
            self._head_deadline = self._loop.call_later(self.plane.header_timeout_s, self._head_late)
        super().data_received(data)

    def head_arrived(self) -> None:
        self.in_request = True
        self.plane.busy(self)
        if self._head_deadline is not None:
            self._head_deadline.cancel()
            self._head_deadline = None

    def request_done(self) -> None:
        self.in_request = False
        self.plane.idle(self)

    def connection_lost(self, exc: BaseException | None) -> None:
        self.plane.busy(self)
        if self._head_deadline is not None:
            self._head_deadline.cancel()
            self._head_deadline = None
        super().connection_lost(exc)

    def _head_late(self) -> None:
        self._head_deadline = None
        if not self.in_request:
            self._refuse(headers_timeout(self.plane.header_timeout_s))

    def _refuse(self, error: ProxyError) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(error.raw(request_id_from({})))
        self.force_close()

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        error: ProxyError | None = None
        if isinstance(exc, LineTooLong) or (isinstance(exc, BadHttpMessage) and "Too many headers" in str(exc)):
            error = headers_too_large(self.plane.max_header_bytes)
        elif isinstance(exc, BadStatusLine) and "Invalid HTTP version" in exc.message:
            error = version_not_supported("other than 1.0 or 1.1")
        elif status == 400 and isinstance(exc, BadHttpMessage):
            error = bad_request(f"malformed HTTP request: {exc.message}")
            error.close = True
        elif status == 500:
            error = internal_error()
        if error is None or request.writer.output_size > 0:
            return super().handle_error(request, status, exc, message)
        if status == 500:  # aiohttp's own log line, with the traceback, the request id to find it by
            self.log_exception("the proxy failed on request %s", request.get(REQUEST_ID_KEY), exc_info=exc)
        return error.response(request.get(REQUEST_ID_KEY) or request_id_from({}))


class DataPlaneServer(web.Server):
    def __init__(
        self, handler: Callable[[web.BaseRequest], Awaitable[web.StreamResponse]], server: ServerConfig, **kwargs: Any
    ):
        limit = server.max_header_bytes
        super().__init__(
            self._guarded,
            handler_cancellation=True,
            max_line_size=limit,
            max_field_size=limit,
            max_headers=MAX_HEADER_COUNT,
            keepalive_timeout=server.keepalive_timeout_s,
            access_log=None,
            request_factory=self._request,
            **kwargs,
        )
        self._proxy = handler
        self.max_header_bytes = limit
        self.header_timeout_s = server.header_timeout_s
        self.max_connections = server.max_connections or default_max_connections()
        self.open_connections = 0
        # Connections without a request in progress, longest without one first (dicts keep insertion order).
        self._idle: dict[_DataPlaneHandler, None] = {}

    def __call__(self) -> web.RequestHandler:
        return _DataPlaneHandler(self, loop=self._loop, **self._kwargs)

    def connection_made(self, handler: web.RequestHandler, transport: asyncio.Transport) -> None:
        self.open_connections += 1
        super().connection_made(handler, transport)

    def connection_lost(self, handler: web.RequestHandler, exc: BaseException | None = None) -> None:
        self.open_connections -= 1
        super().connection_lost(handler, exc)

    def idle(self, handler: _DataPlaneHandler) -> None:
        self._idle.pop(handler, None)
        self._idle[handler] = None

    def busy(self, handler: _DataPlaneHandler) -> None:
        self._idle.pop(handler, None)

    def make_room(self) -> bool:
        """Close the connection longest without a request; False when every connection is in one."""
        if not self._idle:
            return False
        oldest = next(iter(self._idle))
        del self._idle[oldest]
        oldest.make_way()
        return True

    def _request(
        self,
        message: RawRequestMessage,
        payload: StreamReader,
        protocol: web.RequestHandler,
        writer: AbstractStreamWriter,
        task: asyncio.Task[None],
    ) -> web.BaseRequest:
        assert isinstance(protocol, _DataPlaneHandler)  # this server makes no other handler
        protocol.head_arrived()
        wire_version = message.version
        if wire_version not in _SERVED_VERSIONS:  # answered in a version the client can read
            message = message._replace(version=HttpVersion11)
        request = web.BaseRequest(message, payload, protocol, writer, task, self._loop)
        request[_WIRE_VERSION] = wire_version
        return request

    async def _guarded(self, request: web.BaseRequest) -> web.StreamResponse:
        protocol = request.protocol
        try:
            wire_version = request[_WIRE_VERSION]
            if wire_version not in _SERVED_VERSIONS:
                raise version_not_supported(f"{wire_version.major}.{wire_version.minor}")
            if request.method in NOT_FORWARDED_METHODS:
                raise method_not_allowed(request.method)
        except ProxyError as exc:
            return exc.response(request_id_from(request.headers))
        try:
            return await self._proxy(request)
        finally:
            if isinstance(protocol, _DataPlaneHandler):
                protocol.request_done()
