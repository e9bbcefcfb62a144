"""What the proxy costs: throughput at saturation and added latency at 500 req/s.

    python bench/proxy_overhead.py [--seconds 5] [--rate 500] [--rate-seconds 10] [--rounds 1]

One fast local upstream (nginx answering a fixed body when nginx is
installed, else bench/fast_upstream.py), and in front of it, side by side in
one run:
  direct      the load generator straight to the upstream
  bare        bench/bare_proxy.py, a minimal aiohttp reverse proxy
  modeshift   `modeshift serve` with every feature of the data plane on
              (two lanes at 50/50, admission, outlier ejection, retry budget,
              limits, the control tick, JSON decision log)
  telemetry   the same with OpenTelemetry on: spans at 1% sampling and OTLP
              metrics pushed every second, to bench/otlp_sink.py
  nginx       nginx as a reverse proxy with upstream keep-alive, when installed

Throughput: wrk (its own process) with 64 connections for --seconds.
Latency: bench/fixed_rate.py, open loop at --rate req/s for --rate-seconds.
With two or more cores, proxies run on one core and the upstream and the load
generator on the others (taskset), so the proxy's core is its own.
Targets: modeshift throughput >= bare; added latency at 500 req/s over direct
p50 <= 0.5 ms and p99 <= 2 ms; telemetry costs <= 10% of modeshift's
throughput. Output also goes to bench/out/proxy_overhead.txt.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path

import yaml
from processes import free_port, process

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
OUT = HERE / "out"
PY = sys.executable


def cpus() -> tuple[list[str], list[str]]:
    """(prefix for proxies, prefix for the upstream and load) as taskset commands."""
    n = os.cpu_count() or 1
    if n < 2 or not shutil.which("taskset"):
        return [], []
    return ["taskset", "-c", "0"], ["taskset", "-c", f"1-{n - 1}"]


# One nginx process per role, everything it writes kept in the bench's temp dir.
NGINX_MAIN = """
worker_processes 1;
pid {dir}/nginx-{port}.pid;
error_log {dir}/nginx-{port}-error.log;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  client_body_temp_path {dir}/body; proxy_temp_path {dir}/proxy; fastcgi_temp_path {dir}/fcgi;
  uwsgi_temp_path {dir}/uwsgi; scgi_temp_path {dir}/scgi;
  keepalive_requests 1000000;
  {server}
}}
"""

NGINX_UPSTREAM = """
  server {{ listen 127.0.0.1:{port}; location / {{ default_type application/json; return 200 '{{}}'; }} }}
"""

NGINX_PROXY = """
  upstream backend {{ server 127.0.0.1:{upstream}; keepalive 128; }}
  server {{
    listen 127.0.0.1:{port};
    location / {{ proxy_pass http://backend; proxy_http_version 1.1; proxy_set_header Connection ""; }}
  }}
"""


def nginx(template: str, workdir: Path, **kw) -> list[str]:
    conf = workdir / f"nginx-{kw['port']}.conf"
    conf.write_text(NGINX_MAIN.format(dir=workdir, port=kw["port"], server=template.format(**kw)))
    return ["nginx", "-c", str(conf), "-g", "daemon off;"]


def modeshift_config(port: int, admin_port: int, upstream: str, otlp: str | None = None) -> dict:
    lane = {"upstreams": [upstream], "max_in_flight": 1024, "queue_depth": 1024, "timeout": "10s"}
    return {
        "server": {"listen": f"127.0.0.1:{port}", "admin_listen": f"127.0.0.1:{admin_port}"},
        "lanes": {"realtime": lane, "batch": {**lane, "spill": True}},
        "modes": {"realtime": {"realtime": 1.0}, "hybrid": {"realtime": 0.5, "batch": 0.5}, "batch": {"batch": 1.0}},
        "initial_mode": "hybrid",
        "policy": {
            "type": "composite",
            "params": {
                "policies": [{"type": "load", "params": {"low_rps": 1, "high_rps": 1000000, "hold": "1h"}}],
                "guards": [{"type": "latency", "params": {"max_latency": "1s", "hold": "1h"}}],
            },
        },
        "switching": {"tick": "1s"},
        "metrics": {"window": "10s", "slot": "1s"},
        "telemetry": {"otlp_endpoint": otlp, "trace_sampling": 0.01, "otlp_interval": "1s"},
    }


def group_cpu_s(pgid: int) -> float:
    """User + system CPU seconds of every process in the group (nginx has a master and a worker)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid:  # fields after the name: state ppid pgrp ...
            total += int(fields[11]) + int(fields[12])  # utime stime
    return total / tick


def wrk(
    url: str, seconds: float, prefix: list[str], pgid: int | None, script: Path | None = None
) -> tuple[float, float]:
    """(requests per second, CPU microseconds the target spent per request); `script`: wrk's Lua request."""
    cpu_before = group_cpu_s(pgid) if pgid else 0.0
    scripted = ["-s", str(script)] if script is not None else []
    out = subprocess.run(
        [*prefix, "wrk", "-t1", "-c64", f"-d{seconds:g}s", *scripted, url], capture_output=True, text=True, check=True
    ).stdout
    cpu_s = group_cpu_s(pgid) - cpu_before if pgid else float("nan")
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if errors:
        raise RuntimeError(f"{url}: {errors.group(1)} failed requests under wrk\n{out}")
    requests = int(re.search(r"(\d+) requests in", out).group(1))
    return float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)), cpu_s / requests * 1e6


