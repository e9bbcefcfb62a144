"""`modeshift replay`: timing, routes, pins and deadlines, and the CSV it writes."""

import asyncio
import csv
import threading
import time

import pytest
from aiohttp import web

from commands.cli import main
from commands.replay import as_outcome, as_sent, replay
from configs import ready_config_path
from simulator.traces import TraceRequest, write_jsonl
from tests.simulator.test_compare import DEFAULT_SERVICE

TRACE = [
    TraceRequest(0.0, 64, 0),
    TraceRequest(0.2, 64, 0, mode="realtime"),
    TraceRequest(0.4, 64, 0, route="/v2/other", deadline_ms=250),
    TraceRequest(0.6, 64, 0),
]


def _app(seen: list) -> web.Application:
    async def handle(request: web.Request) -> web.Response:
        seen.append((time.perf_counter(), request.path, dict(request.headers)))
        lane = request.headers.get("X-Modeshift-Mode", "batch")
        return web.json_response({"data": []}, headers={"X-Modeshift-Lane": lane})

    app = web.Application()
    app.router.add_post("/{tail:.*}", handle)
    return app


async def _serve(app: web.Application) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    return runner, f"http://127.0.0.1:{runner.addresses[0][1]}"


async def test_replay_keeps_the_timing_and_sends_routes_pins_and_deadlines():
    seen = []
    runner, base = await _serve(_app(seen))
    try:
        results = await replay(f"{base}/v1/embeddings", TRACE, speed=2.0)
    finally:
        await runner.cleanup()
    assert [r.sent_s for r in results] == pytest.approx([0.0, 0.1, 0.2, 0.3])
    gaps = [b[0] - a[0] for a, b in zip(seen, seen[1:])]
    assert gaps == pytest.approx([0.1, 0.1, 0.1], abs=0.04)
    assert [path for _, path, _ in seen] == ["/v1/embeddings", "/v1/embeddings", "/v2/other", "/v1/embeddings"]
    assert seen[1][2]["X-Modeshift-Mode"] == "realtime" and "X-Modeshift-Mode" not in seen[0][2]
    assert seen[2][2]["X-Modeshift-Deadline-Ms"] == "250"
    outcome = as_outcome(TRACE, results)
    assert outcome.lanes == ("batch", "realtime")
    assert outcome.pinned.tolist() == [False, True, False, False]
    assert (outcome.status == 200).all()
    assert [r.route for r in as_sent(TRACE, results)] == [path for _, path, _ in seen]  # simulated as sent


def test_the_replay_command_writes_the_simulators_csv(tmp_path):
    loop = asyncio.new_event_loop()
    runner, base = loop.run_until_complete(_serve(_app([])))
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        write_jsonl(TRACE, tmp_path / "trace.jsonl")
        out = tmp_path / "live.csv"
        args = ["replay", "--trace", str(tmp_path / "trace.jsonl"), "--target", f"{base}/v1/embeddings"]
        assert main([*args, "--speed", "4", "--out", str(out)]) == 0
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join()
        loop.run_until_complete(runner.cleanup())
        loop.close()
    with open(out) as f:
        rows = list(csv.DictReader(f))
    assert [r["lane"] for r in rows] == ["batch", "realtime", "batch", "batch"]
    assert [r["pinned"] for r in rows] == ["0", "1", "0", "0"]
    assert all(r["status"] == "200" and r["met_slo"] == "1" for r in rows)
    assert [r["route"] for r in rows] == ["/v1/embeddings", "/v1/embeddings", "/v2/other", "/v1/embeddings"]


def test_simulate_with_the_replays_route_plays_the_same_request_path(tmp_path):
    """The same trace through `simulate --route` writes the route column a replay to that path writes."""
    write_jsonl(TRACE, tmp_path / "trace.jsonl")
    args = ["simulate", "--trace", str(tmp_path / "trace.jsonl"), "-c", str(ready_config_path("default"))]
    args += ["--service", DEFAULT_SERVICE, "--out", str(tmp_path / "sim")]
    assert main([*args, "--route", "/v1/embeddings"]) == 0
    with open(tmp_path / "sim" / "requests-config.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["route"] for r in rows] == ["/v1/embeddings", "/v1/embeddings", "/v2/other", "/v1/embeddings"]
    assert main(args) == 0  # without --route, the default route stays "/": the CSV says so
    with open(tmp_path / "sim" / "requests-config.csv") as f:
        assert [r["route"] for r in csv.DictReader(f)] == ["/", "/", "/v2/other", "/"]
