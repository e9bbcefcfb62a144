"""Slow clients: a legitimate client's latency while many connections trickle header bytes.

    python bench/slow_clients.py [--slow 1100] [--requests 300] [--fd-limit 1024]

`modeshift serve` runs with an open-file limit of `--fd-limit` (the usual
default), in front of bench/fast_upstream.py. `--slow` connections each
send a request head one byte every 200 ms, forever; meanwhile one
legitimate client sends `--requests` requests one after the other, on a
new connection every 10 requests. Side by side in one run:

- baseline: no slow clients;
- shipped: the shipped server limits (header_timeout 10s, keepalive 60s,
  max_connections half the fd limit);
- unguarded: the limits as they were before (no header deadline, an hour
  of keep-alive, no connection cap), which made every legitimate request
  fail once the slow clients held the file descriptors.

For each: legitimate requests that got 200, p50 and p99 latency, and p50
as a ratio of the baseline's (target: within 1.10 for shipped).
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import numpy as np
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.processes import free_port, process  # noqa: E402

HERE = Path(__file__).resolve().parent
PY = sys.executable
UNGUARDED = {"header_timeout": "1h", "keepalive_timeout": "1h", "max_connections": 1_000_000}


def config(port: int, upstream: str, server: dict) -> dict:
    lane = {"upstreams": [upstream], "max_in_flight": 64, "queue_depth": 256, "timeout": "10s"}
    return {
        "server": {"listen": f"127.0.0.1:{port}", "admin_listen": f"127.0.0.1:{free_port()}", **server},
        "lanes": {"realtime": lane, "batch": lane},
        "modes": {"realtime": {"realtime": 1.0}, "batch": {"batch": 1.0}},
        "initial_mode": "realtime",
        "policy": {"type": "static", "params": {"mode": "realtime"}},
    }


async def trickle(port: int, stop: asyncio.Event) -> None:
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return
    try:
        head = b"GET /x HTTP/1.1\r\nHost: a\r\nX-Slow: " + b"y" * 100_000
        for byte in head:
            if stop.is_set() or reader.at_eof() or writer.is_closing():
                break
            writer.write(bytes([byte]))
            await asyncio.sleep(0.2)
    except OSError:
        pass
    finally:
        writer.close()


async def legitimate(url: str, requests: int) -> tuple[list[float], int]:
    latencies, ok = [], 0
    session = None
    for i in range(requests):
        if i % 10 == 0:
            if session is not None:
                await session.close()
            session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5))
        started = time.perf_counter()
        try:
            async with session.get(f"{url}/x") as response:
                await response.read()
                ok += response.status == 200
        except (aiohttp.ClientError, TimeoutError):
            pass
        latencies.append(time.perf_counter() - started)
    await session.close()
    return latencies, ok


async def run(port: int, slow: int, requests: int) -> tuple[list[float], int]:
    stop = asyncio.Event()
    slow_tasks = []
    for _ in range(slow):
        slow_tasks.append(asyncio.ensure_future(trickle(port, stop)))
        await asyncio.sleep(0.002)  # a flood, not one burst the kernel's backlog swallows
    await asyncio.sleep(1.0)
    result = await legitimate(f"http://127.0.0.1:{port}", requests)
    stop.set()
    await asyncio.gather(*slow_tasks)
    return result


def limit_fds(limit: int):
    return lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--slow", type=int, default=1100)
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--fd-limit", type=int, default=1024)
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # this process holds every slow connection
    up_port = free_port()
    rows = []
    with tempfile.TemporaryDirectory() as workdir, process([PY, str(HERE / "fast_upstream.py"), str(up_port)], up_port):
        for name, slow, server in (
            ("baseline", 0, {}),
            ("shipped", args.slow, {}),
            ("unguarded", args.slow, UNGUARDED),
        ):
            port = free_port()
            path = Path(workdir) / f"{name}.yaml"
            path.write_text(yaml.safe_dump(config(port, f"http://127.0.0.1:{up_port}", server)))
            command = [PY, "-m", "commands.cli", "serve", "-c", str(path)]
            with process(command, port, cwd=HERE.parent, preexec_fn=limit_fds(args.fd_limit)):
                latencies, ok = asyncio.run(run(port, slow, args.requests))
            rows.append((name, slow, ok, np.percentile(latencies, 50) * 1e3, np.percentile(latencies, 99) * 1e3))
    print(f"{args.requests} legitimate requests; router fd limit {args.fd_limit}; slow clients 1 byte / 200 ms")
    print(f"{'run':<10} {'slow':>6} {'200s':>6} {'p50 ms':>8} {'p99 ms':>8} {'p50 / baseline':>15}")
    base = rows[0][3]
    for name, slow, ok, p50, p99 in rows:
        print(f"{name:<10} {slow:>6} {ok:>6} {p50:>8.2f} {p99:>8.2f} {p50 / base:>15.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
