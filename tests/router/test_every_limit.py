"""Every answer the router makes itself, walked in one router: its status, its JSON shape, its request id.

One router with small limits and a jobs store; each case provokes one
refusal, over aiohttp's client or raw bytes where a client would not send
such a request, and checks the same contract (the 503s of a full lane and
of the connection cap are walked in tests/router/test_limits.py): the status, `{"error":
{"type", "message", "lane", "request_id"}}` as JSON, and a request id that
matches the `X-Request-Id` header.
"""

from __future__ import annotations

import asyncio
import io
import json

from aiohttp import FormData, web

from tests.router.helpers import two_lane_config
from tests.router.jobs.test_jobs import ASYNC
from tests.router.test_limits import content_length

SMALL = {
    "max_body_bytes": "1KiB",
    "max_header_bytes": "2KiB",
    "receive_timeout": "300ms",
    "header_timeout": "300ms",
}


def check(status: int, headers, body: bytes, expected_status: int, expected_type: str) -> dict:
    assert status == expected_status, (status, body[:200])
    assert headers.get("Content-Type", "").startswith("application/json"), headers
    error = json.loads(body)["error"]
    assert set(error) >= {"type", "message", "lane", "request_id"}
    assert error["type"] == expected_type and error["message"]
    assert error["request_id"] and error["request_id"] == headers["X-Request-Id"]
    return error


async def raw(address, data: bytes, *, trickle: bool = False) -> tuple[int, dict, bytes]:
    reader, writer = await asyncio.open_connection(*address)
    try:
        if trickle:
            writer.write(data[:10])  # the head starts, and stalls
        else:
            writer.write(data)
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=10)
        body = await asyncio.wait_for(reader.readexactly(content_length(head)), timeout=10)
    finally:
        writer.close()
    lines = head.decode().split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:] if ": " in line)
    return int(lines[0].split()[1]), headers, body


async def test_every_limit_answers_with_its_status_in_the_routers_json_shape(
    upstream, start_router, client, tmp_path, job_database
):
    """On either job store (the file limits and the upload's leftovers are the store's)."""

    async def handler(request: web.Request) -> web.Response:
        if request.path == "/slow":
            await asyncio.sleep(5)
        return web.json_response({"path": request.path})

    realtime = await upstream(handler)
    lanes = {
        "realtime": {"upstreams": [realtime.url], "timeout": "300ms"},
        "batch": {"upstreams": ["http://127.0.0.1:9"], "timeout": "300ms"},  # nothing listens on port 9
    }
    jobs = {"database": job_database, "max_file_bytes": "4MiB"}
    routes = [{"path": "/v1/", "protocol": "http"}, {"path": "/slow", "protocol": "http"}]
    config = two_lane_config([realtime.url], [realtime.url], server=SMALL, lanes=lanes, jobs=jobs, routes=routes)
    router = await start_router(config)
    url, address = router.url, router.router.data_address

    async def call(method: str, path: str, expected_status: int, expected_type: str, **kwargs) -> dict:
        async with client.request(method, f"{url}{path}", **kwargs) as response:
            return check(response.status, response.headers, await response.read(), expected_status, expected_type)

    await call("GET", "/v1/x", 400, "bad_request", headers={"X-Modeshift-Mode": "nowhere"})
    await call("GET", "/v1/x", 400, "bad_request", headers={"X-Modeshift-Priority": "nobody"})
    await call("GET", "/other", 404, "no_route")
    await call("GET", "/v1/jobs/job_missing", 404, "job_not_found")
    await call("GET", "/v1/files/file-missing", 404, "file_not_found")
    await call("GET", "/v1/batches/batch_missing", 404, "batch_not_found")
    await call("PUT", "/v1/jobs/job_missing", 405, "method_not_allowed")
    await call("POST", "/v1/x", 413, "body_too_large", data=b"x" * 2000)
    await call("GET", "/v1/x", 431, "headers_too_large", headers={f"X-H{i}": "v" * 100 for i in range(30)})
    await call("GET", "/v1/x", 502, "upstream_unavailable", headers={"X-Modeshift-Mode": "batch"})
    await call("GET", "/slow", 504, "upstream_timeout")
    async with client.post(f"{url}/v1/x", data=b"one", headers={**ASYNC, "Idempotency-Key": "k"}) as response:
        assert response.status == 202
    await call("POST", "/v1/x", 422, "idempotency_key_reused", data=b"two", headers={**ASYNC, "Idempotency-Key": "k"})

    status, headers, body = await raw(address, b"CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n")
    check(status, headers, body, 405, "method_not_allowed")
    status, headers, body = await raw(address, b"GET /v1/x HTTP/2.0\r\nHost: a\r\n\r\n")
    check(status, headers, body, 505, "http_version_not_supported")
    status, headers, body = await raw(address, b"GET /v1/x HTTP/1.1\r\nHost: a\r\nBad\r\n\r\n")
    check(status, headers, body, 400, "bad_request")
    status, headers, body = await raw(address, b"GET /v1/x HTTP/1.1\r\nHost: a\r\n\r\n", trickle=True)
    assert "server.header_timeout" in check(status, headers, body, 408, "request_timeout")["message"]
    status, headers, body = await raw(address, b"POST /v1/x HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\nzz")
    assert "server.receive_timeout" in check(status, headers, body, 408, "request_timeout")["message"]

    def upload(size: int, field_size: int = 5) -> FormData:
        form = FormData()
        form.add_field("purpose", "b" * field_size if field_size != 5 else "batch")
        form.add_field("file", io.BytesIO(b'{"custom_id": "a"}\n' + b" " * size), filename="in.jsonl")
        return form

    async with client.post(f"{url}/v1/files", data=upload(3 * 2**20)) as response:  # over 1 MiB, under 4 MiB
        assert response.status == 200 and (await response.json())["bytes"] > 3 * 2**20
    await call("POST", "/v1/files", 413, "file_too_large", data=upload(5 * 2**20))
    await call("POST", "/v1/files", 413, "field_too_large", data=upload(10, field_size=100_000))
    if job_database.startswith("postgresql://"):  # the file contents are rows of the database there
        rows = await router.runtime.jobs.database.run(lambda tx: tx.all("SELECT DISTINCT file_id FROM file_chunks"))
        assert len(rows) == 1  # the one that fit; no refused leftovers
    else:
        assert len(list((tmp_path / "jobs.sqlite3.files").iterdir())) == 1  # the one that fit; no refused leftovers


async def test_a_failure_in_the_router_itself_is_a_json_500_with_the_id_it_is_logged_by(
    upstream, start_router, client, monkeypatch, caplog
):
    realtime = await upstream()
    router = await start_router(two_lane_config([realtime.url], [realtime.url]))

    def broken(**kwargs):
        raise RuntimeError("a bug in lane choice")

    monkeypatch.setattr("router.proxy.arrive", broken)
    async with client.get(f"{router.url}/x", headers={"X-Request-Id": "req-500"}) as response:
        error = check(response.status, response.headers, await response.read(), 500, "internal_error")
    assert error["request_id"] == "req-500"
    assert any("req-500" in record.getMessage() and record.exc_info for record in caplog.records)
