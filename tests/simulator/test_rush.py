"""The demo config in the simulator, fed with real Azure arrivals.

A slice of the Azure LLM trace is replayed in virtual time with a rush in the
middle (the arrivals compressed 8x). The lanes take a fixed time per call
(real-time 20 ms, batch 150 ms, no jitter), so the decisions depend only on
the policy and controller code: the rush must move traffic to batch and
back, and two runs must log identical decisions.
"""

from configs import load_config, ready_config_path
from simulator.engine import Engine
from simulator.service import Latency, ServerLane, ServiceModel
from simulator.traces import bundled_azure_slice, with_rush

SERVICE = ServiceModel(
    lanes={
        "realtime": ServerLane(concurrency=64, latency=Latency(base_s=0.02)),
        "batch": ServerLane(concurrency=64, latency=Latency(base_s=0.15)),
    }
)


def replay() -> list[dict]:
    config = load_config(ready_config_path("default"))
    trace = with_rush(bundled_azure_slice(), 1000, 2500, 8.0)
    return Engine(config, SERVICE, seed=42).run(trace).decisions


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
