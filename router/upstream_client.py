"""The HTTP/1.1 client the proxy calls its upstreams with: pooled, lean, streaming.

Why not aiohttp's ClientSession: it builds per call what a proxy never needs
(cookies, tracing hooks, redirects, URL and wrapper objects) and took about
60% of the router's CPU per request. A proxy's upstream call is narrow: body
buffered, headers filtered, URL the lane's base plus the request's target.
So this writes the request in one go and parses the answer with httptools
(llhttp, Node.js's parser).

What it guarantees:
- Keep-alive connections per origin, reused newest first. An idle connection
  is closed after `IDLE_S`, below the 5 s keep-alive of uvicorn (vLLM, TGI's
  router and most Python model servers), so the upstream never closes one
  just as a request goes out on it. A connection the upstream closed while
  idle is dropped; if it turns out dead anyway before any byte of the answer
  came back, an idempotent request is sent again on a new connection.
- `ConnectFailed` when the connection could not be made: nothing was sent,
  the caller may try elsewhere. `TimeoutError` when the upstream stays silent
  longer than the read timeout, before its answer or between two chunks
  (time spent paused because the client reads slowly does not count).
  `UpstreamBrokeOff` when the connection dies or the answer is malformed
  after the request went out.
- The body streams with backpressure: past `HIGH_WATER` bytes not yet taken
  by the caller, reading from the upstream pauses.
- A response that was not read to its end is never reused: its connection
  is closed on release.

What must not live here: which upstream to call (policies.path.upstream_pool), header
rules (router.headers), error answers (router.errors).
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import httptools
from multidict import CIMultiDict
from yarl import URL

IDLE_S = 4.0
HIGH_WATER = 256 * 1024
LOW_WATER = 64 * 1024

_IDEMPOTENT = frozenset({"GET", "HEAD", "PUT", "DELETE", "OPTIONS", "TRACE"})
# Methods whose request carries a body by definition: they always get a
# Content-Length, even of 0, since some servers refuse a POST without one.
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
# Bodies up to this size go out in the same write as the request head.
_ONE_WRITE_BYTES = 64 * 1024


class ConnectFailed(Exception):
    """No connection to the upstream: nothing was sent."""


class UpstreamBrokeOff(Exception):
    """The connection failed, or the answer was malformed, after the request went out."""


class _Stale(Exception):
    """A reused connection died before any byte of the answer: safe to resend an idempotent request."""


@dataclass(frozen=True, slots=True)
class Origin:
    """Where one upstream base URL sends its requests."""

    host: str
    port: int
    tls: bool
    host_header: str
    prefix: str  # the base URL's path, which prefixes every request target

    @classmethod
    def of(cls, base: str) -> Origin:
        url = URL(base)
        if url.scheme not in ("http", "https") or not url.host:
            raise ValueError(f"not an http(s) URL: {base!r}")
        default_port = url.port == (443 if url.scheme == "https" else 80)
        host_header = url.host if default_port or url.port is None else f"{url.host}:{url.port}"
        if ":" in url.host:  # an IPv6 literal is bracketed in Host
            host_header = f"[{url.host}]" if default_port else f"[{url.host}]:{url.port}"
        return cls(url.host, url.port or 80, url.scheme == "https", host_header, url.raw_path.rstrip("/"))


class UpstreamResponse:
    """One upstream answer: status and headers at once, the body as it arrives."""

    __slots__ = (
        "status",
        "reason",
        "headers",
        "content_length",
        "done",
        "_conn",
        "_keep_alive",
        "_close_delimited",
        "_buffer",
        "_buffered",
        "_error",
        "_waiter",
        "_paused",
    )

    def __init__(self, conn: _Connection):
        self.status = 0
        self.reason = ""
        self.headers: CIMultiDict[str] = CIMultiDict()
        self.content_length: int | None = None
        self.done = False
        self._conn: _Connection | None = conn
        self._keep_alive = False
        self._close_delimited = False
        self._buffer: deque[bytes] = deque()
        self._buffered = 0
        self._error: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._paused = False

    async def read(self) -> bytes:
        """The whole body."""
        if not (self.done and self._error is None):
            return b"".join([chunk async for chunk in self.chunks()])
        body = b"".join(self._buffer)
        self._buffer.clear()
        self._buffered = 0
        self._unpause()
        return body

    async def chunks(self) -> AsyncIterator[bytes]:
        """The body, chunk by chunk as the upstream sends it."""
        buffer = self._buffer
        while True:
            if buffer:
                chunk = buffer.popleft()
                self._buffered -= len(chunk)
                if self._paused and self._buffered <= LOW_WATER:
                    self._unpause()
                yield chunk
            elif self._error is not None:
                raise self._error
            elif self.done:
                return
            else:
                self._waiter = asyncio.get_running_loop().create_future()
                try:
                    await self._waiter
                finally:
                    self._waiter = None

    def _unpause(self) -> None:
        if self._paused:
            self._paused = False
            if self._conn is not None:
                self._conn.resume()

    def release(self) -> None:
        """Hand the connection back: to the pool when the answer was read whole, else closed."""
        conn = self._conn
        if conn is None:
            return
        reusable = self.done and self._error is None and self._keep_alive and not self._buffer
        if reusable:
            self._unpause()  # a large answer may have ended with reading paused; the next must be read
        self._conn = conn.response = None
        if reusable:
            conn.client.put_idle(conn)
        else:
            conn.close()

    # Fed by the connection.

    def _data(self, chunk: bytes) -> None:
        self._buffer.append(chunk)
        self._buffered += len(chunk)
        if self._buffered > HIGH_WATER and not self._paused and self._conn is not None:
            self._paused = True
            self._conn.pause()
        self._wake()

    def _finish(self) -> None:
        self.done = True
        self._wake()

    def _fail(self, error: BaseException) -> None:
        if not self.done:
            self._error = error
            self.done = True
            self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)


class _Connection(asyncio.Protocol):
    """One keep-alive connection, one exchange at a time."""

    def __init__(self, client: UpstreamClient, origin: Origin):
        self.client = client
        self.origin = origin
        self.loop = client.loop
        self.transport: asyncio.Transport | None = None
        self.response: UpstreamResponse | None = None
        self.idle_since_s = 0.0
        self.reused = False
        self.lost = False
        self._parser = httptools.HttpResponseParser(self)
        self._head: asyncio.Future[UpstreamResponse] | None = None
        self._head_only = False
        self._interim = False
        self._reason: list[bytes] = []
        self._raw_headers: list[tuple[bytes, bytes]] = []
        self._received = 0
        self._last_data_s = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._timeout_s = client.read_timeout_s

    def send(
        self, method: str, target: str, headers: CIMultiDict[str], body: bytes
    ) -> asyncio.Future[UpstreamResponse]:
        """Write the request; the future resolves when the answer's head is in."""
        lines = [f"{method} {self.origin.prefix}{target} HTTP/1.1\r\nHost: {self.origin.host_header}\r\n"]
        lines += [f"{name}: {value}\r\n" for name, value in headers.items()]
        if body or method in _BODY_METHODS:
            lines.append(f"Content-Length: {len(body)}\r\n")
        lines.append("\r\n")
        head = "".join(lines).encode("utf-8", "surrogateescape")
        self.response = UpstreamResponse(self)
        self._head = self.loop.create_future()
        self._head_only = method == "HEAD"
        self._received = 0
        transport = self.transport
        assert transport is not None
        if len(body) <= _ONE_WRITE_BYTES:
            transport.write(head + body)
        else:
            transport.write(head)
            transport.write(body)
        self._last_data_s = self.loop.time()
        self._timer = self.loop.call_at(self._last_data_s + self._timeout_s, self._check_silence)
        return self._head

    def pause(self) -> None:
        if self.transport is not None:
            self.transport.pause_reading()

    def resume(self) -> None:
        if self.transport is not None and not self.lost:
            self.transport.resume_reading()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
        self._stop_timer()

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self.response is None:  # bytes on an idle connection: the upstream is confused
            self.close()
            return
        self._last_data_s = self.loop.time()
        self._received += len(data)
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._failed(UpstreamBrokeOff(f"malformed response from {self.origin.host_header}: {exc}"))
            self.close()

    def eof_received(self) -> bool:
        return False  # close our side too; connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self._stop_timer()
        self.client.forget(self)
        response = self.response
        if response is None or response.done:
            return
        if response.status and response._close_delimited:  # the body ends where the connection does
            response._finish()
        elif self._received == 0 and self.reused:
            self._failed(_Stale())
        else:
            detail = f": {exc}" if exc else ""
            self._failed(UpstreamBrokeOff(f"{self.origin.host_header} closed the connection mid-answer{detail}"))

    # httptools callbacks

    def on_message_begin(self) -> None:
        self._reason.clear()
        self._raw_headers.clear()

    def on_status(self, reason: bytes) -> None:
        self._reason.append(reason)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._raw_headers.append((name, value))

    def on_headers_complete(self) -> None:
        parser = self._parser
        status = parser.get_status_code()
        if status < 200:  # 1xx interim answers (103 Early Hints) carry nothing for us
            self._interim = True
            return
        response = self.response
        assert response is not None
        response.status = status
        response.reason = b"".join(self._reason).decode("latin-1")
        headers = response.headers
        chunked = False
        for name, value in self._raw_headers:
            key = name.decode("latin-1")
            text = value.decode("utf-8", "surrogateescape")
            headers.add(key, text)
            if key.lower() == "content-length" and text.isdigit():
                response.content_length = int(text)
            elif key.lower() == "transfer-encoding":
                chunked = True
        if chunked:
            response.content_length = None
        response._keep_alive = parser.should_keep_alive() and not self._head_only
        response._close_delimited = (
            response.content_length is None and not chunked and status not in (204, 304) and not self._head_only
        )
        if self._head_only:
            response._finish()
            self._stop_timer()
        if self._head is not None and not self._head.done():
            self._head.set_result(response)

    def on_body(self, body: bytes) -> None:
        if self.response is not None:
            self.response._data(body)

    def on_message_complete(self) -> None:
        if self._interim:
            self._interim = False
            return
        self._stop_timer()
        if self.response is not None:
            self.response._finish()

    # Failure paths

    def _failed(self, error: BaseException) -> None:
        self._stop_timer()
        if self._head is not None and not self._head.done():
            self._head.set_exception(error)
        if self.response is not None:
            self.response._fail(error if not isinstance(error, _Stale) else UpstreamBrokeOff(str(error)))

    def _check_silence(self) -> None:
        self._timer = None
        response = self.response
        if response is None or response.done:
            return
        now = self.loop.time()
        if response._paused:  # the client is slow, not the upstream
            self._last_data_s = now
        deadline = self._last_data_s + self._timeout_s
        if now < deadline:
            self._timer = self.loop.call_at(deadline, self._check_silence)
            return
        self._failed(TimeoutError(f"{self.origin.host_header} sent nothing for {self._timeout_s:g} s"))
        self.close()

    def _stop_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


