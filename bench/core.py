"""Per-call cost of the control core: recording a request, and a full tick.

    python bench/core.py [--calls 1000000] [--ticks 1000000]

Recording bounds the proxy's per-request overhead and the simulator's speed;
a tick (snapshot of two lanes + the demo config's policy + the switching
controller) bounds the control loop. Targets: record <= 2 us, tick <= 200 us.

The tick runs in virtual time, one tick per second, with traffic recorded
between ticks (untimed) whose rate swings between quiet and rush every
10 minutes, so the controller holds, ramps, completes and cools down during
the run instead of idling in one state.
"""

from __future__ import annotations

import argparse
import platform
import random
import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from configs import build_control_loop, load_config, ready_config_path  # noqa: E402
from policies.control.metrics import LaneWindow  # noqa: E402

RECORD_TARGET_US = 2.0
TICK_TARGET_US = 200.0


def bench_record(calls: int) -> dict[str, float]:
    window = LaneWindow(now_s=0.0, window_s=60.0, slot_s=1.0)
    rng = random.Random(1)
    latencies = [rng.lognormvariate(-3.0, 0.8) for _ in range(4096)]
    arrived, completed = window.arrived, window.completed
    step = 1.0 / 2000  # 2,000 req/s of virtual time: slots rotate as they would live

    start = time.perf_counter_ns()
    for i in range(calls):
        arrived(i * step)
    arrived_ns = time.perf_counter_ns() - start

    start = time.perf_counter_ns()
    for i in range(calls):
        completed(i * step, latencies[i & 4095], input_tokens=900, output_tokens=120, cost_usd=1e-5)
    completed_ns = time.perf_counter_ns() - start

    # The loop itself (index arithmetic, list lookup) is part of neither call.
    start = time.perf_counter_ns()
    for i in range(calls):
        _ = i * step, latencies[i & 4095]
    loop_ns = time.perf_counter_ns() - start
    return {
        "arrived": (arrived_ns - loop_ns / 2) / calls / 1000,
        "completed": (completed_ns - loop_ns) / calls / 1000,
        "request (both)": (arrived_ns + completed_ns - 1.5 * loop_ns) / calls / 1000,
    }


def bench_tick(ticks: int) -> tuple[dict[str, float], Counter]:
    config = load_config(ready_config_path("default"))
    loop = build_control_loop(config, now_s=0.0, rng=random.Random(config.server.seed))
    rng = random.Random(2)
    service_s = {"realtime": 0.02, "batch": 0.15}
    kinds: Counter = Counter()
    spent_ns = 0
    snapshot_ns = 0
    for k in range(1, ticks + 1):
        now = float(k)
        rate = 40 if (k // 600) % 2 else 4  # quiet and rush, ten minutes each
        for j in range(rate):
            t = now - 1.0 + j / rate
            lane = loop.weights.draw(rng.random())
            window = loop.monitor.lanes[lane]
            window.arrived(t)
            window.completed(t, service_s[lane] * (0.8 + 0.4 * rng.random()))
        start = time.perf_counter_ns()
        actions = loop.tick(now)
        spent_ns += time.perf_counter_ns() - start
        if k % 1000 == 0:  # the snapshot alone, sampled
            start = time.perf_counter_ns()
            loop.snapshot(now)
            snapshot_ns += time.perf_counter_ns() - start
        kinds.update(a.kind for a in actions)
    return {"tick": spent_ns / ticks / 1000, "snapshot alone": snapshot_ns / max(1, ticks // 1000) / 1000}, kinds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=1_000_000, help="record calls to time")
    parser.add_argument("--ticks", type=int, default=1_000_000, help="control ticks to time")
    args = parser.parse_args()

    print(
        f"modeshift control core, {platform.python_implementation()} {platform.python_version()}, {platform.machine()}"
    )
    record = bench_record(args.calls)
    print(f"\nrecording, {args.calls:,} calls each (us per call; target <= {RECORD_TARGET_US:g} us per request)")
    for name, us in record.items():
        print(f"  {name:<16} {us:8.3f} us")
    tick, kinds = bench_tick(args.ticks)
    print(f"\ntick with 2 lanes and the default policy, {args.ticks:,} ticks (target <= {TICK_TARGET_US:g} us)")
    for name, us in tick.items():
        print(f"  {name:<16} {us:8.2f} us")
    print("  decisions during the run: " + ", ".join(f"{k} {n}" for k, n in sorted(kinds.items())))
    ok_record = record["request (both)"] <= RECORD_TARGET_US
    ok_tick = tick["tick"] <= TICK_TARGET_US
    print(
        f"\nrecord {'meets' if ok_record else 'MISSES'} its target; tick {'meets' if ok_tick else 'MISSES'} its target"
    )


if __name__ == "__main__":
    main()
