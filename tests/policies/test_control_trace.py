"""The control loop built from the demo config, fed with real Azure arrivals.

A slice of the Azure LLM trace is replayed in virtual time with a rush in the
middle (the arrivals compressed 8x). The lanes follow a fixed service model
(real-time 20 ms, batch 150 ms), so the decisions depend only on the policy
and controller code: the rush must move traffic to batch and back, and two
runs must log identical decisions.
"""

import csv
import random
from datetime import datetime
from pathlib import Path

from configs import build_control_loop, load_config, ready_config_path

SLICE = Path(__file__).resolve().parents[1] / "data" / "azure_conv_slice.csv"
SERVICE_S = {"realtime": 0.02, "batch": 0.15}


def arrivals_with_a_rush() -> list[tuple[float, int, int]]:
    with SLICE.open(newline="") as f:
        rows = list(csv.DictReader(f))
    stamps = [datetime.fromisoformat(r["TIMESTAMP"][:26]) for r in rows]
    gaps = [0.0] + [(b - a).total_seconds() for a, b in zip(stamps, stamps[1:])]
    out, t = [], 0.0
    for i, (row, gap) in enumerate(zip(rows, gaps)):
        t += gap / 8 if 1000 <= i < 2500 else gap
        out.append((t, int(row["ContextTokens"]), int(row["GeneratedTokens"])))
    return out


def replay() -> list[dict]:
    config = load_config(ready_config_path("default"))
    loop = build_control_loop(config, now_s=0.0, rng=random.Random(config.server.seed))
    draw = random.Random(42)
    tick_s = config.switching.tick_s
    next_tick = tick_s
    log = []
    for t, input_tokens, output_tokens in arrivals_with_a_rush():
        while next_tick <= t:
            log += [a.as_record() for a in loop.tick(next_tick)]
            next_tick += tick_s
        lane = loop.weights.draw(draw.random())
        window = loop.monitor.lanes[lane]
        window.arrived(t)
        latency = SERVICE_S[lane]
        cost = loop.monitor.attributed_cost_usd(lane, input_tokens, output_tokens, busy_s=latency)
        window.completed(t, latency, input_tokens=input_tokens, output_tokens=output_tokens, cost_usd=cost)
    return log


def test_a_rush_moves_traffic_to_batch_and_back():
    log = replay()
    moves = [(r["kind"], r.get("to_mode") or r.get("mode")) for r in log if r["kind"] != "SetWeights"]
    started = [to for kind, to in moves if kind == "TransitionStarted"]
    completed = [to for kind, to in moves if kind == "TransitionCompleted"]
    assert started[:2] == ["batch", "realtime"], moves
    assert completed[:2] == ["batch", "realtime"], moves
    first = next(r for r in log if r["kind"] == "TransitionStarted")
    assert first["reason"].startswith("arrival rate") and first["figures"]["arrival_rate_per_s"] > 20


def test_identical_inputs_give_identical_decision_logs():
    assert replay() == replay()
