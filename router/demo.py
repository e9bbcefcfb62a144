"""`modeshift demo`: watch the control core move real traffic to batch and back.

Until the live stack lands (reference backends + router on loopback, see the
backends issue), the demo replays the bundled Azure trace slice, with a rush
in the middle, through the control loop built from configs/default.yaml, in
virtual time, with lanes of fixed service time (simulator.fixed_lanes). It
prints every decision with its reason, and the requests each lane served.
"""

from __future__ import annotations

from configs import load_config, ready_config_path
from simulator.fixed_lanes import replay
from simulator.traces import bundled_azure_slice, with_rush

SERVICE_S = {"realtime": 0.02, "batch": 0.15}
RUSH = (1000, 2500, 8.0)  # requests 1000..2499 arrive 8x faster


def run_demo() -> int:
    path = ready_config_path("default")
    config = load_config(path)
    trace = with_rush(bundled_azure_slice(), *RUSH)
    print(f"config   {path}")
    print(f"policy   {config.policy.type}; modes {', '.join(config.modes)}; initial {config.initial_mode}")
    print(
        f"trace    {len(trace):,} requests of the Azure LLM trace 2023 over {trace[-1].t_s:,.0f} s, "
        f"requests {RUSH[0]}-{RUSH[1] - 1} compressed {RUSH[2]:g}x"
    )
    print("lanes    fixed service time: " + ", ".join(f"{k} {v * 1000:g} ms" for k, v in SERVICE_S.items()))
    print()
    run = replay(config, trace, SERVICE_S, seed=config.server.seed)
    for record in run.decisions:
        if record["kind"] == "SetWeights":
            continue
        target = record.get("to_mode") or record.get("mode") or ""
        print(f"  t={record['at_s']:7.1f}s  {record['kind']:<19} {target:<9} {record['reason']}")
    print()
    total = sum(run.requests_per_lane.values())
    for lane in config.lanes:
        n = run.requests_per_lane[lane]
        print(f"  {lane:<9} {n:6,} requests ({n / total:5.1%})")
    return 0
