"""`modeshift serve --workers N`: processes sharing one listening socket, one cluster, one supervisor."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys

import aiohttp
import yaml

from tests.router.helpers import TOKEN, two_lane_raw
from tests.router.test_serve_process import free_port


async def events(stderr: asyncio.StreamReader, seen: list[dict]) -> None:
    """Every JSON log line of the supervisor and its workers (they share its stderr), as it comes."""
    while line := await stderr.readline():
        try:
            seen.append(json.loads(line))
        except ValueError:
            continue


async def until(condition, timeout_s: float = 20.0) -> None:
    async with asyncio.timeout(timeout_s):
        while not condition():
            await asyncio.sleep(0.05)


async def two_workers(redis_url: str, upstream_url: str, tmp_path, name: str):
    """`serve --workers 2` in its own process group: (supervisor, its log events as they come, their reader, ports)."""
    port, admin_port = free_port(), free_port()
    raw = two_lane_raw(
        [upstream_url],
        [upstream_url],
        server={"listen": f"127.0.0.1:{port}", "admin_listen": f"127.0.0.1:{admin_port}"},
        cluster={"redis_url": redis_url, "name": name, "lease_ticks": 2},
        switching={"tick": "200ms"},
    )
    config = tmp_path / "modeshift.yaml"
    config.write_text(yaml.safe_dump(raw))
    supervisor = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "commands.cli",
        "serve",
        "-c",
        str(config),
        "--workers",
        "2",
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "MODESHIFT_TEST_TOKEN": TOKEN},
        start_new_session=True,
    )
    seen: list[dict] = []
    reader = asyncio.ensure_future(events(supervisor.stderr, seen))
    return supervisor, seen, reader, port, admin_port


async def test_two_workers_share_the_port_one_cluster_and_a_killed_one_is_started_again(
    redis_server, upstream, tmp_path
):
    server = await upstream()
    supervisor, seen, reader, port, admin_port = await two_workers(redis_server.url, server.url, tmp_path, "workers")
    try:
        await until(lambda: sum(e.get("event") == "listening" for e in seen) == 2)
        started = [e for e in seen if e.get("event") == "worker_started"]
        assert sorted(e["slot"] for e in started) == [0, 1]
        replicas = set()
        connector = aiohttp.TCPConnector(force_close=True)  # a new connection each time: the kernel spreads them
        async with aiohttp.ClientSession(connector=connector) as client:
            deadline = asyncio.get_running_loop().time() + 15
            while asyncio.get_running_loop().time() < deadline:  # until both answered, and a leader is known
                async with client.get(f"http://127.0.0.1:{port}/x") as response:
                    assert response.status == 200
                headers = {"Authorization": f"Bearer {TOKEN}"}
                async with client.get(f"http://127.0.0.1:{admin_port}/status", headers=headers) as response:
                    cluster = (await response.json())["cluster"]
                replicas.add(cluster["replica"])
                if len(replicas) == 2 and cluster["leader"] is not None:
                    break
            assert len(replicas) == 2 and cluster["leader"] in replicas  # two workers, one leader among them
        os.kill(started[0]["pid"], signal.SIGKILL)
        await until(lambda: sum(e.get("event") == "worker_started" for e in seen) == 3)
        again = [e for e in seen if e.get("event") == "worker_started"][-1]
        assert again["slot"] == started[0]["slot"] and again["pid"] != started[0]["pid"]
        assert any(e.get("event") == "worker_exited" and e["status"] == -signal.SIGKILL for e in seen)
        await until(lambda: sum(e.get("event") == "listening" for e in seen) == 3)
        supervisor.send_signal(signal.SIGTERM)
        async with asyncio.timeout(30):
            assert await supervisor.wait() == 0
        assert sum(e.get("event") == "stopped" for e in seen) == 2  # each worker drained and stopped
    finally:
        if supervisor.returncode is None:
            os.killpg(supervisor.pid, signal.SIGKILL)  # the supervisor and its workers, whatever failed
            await supervisor.wait()
        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)


async def test_several_workers_without_a_cluster_are_refused_with_the_reason(tmp_path):
    raw = two_lane_raw(["http://127.0.0.1:9"], ["http://127.0.0.1:9"])
    config = tmp_path / "modeshift.yaml"
    config.write_text(yaml.safe_dump(raw))
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "commands.cli",
        "serve",
        "-c",
        str(config),
        "--workers",
        "3",
        stderr=asyncio.subprocess.PIPE,
    )
    _, stderr = await process.communicate()
    assert process.returncode == 2
    assert "--workers 3 needs a `cluster:` section" in stderr.decode()


async def test_workers_stop_by_themselves_when_their_supervisor_is_killed(redis_server, upstream, tmp_path):
    server = await upstream()
    supervisor, seen, reader, _, _ = await two_workers(redis_server.url, server.url, tmp_path, "orphans")
    try:
        await until(lambda: sum(e.get("event") == "listening" for e in seen) == 2)
        supervisor.send_signal(signal.SIGKILL)
        await supervisor.wait()
        async with asyncio.timeout(20):
            await reader  # the workers hold the pipe until they exit: its end means both stopped
        assert sum(e.get("event") == "supervisor_gone" for e in seen) == 2
        assert sum(e.get("event") == "stopped" for e in seen) == 2
    finally:
        try:
            os.killpg(supervisor.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)