def fixed_rate(url: str, rate: float, seconds: float, prefix: list[str]) -> dict:
    out = subprocess.run(
        [*prefix, PY, str(HERE / "fixed_rate.py"), url, str(rate), str(seconds)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return json.loads(out)


def target_command(
    name: str, port: int, upstream_url: str, up_port: int, workdir: Path, cpu: list[str], otlp: str
) -> list[str]:
    if name == "bare":
        return [*cpu, PY, str(HERE / "bare_proxy.py"), str(port), upstream_url]
    if name in ("modeshift", "telemetry"):
        config = workdir / f"{name}.yaml"
        telemetry = otlp if name == "telemetry" else None
        config.write_text(yaml.safe_dump(modeshift_config(port, free_port(), upstream_url, telemetry)))
        return [*cpu, PY, "-m", "commands.cli", "serve", "-c", str(config)]
    return [*cpu, *nginx(NGINX_PROXY, workdir, port=port, upstream=up_port)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="wrk run per target")
    parser.add_argument("--rate", type=float, default=500.0)
    parser.add_argument("--rate-seconds", type=float, default=10.0)
    parser.add_argument("--rounds", type=int, default=1, help="repeat all targets; medians are printed")
    parser.add_argument("--targets", default="direct,bare,modeshift,telemetry,nginx", help="comma-separated subset")
    args = parser.parse_args()
    have_wrk, have_nginx = bool(shutil.which("wrk")), bool(shutil.which("nginx"))
    if not have_wrk:
        print("wrk is not installed: saturation throughput is skipped (`make bench` installs it)")
    proxy_cpu, other_cpu = cpus()
    OUT.mkdir(exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="modeshift-bench-"))
    lines: list[str] = []

    def say(line: str = "") -> None:
        print(line, flush=True)
        lines.append(line)

    up_port = free_port()
    upstream_url = f"http://127.0.0.1:{up_port}"
    if have_nginx:
        upstream_cmd = nginx(NGINX_UPSTREAM, workdir, port=up_port)
    else:
        upstream_cmd = [PY, str(HERE / "fast_upstream.py"), str(up_port)]
    wanted = args.targets.split(",")
    names = [n for n in ("direct", "bare", "modeshift", "telemetry", "nginx") if n in wanted]
    names = [n for n in names if n != "nginx" or have_nginx]
    results: dict[str, list[dict]] = {name: [] for name in names}
    say(
        f"upstream: {'nginx' if have_nginx else 'bench/fast_upstream.py'}; load: wrk -t1 -c64, then {args.rate:g} req/s"
    )
    proxy_cores, other_cores = (proxy_cpu[-1], other_cpu[-1]) if proxy_cpu else ("any", "any")
    say(f"cpus: proxies on {proxy_cores}, upstream and load on {other_cores}")
    sink_port = free_port()
    otlp = f"http://127.0.0.1:{sink_port}"
    sink_cmd = [*other_cpu, PY, str(HERE / "otlp_sink.py"), str(sink_port)]
    with process([*other_cpu, *upstream_cmd], up_port), process(sink_cmd, sink_port):
        for round_index in range(args.rounds):
            for name in names:
                port = up_port if name == "direct" else free_port()
                url = f"http://127.0.0.1:{port}/v1/embeddings"
                cmd = (
                    None
                    if name == "direct"
                    else target_command(name, port, upstream_url, up_port, workdir, proxy_cpu, otlp)
                )
                with process(cmd, port, cwd=ROOT) if cmd else _nothing() as proc:
                    pgid = proc.pid if proc else None
                    rps, cpu_us = wrk(url, args.seconds, other_cpu, pgid) if have_wrk else (math.nan, math.nan)
                    latency = fixed_rate(url, args.rate, args.rate_seconds, other_cpu)
                results[name].append({"rps": rps, "cpu_us": cpu_us, **latency})
                say(
                    f"round {round_index + 1} {name:<10} {rps:>9,.0f} req/s  {cpu_us:>6.1f} CPU us/req   "
                    f"p50 {latency['p50_ms']:.3f} ms   p99 {latency['p99_ms']:.3f} ms   failures {latency['failures']}"
                )
    shutil.rmtree(workdir, ignore_errors=True)

    def median(name: str, key: str) -> float:
        return statistics.median(r[key] for r in results[name])

    say()
    base = "bare" if "bare" in names else names[0]
    direct = "direct" if "direct" in names else None
    say(
        f"{'target':<10} {'req/s':>9} {'vs ' + base:>10} {'CPU us/req':>11} {'vs ' + base:>10}"
        f"   {'p50 ms':>7} {'+direct':>8}   {'p99 ms':>7} {'+direct':>8}"
    )
    for name in names:
        rps, cpu, p50, p99 = (median(name, k) for k in ("rps", "cpu_us", "p50_ms", "p99_ms"))
        rps_ratio, cpu_ratio = rps / median(base, "rps"), cpu / median(base, "cpu_us")
        added_50 = p50 - median(direct, "p50_ms") if direct else math.nan
        added_99 = p99 - median(direct, "p99_ms") if direct else math.nan
        say(
            f"{name:<10} {rps:>9,.0f} {rps_ratio:>9.2f}x {cpu:>11.1f} {cpu_ratio:>9.2f}x"
            f"   {p50:>7.3f} {added_50:>+8.3f}   {p99:>7.3f} {added_99:>+8.3f}"
        )
    say()
    if {"modeshift", "bare"} <= set(names):
        say(
            f"modeshift / bare: throughput {median('modeshift', 'rps') / median('bare', 'rps'):.2f}x "
            f"(target >= 1.00), CPU per request {median('modeshift', 'cpu_us') / median('bare', 'cpu_us'):.2f}x"
        )
    if direct and "modeshift" in names:
        added_p50 = median("modeshift", "p50_ms") - median("direct", "p50_ms")
        added_p99 = median("modeshift", "p99_ms") - median("direct", "p99_ms")
        say(
            f"modeshift added latency at {args.rate:g} req/s: p50 {added_p50:+.3f} ms (target <= 0.5), "
            f"p99 {added_p99:+.3f} ms (target <= 2)"
        )
    if {"modeshift", "telemetry"} <= set(names):
        pairs = [t["rps"] / m["rps"] for m, t in zip(results["modeshift"], results["telemetry"])]
        say(
            f"telemetry on / off: throughput {median('telemetry', 'rps') / median('modeshift', 'rps'):.2f}x "
            f"(target >= 0.90), CPU per request {median('telemetry', 'cpu_us') / median('modeshift', 'cpu_us'):.2f}x; "
            f"per round {', '.join(f'{r:.2f}x' for r in pairs)}"
        )
    (OUT / "proxy_overhead.txt").write_text("\n".join(lines) + "\n")
    return 0


@contextmanager
def _nothing():
    yield None


if __name__ == "__main__":
    raise SystemExit(main())
