"""`modeshift serve` as a real process: SIGHUP reloads, SIGTERM drains and exits 0."""

import asyncio
import json
import os
import signal
import socket
import sys

import yaml
from aiohttp import web

from tests.router.helpers import TOKEN, two_lane_raw


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def next_event(stderr: asyncio.StreamReader, name: str) -> dict:
    while True:
        line = await asyncio.wait_for(stderr.readline(), timeout=30)
        assert line, f"the router exited before logging {name!r}"
        record = json.loads(line)
        if record.get("event") == name:
            return record


async def test_sighup_reloads_and_sigterm_drains_in_flight_requests(upstream, client, tmp_path):
    release = asyncio.Event()
    arrived = asyncio.Event()

    async def held(request: web.Request) -> web.Response:
        arrived.set()
        await release.wait()
        return web.Response(text="finished")

    realtime = await upstream(held)
    data_port, admin_port = free_port(), free_port()
    raw = two_lane_raw(
        [realtime.url],
        [realtime.url],
        server={
            "listen": f"127.0.0.1:{data_port}",
            "admin_listen": f"127.0.0.1:{admin_port}",
            "shutdown_timeout": "20s",
        },
    )
    path = tmp_path / "modeshift.yaml"
    path.write_text(yaml.safe_dump(raw))
    router = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "commands.cli",
        "serve",
        "-c",
        str(path),
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "MODESHIFT_TEST_TOKEN": TOKEN},
    )
    try:
        listening = await next_event(router.stderr, "listening")
        assert listening["data"] == f"http://127.0.0.1:{data_port}"

        path.write_text("lanes: [not, a, mapping]\n")
        router.send_signal(signal.SIGHUP)
        refused = await next_event(router.stderr, "reload_refused")
        assert refused["errors"] and refused["errors"][0].startswith(f"{path}:1:")

        path.write_text(yaml.safe_dump({**raw, "initial_mode": "hybrid"}))
        router.send_signal(signal.SIGHUP)
        reloaded = await next_event(router.stderr, "decision")
        # initial_mode only matters at start: a reload keeps the mode in force
        assert reloaded["kind"] == "Reloaded" and reloaded["mode"] == "realtime"
        assert reloaded["kept_control"] is False

        in_flight = asyncio.create_task(client.get(f"http://127.0.0.1:{data_port}/slow"))
        await asyncio.wait_for(arrived.wait(), timeout=10)
        router.send_signal(signal.SIGTERM)
        stopping = await next_event(router.stderr, "stopping")
        assert stopping["in_flight"] == 1
        release.set()
        response = await asyncio.wait_for(in_flight, timeout=10)
        assert response.status == 200 and await response.text() == "finished"
        assert await asyncio.wait_for(router.wait(), timeout=20) == 0
    finally:
        if router.returncode is None:
            router.kill()
            await router.wait()


async def test_a_taken_listen_address_is_one_clear_line_and_exit_status_2(upstream, tmp_path):
    realtime = await upstream()
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    raw = two_lane_raw(
        [realtime.url],
        [realtime.url],
        server={"listen": f"127.0.0.1:{port}", "admin_listen": f"127.0.0.1:{free_port()}"},
    )
    path = tmp_path / "modeshift.yaml"
    path.write_text(yaml.safe_dump(raw))
    try:
        router = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "commands.cli", "serve", "-c", str(path), stderr=asyncio.subprocess.PIPE
        )
        _, stderr = await asyncio.wait_for(router.communicate(), timeout=60)
    finally:
        taken.close()
    assert router.returncode == 2
    assert f"cannot listen on 127.0.0.1:{port}" in stderr.decode() and "Traceback" not in stderr.decode()


async def test_a_router_whose_admin_token_is_unset_says_at_start_that_the_admin_api_is_off(upstream, tmp_path):
    realtime = await upstream()
    server = {
        "listen": f"127.0.0.1:{free_port()}",
        "admin_listen": f"127.0.0.1:{free_port()}",
        "admin_token_env": "MODESHIFT_TOKEN_NOBODY_SET",
    }
    path = tmp_path / "modeshift.yaml"
    path.write_text(yaml.safe_dump(two_lane_raw([realtime.url], [realtime.url], server=server)))
    env = {k: v for k, v in os.environ.items() if k != "MODESHIFT_TOKEN_NOBODY_SET"}
    router = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "commands.cli", "serve", "-c", str(path), stderr=asyncio.subprocess.PIPE, env=env
    )
    try:
        off = await next_event(router.stderr, "admin_api_off")
        assert off["level"] == "warning" and "MODESHIFT_TOKEN_NOBODY_SET" in off["reason"]
    finally:
        router.send_signal(signal.SIGTERM)
        await router.wait()
