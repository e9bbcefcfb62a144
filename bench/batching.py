"""What batching buys: the reference model server in realtime vs batch mode, and router micro-batching.

    python bench/batching.py [--seconds 8] [--concurrency 1,16,64] [--device cpu|cuda]

Side by side in one run, on this machine:
  realtime     `modeshift backend --mode realtime`: one forward pass per request
  batch        `modeshift backend --mode batch`: dynamic batching in the server
  router-mb    `modeshift serve` merging requests (openai-embeddings codec,
               hybrid flush) in front of the realtime server
  router-pass  the same router passing each request through to the realtime
               server (micro-batching off)
Each client sends one text per request, closed loop, `concurrency` clients
at once, for --seconds; items/s and p50/p99 latency per run. Two corpora:
"short" texts of 4 to 12 words (queries, titles) and "mixed" texts of 8 to
40 words. Targets: batch / realtime >= 3x items/s on CPU (>= 10x on a GPU).
Output also goes to bench/out/batching.txt.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import yaml
from processes import free_port, process

HERE = Path(__file__).resolve().parent
OUT = HERE / "out"
PY = sys.executable

WORDS = (
    "route traffic between a real time lane and a batch lane by policy with gradual weighted transitions that "
    "roll back when the lanes that gained traffic degrade while the simulator replays real request traces"
).split()


# Words per text: short queries or titles, and a mix up to a paragraph.
CORPORA = {"short": (4, 12), "mixed": (8, 40)}


def texts(n: int, words: tuple[int, int] = CORPORA["mixed"], seed: int = 7) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choices(WORDS, k=rng.randint(*words))) for _ in range(n)]


async def load(
    url: str, concurrency: int, seconds: float, headers: dict[str, str], words: tuple[int, int]
) -> dict[str, float]:
    corpus = texts(1000, words)
    latencies: list[float] = []
    failures = 0
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def warm(i: int) -> None:  # connections open, the model's first passes done
            async with session.post(url, json={"input": corpus[i]}, headers=headers) as response:
                await response.read()

        await asyncio.gather(*(warm(i) for i in range(8)))
        stop_at = time.perf_counter() + seconds

        async def client(k: int) -> None:
            nonlocal failures
            i = k
            while time.perf_counter() < stop_at:
                started = time.perf_counter()
                async with session.post(url, json={"input": corpus[i % len(corpus)]}, headers=headers) as response:
                    await response.read()
                    if response.status != 200:
                        failures += 1
                        continue
                latencies.append(time.perf_counter() - started)
                i += concurrency

        began = time.perf_counter()
        await asyncio.gather(*(client(k) for k in range(concurrency)))
        elapsed = time.perf_counter() - began
    latencies.sort()
    q = statistics.quantiles(latencies, n=100) if len(latencies) > 1 else [math.nan] * 99
    return {"items_s": len(latencies) / elapsed, "p50_ms": q[49] * 1e3, "p99_ms": q[98] * 1e3, "failures": failures}


def backend(mode: str, port: int, device: str | None):
    args = [PY, "-m", "commands.cli", "backend", "--mode", mode, "--port", str(port), "--max-batch", "64"]
    if device:
        args += ["--device", device]
    return process(args, port)


def router_config(dir: Path, port: int, admin: int, upstream: str) -> Path:
    config = {
        "server": {"listen": f"127.0.0.1:{port}", "admin_listen": f"127.0.0.1:{admin}", "max_body_bytes": "16MiB"},
        "lanes": {
            "realtime": {"upstreams": [upstream], "max_in_flight": 256, "queue_depth": 4096},
            "batch": {
                "upstreams": [upstream],
                "max_in_flight": 2,
                "queue_depth": 4096,
                "batching": {"rule": "hybrid", "max_batch": 64, "max_wait": "5ms", "queue_capacity": 4096},
            },
        },
        "routes": [{"path": "/v1/embeddings", "protocol": "openai-embeddings"}],
        "modes": {"realtime": {"realtime": 1.0}, "batch": {"batch": 1.0}},
        "initial_mode": "realtime",
        "policy": {"type": "static", "params": {"mode": "realtime"}},
    }
    path = dir / "router.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--concurrency", default="1,16,64")
    parser.add_argument("--device", default=None, help="torch device for the backends (default: cuda if present)")
    args = parser.parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]
    rows: list[tuple[str, str, int, dict]] = []

    def run(name: str, corpus: str, url: str, concurrency: int, headers: dict[str, str] | None = None) -> None:
        figures = asyncio.run(load(url, concurrency, args.seconds, headers or {}, CORPORA[corpus]))
        rows.append((name, corpus, concurrency, figures))
        print(
            f"{name:<12} {corpus:<6} c={concurrency:<4} {figures['items_s']:9.1f} items/s   "
            f"p50 {figures['p50_ms']:8.1f} ms   p99 {figures['p99_ms']:8.1f} ms   failures {figures['failures']}",
            flush=True,
        )

    for mode in ("realtime", "batch"):
        port = free_port()
        with backend(mode, port, args.device):
            for corpus in CORPORA:
                for c in levels:
                    run(mode, corpus, f"http://127.0.0.1:{port}/v1/embeddings", c)

    top = max(levels)
    with tempfile.TemporaryDirectory() as tmp:
        upstream_port, router_port, admin_port = free_port(), free_port(), free_port()
        config = router_config(Path(tmp), router_port, admin_port, f"http://127.0.0.1:{upstream_port}")
        with backend("realtime", upstream_port, args.device):
            with process([PY, "-m", "commands.cli", "serve", "-c", str(config)], router_port):
                url = f"http://127.0.0.1:{router_port}/v1/embeddings"
                for corpus in CORPORA:
                    run("router-mb", corpus, url, top, {"X-Modeshift-Mode": "batch"})
                    run("router-pass", corpus, url, top, {"X-Modeshift-Mode": "realtime"})

    def at(name: str, corpus: str, c: int) -> float:
        return next(f["items_s"] for n, k, cc, f in rows if (n, k, cc) == (name, corpus, c))

    def best(name: str, corpus: str) -> float:
        return max(f["items_s"] for n, k, _, f in rows if (n, k) == (name, corpus))

    lines = ["", "ratios (items/s)"]
    for corpus in CORPORA:
        per_level = "  ".join(f"c={c}: {at('batch', corpus, c) / at('realtime', corpus, c):.2f}x" for c in levels)
        lines.append(f"  {corpus:<6} batch / realtime   {per_level}")
        lines.append(
            f"  {corpus:<6} batch best / realtime best  {best('batch', corpus) / best('realtime', corpus):.2f}x"
            "  (target >= 3x on CPU, >= 10x on GPU)"
        )
        mb = at("router-mb", corpus, top) / at("router-pass", corpus, top)
        lines.append(f"  {corpus:<6} router micro-batching on / off at c={top}  {mb:.2f}x")
    print("\n".join(lines))
    OUT.mkdir(exist_ok=True)
    table = [
        f"{n:<12} {k:<6} c={c:<4} {f['items_s']:9.1f} items/s p50 {f['p50_ms']:.1f} ms p99 {f['p99_ms']:.1f} ms"
        for n, k, c, f in rows
    ]
    (OUT / "batching.txt").write_text("\n".join(table + lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
