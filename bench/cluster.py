"""Several replicas, one controller: what the cluster costs per request, and how fast it agrees.

    python bench/cluster.py [--seconds 5] [--rounds 2] [--parts throughput,agreement,intake]

A real redis-server (tests/servers/redis.py) and a fast local upstream
(bench/fast_upstream.py). Side by side in one run, `modeshift serve` with
the data plane on (two lanes at 50/50) as:
  lone        one process, no `cluster:`
  cluster-1   one process in a cluster (publishing to Redis every tick, leading)
  workers-2   `--workers 2`: two processes on one SO_REUSEPORT socket, one cluster
each with the default 1 s tick, driven by wrk (64 connections) for --seconds; the proxy processes run on
one core and wrk and the upstream on the others (taskset), and the CPU time
of every proxy process is read from /proc. It prints requests/s and CPU
microseconds per request, with the ratios to `lone`.

Then three replicas of one cluster (separate processes, tick 200 ms, lease 2
ticks): the time from a forced mode on one replica's admin API to the mode
in force on all three, and, after a SIGKILL of the leader, the time until
another replica leads.

Last, the shared job store: one process taking `Prefer: respond-async`
jobs from wrk (64 connections) for --seconds, each acknowledged only once
stored, with `jobs.database` a SQLite file and then a real PostgreSQL
(tests/servers/postgres.py, fsync on: a commit is on the disk); the runner
works them off on the same process meanwhile. It prints jobs accepted per
second for each, and the ratio.

Targets: CPU per request with the cluster on within 10% of a lone process; a
forced mode in force everywhere within one tick; failover within 2 lease
periods; jobs accepted/s on Postgres at least half of SQLite's. Output also
goes to bench/out/cluster.txt.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import yaml
from processes import free_port, process
from proxy_overhead import cpus, wrk

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
OUT = HERE / "out"
PY = sys.executable
sys.path.insert(0, str(ROOT))

from tests.servers.postgres import PostgresServer  # noqa: E402
from tests.servers.redis import RedisServer  # noqa: E402

TOKEN = "bench-cluster"
TICK_S = 0.2


def config(
    upstream: str,
    port: int,
    admin_port: int,
    redis_url: str | None,
    name: str = "bench",
    replica: str | None = None,
    tick_s: float = TICK_S,
) -> dict:
    raw: dict = {
        "server": {
            "listen": f"127.0.0.1:{port}",
            "admin_listen": f"127.0.0.1:{admin_port}",
            "admin_token_env": "MODESHIFT_BENCH_TOKEN",
        },
        "lanes": {"realtime": {"upstreams": [upstream]}, "batch": {"upstreams": [upstream]}},
        "modes": {"realtime": {"realtime": 1.0}, "hybrid": {"realtime": 0.5, "batch": 0.5}, "batch": {"batch": 1.0}},
        "initial_mode": "hybrid",
        "policy": {"type": "static", "params": {"mode": "hybrid"}},
        "switching": {"tick": f"{int(tick_s * 1000)}ms", "cooldown": "10m"},
        "telemetry": {"log_level": "warning"},
    }
    if redis_url is not None:
        raw["cluster"] = {"redis_url": redis_url, "name": name, "lease_ticks": 2}
        if replica is not None:
            raw["cluster"]["replica"] = replica
    return raw


def admin(port: int, path: str, body: dict | None = None) -> dict:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}",
        data=json.dumps(body).encode() if body is not None else None,
        headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def throughput(work: Path, upstream: str, redis_url: str, seconds: float) -> dict[str, tuple[float, float]]:
    proxy_cpu, load_cpu = cpus()
    env = {**os.environ, "MODESHIFT_BENCH_TOKEN": TOKEN}
    figures = {}
    for name, cluster, workers in (("lone", False, 1), ("cluster-1", True, 1), ("workers-2", True, 2)):
        port, admin_port = free_port(), free_port()
        path = work / f"{name}.yaml"
        raw = config(
            upstream, port, admin_port, redis_url if cluster else None, name=f"{name}-{os.urandom(4).hex()}", tick_s=1.0
        )
        path.write_text(yaml.safe_dump(raw))
        command = [*proxy_cpu, PY, "-m", "commands.cli", "serve", "-c", str(path)]
        if workers > 1:
            command += ["--workers", str(workers)]
        with process(command, port, env=env, cwd=ROOT) as proc:
            time.sleep(1.0 if workers == 1 else 2.0)  # every worker listening, the cluster formed
            wrk(f"http://127.0.0.1:{port}/", 1.0, load_cpu, None)  # warm
            figures[name] = wrk(f"http://127.0.0.1:{port}/", seconds, load_cpu, proc.pid)
    return figures


SUBMIT = """
wrk.method = "POST"
wrk.body = '{"model": "bench", "input": "a job to keep"}'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Prefer"] = "respond-async"
wrk.headers["Authorization"] = "Bearer sk-bench"
"""


def intake(work: Path, upstream: str, _redis_url: str, seconds: float) -> dict[str, float]:
    """Jobs accepted per second by one process, on a SQLite file and on Postgres."""
    proxy_cpu, load_cpu = cpus()
    env = {**os.environ, "MODESHIFT_BENCH_TOKEN": TOKEN}
    script = work / "submit.lua"
    script.write_text(SUBMIT)
    postgres = PostgresServer(fsync=True)
    postgres.start()
    figures = {}
    try:
        for store in ("sqlite", "postgres"):
            port, admin_port = free_port(), free_port()
            raw = config(upstream, port, admin_port, None)
            database = str(work / f"jobs-{os.urandom(4).hex()}.sqlite3") if store == "sqlite" else None
            raw["jobs"] = {"database": database or postgres.new_database(), "lane": "batch"}
            path = work / f"intake-{store}.yaml"
            path.write_text(yaml.safe_dump(raw))
            with process([*proxy_cpu, PY, "-m", "commands.cli", "serve", "-c", str(path)], port, env=env, cwd=ROOT):
                time.sleep(1.0)
                wrk(f"http://127.0.0.1:{port}/v1/embeddings", 1.0, load_cpu, None, script)  # warm: the store opens
                figures[store] = wrk(f"http://127.0.0.1:{port}/v1/embeddings", seconds, load_cpu, None, script)[0]
    finally:
        postgres.remove()
    return figures


def agreement(work: Path, upstream: str, redis_url: str, _seconds: float) -> tuple[float, float]:
    """(seconds from a forced mode on one replica to that mode on all three, seconds from killing the leader
    to another replica leading)."""
    env = {**os.environ, "MODESHIFT_BENCH_TOKEN": TOKEN}
    replicas = []
    name = f"agree-{os.urandom(4).hex()}"  # a cluster of its own: no state left by an earlier round
    for i in range(3):
        port, admin_port = free_port(), free_port()
        path = work / f"replica-{i}.yaml"
        path.write_text(yaml.safe_dump(config(upstream, port, admin_port, redis_url, name=name, replica=f"r{i}")))
        proc = subprocess.Popen(
            [PY, "-m", "commands.cli", "serve", "-c", str(path)],
            env=env,
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        replicas.append((proc, admin_port))
    try:
        for _, admin_port in replicas:
            deadline = time.monotonic() + 30
            while True:
                try:
                    if admin(admin_port, "/status")["cluster"]["leader"] is not None:
                        break
                except OSError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError("the cluster did not form")
                time.sleep(0.05)
        admin(replicas[2][1], "/mode", {"mode": "batch", "gradual": False, "reason": "bench"})  # answered by the leader
        answered = time.monotonic()
        while not all(admin(p, "/status")["mode"] == "batch" for _, p in replicas):
            time.sleep(0.005)
        in_force_s = time.monotonic() - answered  # how long the followers lag the leader's answer
        leader = admin(replicas[0][1], "/status")["cluster"]["leader"]
        index = int(leader[1:])
        replicas[index][0].send_signal(signal.SIGKILL)
        killed = time.monotonic()
        others = [p for i, (_, p) in enumerate(replicas) if i != index]
        while not any(admin(p, "/status")["cluster"]["leading"] for p in others):
            time.sleep(0.005)
        return in_force_s, time.monotonic() - killed
    finally:
        for proc, _ in replicas:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                proc.wait(timeout=30)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument(
        "--parts", default="throughput,agreement,intake", help="which of throughput, agreement, intake to run"
    )
    args = parser.parse_args()
    parts = set(args.parts.split(","))
    upstream_port = free_port()
    _, load_cpu = cpus()
    with tempfile.TemporaryDirectory(prefix="modeshift-bench-cluster-") as work:
        redis = RedisServer(Path(work))
        redis.start()
        try:
            with process([*load_cpu, PY, str(HERE / "fast_upstream.py"), str(upstream_port)], upstream_port):
                upstream = f"http://127.0.0.1:{upstream_port}"
                runs = {
                    part: [run(Path(work), upstream, redis.url, args.seconds) for _ in range(args.rounds)]
                    for part, run in (("throughput", throughput), ("agreement", agreement), ("intake", intake))
                    if part in parts
                }
        finally:
            redis.stop()
    lines = [
        f"{args.rounds} rounds of {args.seconds:g} s, wrk -c64; proxies on one core, load and upstream on the rest"
    ]
    if "throughput" in runs:
        rounds = runs["throughput"]
        lone_cpu = statistics.median(r["lone"][1] for r in rounds)
        for name in ("lone", "cluster-1", "workers-2"):
            rps = statistics.median(r[name][0] for r in rounds)
            cpu = statistics.median(r[name][1] for r in rounds)
            lines.append(f"  {name:<10} {rps:>8,.0f} req/s  {cpu:6.1f} us CPU/request  ({cpu / lone_cpu:.2f}x lone)")
    if "agreement" in runs:
        in_force = max(a[0] for a in runs["agreement"])
        failover = max(a[1] for a in runs["agreement"])
        lease_s = 2 * TICK_S
        lines += [
            f"forced mode in force on all 3 replicas after the leader's answer: at most {in_force * 1000:.0f} ms"
            f" ({in_force / TICK_S:.2f} ticks of {TICK_S * 1000:.0f} ms)",
            f"failover, SIGKILL of the leader to a new leader: at most {failover * 1000:.0f} ms"
            f" ({failover / lease_s:.2f} lease periods of {lease_s * 1000:.0f} ms)",
        ]
    if "intake" in runs:
        sqlite, postgres = (statistics.median(r[store] for r in runs["intake"]) for store in ("sqlite", "postgres"))
        lines.append(
            f"jobs accepted (202, durably stored), one process: SQLite {sqlite:,.0f} jobs/s, Postgres {postgres:,.0f}"
            f" jobs/s ({postgres / sqlite:.2f}x SQLite)"
        )
    print("\n".join(lines))
    OUT.mkdir(exist_ok=True)
    (OUT / "cluster.txt").write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
