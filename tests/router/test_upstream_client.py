"""The upstream client against raw loopback servers that answer byte for byte.

A raw asyncio server (not aiohttp) lets each test send exactly the bytes it
needs: a close-delimited body, a short body, an interim 103, a kept-alive
connection that dies as the next request arrives, silence.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest
from multidict import CIMultiDict

from router.upstream_client import HIGH_WATER, ConnectFailed, Origin, UpstreamBrokeOff, UpstreamClient
from tests.router.helpers import FakeClock

Script = Callable[[asyncio.StreamReader, asyncio.StreamWriter, int], Awaitable[None]]


class RawServer:
    """Runs `script(reader, writer, connection_number)` for each connection."""

    def __init__(self, script: Script):
        self.script = script
        self.connections = 0
        self.requests: list[bytes] = []
        self.server: asyncio.Server | None = None
        self.url = ""

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            await self.script(reader, writer, self.connections)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    async def read_request(self, reader: asyncio.StreamReader) -> bytes:
        head = await reader.readuntil(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":")[1])
        body = await reader.readexactly(length)
        self.requests.append(head + body)
        return head + body

    async def __aenter__(self) -> RawServer:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def __aexit__(self, *exc) -> None:
        assert self.server is not None
        self.server.close()


def ok(body: bytes = b"ok") -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)


def keep_answering(server_ref: list[RawServer], answer: bytes = ok()) -> Script:
    async def script(reader, writer, _n):
        while True:
            await server_ref[0].read_request(reader)
            writer.write(answer)
            await writer.drain()

    return script


def raw_server(make_script: Callable[[list[RawServer]], Script]) -> RawServer:
    ref: list[RawServer] = []
    server = RawServer(make_script(ref))
    ref.append(server)
    return server


@pytest.fixture
async def client():
    client = UpstreamClient(connect_timeout_s=2.0, read_timeout_s=2.0)
    yield client
    await client.close()


async def fetch(client: UpstreamClient, base: str, method: str = "GET", target: str = "/", body: bytes = b""):
    response = await client.request(base, method, target, CIMultiDict({"X-Test": "1"}), body)
    try:
        return response.status, await response.read()
    finally:
        response.release()


async def test_the_request_is_written_as_the_origin_expects(client):
    async with raw_server(keep_answering) as server:
        await fetch(client, server.url + "/api/", "POST", "/v1/embeddings?x=1")
        port = server.url.rsplit(":", 1)[1]
        head = server.requests[0].decode()
        assert head.startswith("POST /api/v1/embeddings?x=1 HTTP/1.1\r\n")
        assert f"\r\nHost: 127.0.0.1:{port}\r\n" in head
        assert "\r\nX-Test: 1\r\n" in head
        assert "\r\nContent-Length: 0\r\n" in head  # a POST always states its length


def test_origin_host_header_leaves_out_default_ports_and_brackets_ipv6():
    assert Origin.of("http://example.com").host_header == "example.com"
    assert Origin.of("https://example.com:443/v1").host_header == "example.com"
    assert Origin.of("https://example.com:8443/v1/").prefix == "/v1"
    assert Origin.of("http://[::1]:8000").host_header == "[::1]:8000"
    with pytest.raises(ValueError, match="not an http"):
        Origin.of("ftp://example.com")


async def test_kept_alive_connections_are_reused(client):
    async with raw_server(keep_answering) as server:
        for _ in range(5):
            assert await fetch(client, server.url) == (200, b"ok")
        assert server.connections == 1
        assert client.open_connections == 1


async def test_an_idle_connection_past_its_limit_is_not_reused():
    clock = FakeClock(0.0)
    client = UpstreamClient(connect_timeout_s=2.0, read_timeout_s=2.0, idle_s=1.0, clock=clock)
    try:
        async with raw_server(keep_answering) as server:
            await fetch(client, server.url)
            clock.advance(0.5)
            await fetch(client, server.url)  # idle half its limit: reused
            assert server.connections == 1
            clock.advance(1.5)
            await fetch(client, server.url)
            assert server.connections == 2
    finally:
        await client.close()


async def test_a_response_not_read_to_its_end_is_not_reused(client):
    async with raw_server(lambda ref: keep_answering(ref, ok(b"x" * 100_000))) as server:
        response = await client.request(server.url, "GET", "/", CIMultiDict())
        response.release()
        await fetch(client, server.url)
        assert server.connections == 2


def once(answer: bytes, *, close: bool = True) -> Callable[[list[RawServer]], Script]:
    def make(ref: list[RawServer]) -> Script:
        async def script(reader, writer, _n):
            await ref[0].read_request(reader)
            writer.write(answer)
            await writer.drain()
            if not close:
                await asyncio.sleep(10)

        return script

    return make


async def test_a_body_delimited_by_the_close_is_read_whole(client):
    answer = b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nhello, until the end"
    async with raw_server(once(answer)) as server:
        assert await fetch(client, server.url) == (200, b"hello, until the end")
        await asyncio.sleep(0)
        assert client.open_connections == 0


async def test_a_short_body_is_a_broken_answer(client):
    async with raw_server(once(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhalf")) as server:
        with pytest.raises(UpstreamBrokeOff, match="closed the connection mid-answer"):
            await fetch(client, server.url)


async def test_a_malformed_answer_is_a_broken_answer(client):
    async with raw_server(once(b"HTTP/1.1 abc nonsense\r\n\r\n", close=False)) as server:
        with pytest.raises(UpstreamBrokeOff, match="malformed response"):
            await fetch(client, server.url)


async def test_interim_answers_are_skipped(client):
    answer = b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\n" + ok(b"final")
    async with raw_server(lambda ref: keep_answering(ref, answer)) as server:
        assert await fetch(client, server.url) == (200, b"final")
        assert await fetch(client, server.url) == (200, b"final")
        assert server.connections == 1


async def test_head_answers_have_no_body_whatever_their_length_says(client):
    async with raw_server(once(b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\n", close=False)) as server:
        assert await fetch(client, server.url, "HEAD") == (200, b"")


def dies_on_second_request(ref: list[RawServer]) -> Script:
    """Answers the first request of a connection; closes on the second without a word."""

    async def script(reader, writer, _n):
        await ref[0].read_request(reader)
        writer.write(ok())
        await writer.drain()
        await ref[0].read_request(reader)

    return script


async def test_an_idempotent_request_on_a_dead_kept_alive_connection_is_sent_again(client):
    async with raw_server(dies_on_second_request) as server:
        assert await fetch(client, server.url) == (200, b"ok")
        assert await fetch(client, server.url, "GET") == (200, b"ok")
        assert server.connections == 2


async def test_a_post_on_a_dead_kept_alive_connection_is_not_sent_twice(client):
    async with raw_server(dies_on_second_request) as server:
        await fetch(client, server.url, "POST")
        with pytest.raises(UpstreamBrokeOff, match="kept-alive connection"):
            await fetch(client, server.url, "POST", body=b"{}")
        assert server.connections == 1


async def test_a_refused_connection_is_connect_failed(client):
    async with raw_server(keep_answering) as server:
        url = server.url
    # The server has stopped listening: its port refuses.
    with pytest.raises(ConnectFailed, match="cannot connect"):
        await fetch(client, url)


async def test_silence_before_the_answer_times_out():
    client = UpstreamClient(connect_timeout_s=2.0, read_timeout_s=0.1)
    try:
        async with raw_server(once(b"", close=False)) as server:
            with pytest.raises(TimeoutError, match="sent nothing for 0.1 s"):
                await fetch(client, server.url)
    finally:
        await client.close()


async def test_silence_between_chunks_times_out_but_steady_chunks_do_not():
    def make(ref: list[RawServer]) -> Script:
        async def script(reader, writer, _n):
            await ref[0].read_request(reader)
            writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            for _ in range(6):  # 0.3 s in all, never 0.1 s quiet
                writer.write(b"1\r\na\r\n")
                await writer.drain()
                await asyncio.sleep(0.05)
            await asyncio.sleep(10)

        return script

    client = UpstreamClient(connect_timeout_s=2.0, read_timeout_s=0.15)
    try:
        async with raw_server(make) as server:
            response = await client.request(server.url, "GET", "/", CIMultiDict())
            received = b""
            with pytest.raises(TimeoutError):
                async for chunk in response.chunks():
                    received += chunk
            response.release()
            assert received == b"a" * 6
    finally:
        await client.close()


async def test_reading_pauses_while_the_caller_falls_behind(client):
    size = 4 * HIGH_WATER
    async with raw_server(once(ok(b"z" * size), close=False)) as server:
        response = await client.request(server.url, "GET", "/", CIMultiDict())
        conn = response._conn
        for _ in range(100):
            if not conn.transport.is_reading():
                break
            await asyncio.sleep(0.01)
        assert not conn.transport.is_reading()
        assert response._buffered <= HIGH_WATER + 256 * 1024  # at most one socket read past the mark
        body = b"".join([chunk async for chunk in response.chunks()])
        assert len(body) == size
        response.release()


async def test_a_large_answer_that_arrived_whole_leaves_its_connection_reading(client):
    big = b"y" * (HIGH_WATER + 1000)  # its last bytes cross the mark: the answer ends with reading paused
    async with raw_server(lambda ref: keep_answering(ref, ok(big))) as server:
        response = await client.request(server.url, "GET", "/", CIMultiDict())
        for _ in range(200):
            if response.done:
                break
            await asyncio.sleep(0.01)
        assert response.done and not response._conn.transport.is_reading()
        assert await response.read() == big
        response.release()
        assert await fetch(client, server.url) == (200, big)  # the same connection, reading again
        assert server.connections == 1
