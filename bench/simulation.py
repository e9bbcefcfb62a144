"""Simulator benchmark: speed, and what each policy saves on real and bursty traffic.

    python bench/simulation.py [--requests 1000000] [--skip-speed | --speed-only]

1. Speed: a generated Poisson trace of `--requests` requests (200 req/s, on
   the embeddings route, so the batch lane micro-batches) through
   configs/default.yaml with configs/default.service.yaml, on one
   core; prints simulated requests per second of CPU time (target: 1M in
   10 s or less).
2. The Azure LLM conversation trace (../shared/traces, 19,366 requests over
   an hour, 10% pinned to real-time) through bench/scenarios/azure-llm.yaml:
   every policy, the always-<mode> baselines and the oracle, under a
   batch-tolerant switchable SLO (60 s) and a tight one (30 s). Prints each
   contender's saving against always-realtime, its SLO attainment per class,
   and its distance from the oracle (oracle saving minus its own, in points).
3. The same on a generated bursty trace (on-off: 12 req/s spells of about
   2 minutes between 3 req/s spells of about 6 minutes, sizes resampled
   from the Azure trace).
"""

from __future__ import annotations

import argparse
import random
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from configs import load_config
from configs.schema import ModeshiftConfig
from simulator import generators
from simulator.compare import ORACLE, baseline_label, compare
from simulator.engine import Engine
from simulator.outcome import SloTargets
from simulator.service import load_service_model
from simulator.traces import load_trace, with_pinned_share

ROOT = Path(__file__).resolve().parents[1]
SCENARIOS = ROOT / "bench" / "scenarios"
AZURE = ROOT.parent / "shared" / "traces" / "azure_llm_2023_conv.csv"
POLICIES = (
    "slo:servers=32,lane_servers={batch: 128}",  # the objectives: pinned on realtime, switchable wherever it goes
    "slo:servers=32,p95=15s",  # realtime's p95 alone, as before lane_servers
    "cost:threshold_usd=0.0002,hold=60s",
    "latency:max_latency=20s,min_throughput_rps=2,hold=30s",
    "adaptive:latency_requirement=30s",
)


def speed(console: Console, requests: int) -> None:
    config = load_config(ROOT / "configs" / "default.yaml")
    service = load_service_model(ROOT / "configs" / "default.service.yaml")
    began = time.process_time()
    trace = generators.poisson(200.0, requests / 200.0, np.random.default_rng(7), route="/v1/embeddings")
    generated = time.process_time() - began
    began = time.process_time()
    outcome = Engine(config, service, seed=1).run(trace)
    took = time.process_time() - began
    decided = sum(1 for d in outcome.decisions if d["kind"] == "TransitionStarted")
    console.print(
        f"speed: {len(trace):,} requests ({trace[-1].t_s:,.0f} s of traffic, {len(outcome.timeline):,} ticks, "
        f"{decided} transitions) simulated in {took:.2f} s of CPU: {len(trace) / took:,.0f} requests/s "
        f"(generating the trace: {generated:.2f} s)"
    )


def with_objectives(config: ModeshiftConfig, *, pinned_s: float, switchable_s: float) -> ModeshiftConfig:
    """The config with the scenario's objectives (p99 of each class within its target): what it is judged by
    is what its policies and its controller read."""
    data = config.model_dump(by_alias=True)
    data["objectives"] = {"pinned": {"latency": pinned_s}, "switchable": {"latency": switchable_s}}
    return ModeshiftConfig.model_validate(data)


def savings(console: Console, title: str, trace, switchable_s: float) -> None:
    config = with_objectives(load_config(SCENARIOS / "azure-llm.yaml"), pinned_s=15.0, switchable_s=switchable_s)
    service = load_service_model(SCENARIOS / "azure-llm.service.yaml")
    slo = SloTargets(pinned_s=15.0, switchable_s=switchable_s, attainment=0.99)
    began = time.process_time()
    result = compare(config, service, trace, policies=POLICIES, slo=slo, seed=1)
    took = time.process_time() - began
    base = result.summaries[baseline_label("realtime")].total.cost_usd
    oracle_saving = 1.0 - result.summaries[ORACLE].total.cost_usd / base
    table = Table(title=f"{title}: switchable SLO {switchable_s:g} s, pinned 15 s, 99% attainment ({took:.1f} s CPU)")
    for name in ("contender", "saving", "SLO pinned", "SLO switchable", "meets both", "from oracle", "transitions"):
        table.add_column(name, justify="left" if name == "contender" else "right", no_wrap=True)
    for label, summary in result.summaries.items():
        row = summary.total
        saving = 1.0 - row.cost_usd / base
        meets = row.slo_pinned >= slo.attainment and row.slo_switchable >= slo.attainment
        table.add_row(
            "load (the config's)" if label == "config" else label,
            f"{saving:+.1%}",
            f"{row.slo_pinned:.2%}",
            f"{row.slo_switchable:.2%}",
            "yes" if meets else "no",
            f"{(oracle_saving - saving) * 100:+.1f} pt",
            str(summary.transitions),
        )
    console.print(table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=1_000_000)
    parser.add_argument("--skip-speed", action="store_true")
    parser.add_argument("--speed-only", action="store_true", help="only part 1 (to pair checkouts with farm-bench)")
    args = parser.parse_args()
    console = Console(width=160)
    if not args.skip_speed:
        speed(console, args.requests)
    if args.speed_only:
        return
    azure = load_trace(AZURE)
    pinned = with_pinned_share(azure, 0.1, random.Random(3))
    for switchable_s in (60.0, 30.0):
        savings(console, "Azure LLM conversations", pinned, switchable_s)
    sizes = generators.Sizes.like(azure)
    bursty = generators.on_off(12.0, 3.0, 120.0, 360.0, 3600.0, np.random.default_rng(5), sizes)
    for switchable_s in (60.0, 30.0):
        savings(console, "bursty on-off", with_pinned_share(bursty, 0.1, random.Random(3)), switchable_s)


if __name__ == "__main__":
    main()