class UpstreamClient:
    """Keep-alive connections to any number of origins, with connect and read timeouts."""

    def __init__(
        self,
        *,
        connect_timeout_s: float,
        read_timeout_s: float,
        idle_s: float = IDLE_S,
        clock: Callable[[], float] | None = None,
    ):
        self.connect_timeout_s = connect_timeout_s
        self.read_timeout_s = read_timeout_s
        self.idle_s = idle_s
        self._clock = clock  # what idle time is measured by (default: the event loop's; a test's, virtual)
        self.loop: asyncio.AbstractEventLoop = None  # type: ignore[assignment]  # bound on first use
        self._origins: dict[str, Origin] = {}
        self._idle: dict[Origin, list[_Connection]] = {}
        self._open: set[_Connection] = set()
        self._tls: ssl.SSLContext | None = None
        self.closed = False

    async def request(
        self, base: str, method: str, target: str, headers: CIMultiDict[str], body: bytes = b""
    ) -> UpstreamResponse:
        """Send a request to `base` + `target`; returns once the answer's status and headers are in.

        The caller must `release()` the response when done with it.
        """
        if self.closed:
            raise ConnectFailed("the client is closed")
        if self.loop is None:
            self.loop = asyncio.get_running_loop()
        origin = self._origins.get(base)
        if origin is None:
            origin = self._origins[base] = Origin.of(base)
        conn = self._take_idle(origin)
        if conn is not None:
            try:
                return await self._exchange(conn, method, target, headers, body)
            except _Stale:
                if method not in _IDEMPOTENT:
                    raise UpstreamBrokeOff(
                        f"{origin.host_header} closed a kept-alive connection as the request went out"
                    ) from None
        conn = await self._connect(origin)
        return await self._exchange(conn, method, target, headers, body)

    async def _exchange(
        self, conn: _Connection, method: str, target: str, headers: CIMultiDict[str], body: bytes
    ) -> UpstreamResponse:
        try:
            return await conn.send(method, target, headers, body)
        except BaseException:
            # Cancelled, timed out or broken before the head: the connection's
            # state is unknown, so it is never reused.
            conn.response = None
            conn.close()
            raise

    def _now(self) -> float:
        return self._clock() if self._clock is not None else self.loop.time()

    def _take_idle(self, origin: Origin) -> _Connection | None:
        idle = self._idle.get(origin)
        if not idle:
            return None
        oldest_allowed = self._now() - self.idle_s
        while idle:
            conn = idle.pop()
            transport = conn.transport
            if not conn.lost and conn.idle_since_s >= oldest_allowed and transport and not transport.is_closing():
                conn.reused = True
                return conn
            conn.close()
        return None

    def put_idle(self, conn: _Connection) -> None:
        if self.closed or conn.lost:
            conn.close()
            return
        now = self._now()
        conn.idle_since_s = now
        idle = self._idle.setdefault(conn.origin, [])
        # The oldest idle connection sits at the bottom, never reached while
        # newer ones serve: close it here once it has idled too long.
        if idle and idle[0].idle_since_s < now - self.idle_s:
            idle.pop(0).close()
        idle.append(conn)

    def forget(self, conn: _Connection) -> None:
        self._open.discard(conn)
        idle = self._idle.get(conn.origin)
        if idle and conn in idle:
            idle.remove(conn)

    async def _connect(self, origin: Origin) -> _Connection:
        tls = None
        if origin.tls:
            if self._tls is None:
                self._tls = ssl.create_default_context()
            tls = self._tls
        try:
            async with asyncio.timeout(self.connect_timeout_s):
                _, conn = await self.loop.create_connection(
                    lambda: _Connection(self, origin),
                    origin.host,
                    origin.port,
                    ssl=tls,
                    server_hostname=origin.host if tls else None,
                )
        except TimeoutError:
            raise ConnectFailed(
                f"connecting to {origin.host_header} took longer than {self.connect_timeout_s:g} s"
            ) from None
        except OSError as exc:
            raise ConnectFailed(f"cannot connect to {origin.host_header}: {exc.strerror or exc}") from None
        self._open.add(conn)
        return conn

    @property
    def open_connections(self) -> int:
        return len(self._open)

    async def close(self) -> None:
        """Close every connection; answers still streaming end with UpstreamBrokeOff."""
        self.closed = True
        for conn in list(self._open):
            conn.close()
        self._idle.clear()
        await asyncio.sleep(0)  # let the transports run connection_lost
