"""Capacity benchmark: what each way of provisioning GPUs paid by the hour costs, and whether it keeps the objectives.

    python bench/capacity.py [--out bench/out/capacity]

`modeshift plan` (simulator.plan) with configs/openai-vllm.yaml (realtime
and batch vLLM lanes, autoscaled, priced per replica-hour, the `fleet`
policy) and its service model, on three traces, 10% of each pinned to
real-time:

1. the Azure LLM conversation trace as it is (19,366 requests over an hour);
2. the same hour at four times the load: the trace laid over itself four
   times, each copy shifted by a quarter of the hour (so the real-time lane
   needs several replicas at its peak);
3. a generated bursty hour and a half: spells of 48 req/s (about 4 minutes)
   between spells of 8 req/s (about 10 minutes), sizes resampled from the
   Azure trace; the bursts are shorter than the down hold and not much
   longer than a cold start, so the cold start bites.

Prints each plan's table, then the targets, each PASS or MISS with its
figure: modeshift at least 40% cheaper than static peak, never dearer than
utilisation autoscaling, within 10% of the oracle's cost, every class's
objective met; on the bursty trace at least 15% cheaper than utilisation
autoscaling. With --out, each trace's plan.json and keda.yaml.
"""

from __future__ import annotations

import argparse
import json
import random
from dataclasses import replace
from pathlib import Path

import numpy as np
from rich.console import Console

from commands.plan import keda_manifests, plan_table
from configs import load_config
from policies.control.objectives import Objectives
from simulator import generators
from simulator.outcome import SloTargets
from simulator.plan import MODESHIFT, ORACLE, PEAK, UTILISATION, Plan, plan
from simulator.service import load_service_model
from simulator.traces import TraceRequest, load_trace, with_pinned_share

ROOT = Path(__file__).resolve().parents[1]
AZURE = ROOT.parent / "shared" / "traces" / "azure_llm_2023_conv.csv"
ROUTE = "/v1/chat/completions"


def laid_over(trace: list[TraceRequest], copies: int) -> list[TraceRequest]:
    """`copies` of the trace over the same span, the k-th shifted by k/copies of it (wrapping round)."""
    span = trace[-1].t_s
    out = [replace(r, t_s=(r.t_s + k * span / copies) % span) for k in range(copies) for r in trace]
    return sorted(out, key=lambda r: r.t_s)


def traces() -> dict[str, list[TraceRequest]]:
    azure = [replace(r, route=ROUTE) for r in load_trace(AZURE)]
    bursty = generators.on_off(
        48.0, 8.0, 240.0, 600.0, 5400.0, np.random.default_rng(11), generators.Sizes.like(azure), ROUTE
    )
    made = {"azure, as it is": azure, "azure, 4x the load": laid_over(azure, 4), "bursty": bursty}
    return {name: with_pinned_share(trace, 0.1, random.Random(0), "realtime") for name, trace in made.items()}


def targets(name: str, result: Plan, slo: SloTargets) -> list[tuple[str, bool, str]]:
    fleets = {f.label: f for f in result.fleets}
    ours, hpa, oracle = fleets[MODESHIFT], fleets[UTILISATION], fleets[ORACLE]
    saving = result.saving(ours)
    over_oracle = ours.cost_usd / oracle.cost_usd - 1.0
    against_hpa = 1.0 - ours.cost_usd / hpa.cost_usd
    kept = ", ".join(f"{c} {a:.2%}" for c, a in ours.attainment.items())
    checks = [
        (f"{name}: >= 40% cheaper than {PEAK}", saving >= 0.40, f"{saving:+.1%}"),
        (f"{name}: no dearer than {UTILISATION}", against_hpa >= 0.0, f"{against_hpa:+.1%} cheaper"),
        (f"{name}: within 10% of the oracle", over_oracle <= 0.10, f"{over_oracle:+.1%} over it"),
        (f"{name}: every objective met", ours.keeps(slo), kept),
    ]
    if name == "bursty":
        checks.append((f"{name}: >= 15% cheaper than {UTILISATION}", against_hpa >= 0.15, f"{against_hpa:+.1%}"))
    return checks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="write each trace's plan.json and keda.yaml here")
    args = parser.parse_args()
    console = Console(width=160)
    config = load_config(ROOT / "configs" / "openai-vllm.yaml")
    service = load_service_model(ROOT / "configs" / "openai-vllm.service.yaml")
    slo = SloTargets.of(Objectives(config.objectives))
    checks = []
    for name, trace in traces().items():
        console.print(f"\n[bold]{name}[/bold]: {len(trace):,} requests over {trace[-1].t_s:,.0f} s")
        result = plan(config, service, trace, slo)
        console.print(plan_table(result, slo))
        checks += targets(name, result, slo)
        if args.out:
            folder = args.out / name.replace(",", "").replace(" ", "-")
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "plan.json").write_text(json.dumps(result.as_record(slo), indent=2, allow_nan=False) + "\n")
            (folder / "keda.yaml").write_text(keda_manifests(config, result))
    console.print("\n[bold]targets[/bold]")
    for what, ok, figure in checks:
        console.print(f"  {'PASS' if ok else 'MISS'}  {what}: {figure}")


if __name__ == "__main__":
    main()
