"""Simulator fidelity: a trace slice replayed against the live local stack, and simulated.

    python bench/fidelity.py [--length 95] [--speedup 8] [--runs 3] [--out DIR]

1. Starts the demo's stack (commands.demo_stack: the realtime and the batch
   reference backends and the router, configs/default.yaml) on loopback.
2. Profiles each backend directly (commands.profile: one call at a time per
   batch size and per text length, then rising client counts) into a
   service model, and the router's hop (the same calls through the router,
   pinned to the realtime lane).
3. Replays the demo's slice of the Azure LLM trace, with its 8x rush, through
   the router (commands.replay), and reads the router's attributed cost from
   /metrics (modeshift_cost_usd, before and after) and its decisions.
4. Simulates the same requests, with the token counts the backends reported,
   through the same config and the profiled model (simulator.engine).

Prints live and simulated p50/p95 latency and cost, in total and per lane,
and the relative error of each (target: 10% or less for the total p50, p95
and cost); then, over `--runs` fresh stacks, the live figures run by run
(the test bed's own spread) beside the error of each run, since an error
smaller than that spread cannot be told from the test bed's noise
(bench/fidelity_modeled.py is where the service model is known).
Everything runs on this machine's cores at once (the backends, the router,
the client), so contention the profile did not see shows up here as error:
that is part of what this measures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import time
from dataclasses import replace
from pathlib import Path

import aiohttp
from prometheus_client.parser import text_string_to_metric_families
from rich.console import Console
from rich.table import Table

from commands.demo import SHOWN_DECISIONS, Schedule
from commands.demo_stack import LocalStack
from commands.profile import Plan, build_lane, measure, measure_hop
from commands.replay import as_outcome, as_sent, replay
from configs import load_config, ready_config_path
from simulator.engine import Engine
from simulator.outcome import TOTAL, SloTargets, summarize
from simulator.service import ServiceModel
from simulator.traces import TraceRequest

ROUTE = "/v1/embeddings"
BATCH_SIZES = (1, 2, 4, 8, 16, 32, 64)  # the batch lane's micro-batches reach 64 texts
TARGET = 0.10


def profiled(stack: LocalStack, console: Console) -> ServiceModel:
    """Each backend's model, and the router's hop measured through the realtime lane (it does not micro-batch)."""
    lanes = {}
    for lane, base in stack.upstreams.items():
        plan = Plan(url=f"{base}{ROUTE}", batch_sizes=BATCH_SIZES, concurrency=(1, 2, 4), calls=20)
        lanes[lane] = build_lane(*asyncio.run(measure(plan)))
        latency = lanes[lane].latency
        console.print(
            f"profiled {lane}: {latency.base_s * 1e3:.2f} ms + {latency.per_item_s * 1e3:.3f} ms/text "
            f"+ {latency.per_input_token_s * 1e3:.4f} ms/token, jitter {latency.jitter:.2f}, "
            f"{lanes[lane].concurrency} at once"
        )
    plan = Plan(url=f"{stack.upstreams['realtime']}{ROUTE}", via=f"{stack.data_url}{ROUTE}", calls=20)
    hop_s = asyncio.run(measure_hop(plan, "realtime"))
    console.print(f"the router's hop: {hop_s * 1e3:.2f} ms")
    return ServiceModel(lanes=lanes, hop_s=hop_s, source="bench/fidelity.py")


def costs_usd(exposition: bytes) -> dict[str, float]:
    """The router's attributed cost per lane, from its Prometheus exposition."""
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(exposition.decode()):
        for sample in family.samples:
            if sample.name == "modeshift_cost_usd_total":
                out[sample.labels["lane"]] = out.get(sample.labels["lane"], 0.0) + sample.value
    return out


async def live_run(stack: LocalStack, trace: list[TraceRequest]):
    """Replay `trace`: the results, the cost the router attributed meanwhile, and its decisions (timed from 0)."""
    async with aiohttp.ClientSession() as session:
        before = costs_usd(await stack.admin_get(session, "/metrics"))
        began = time.monotonic()  # the router's decisions are stamped on the same clock
        results = await replay(f"{stack.data_url}{ROUTE}", trace)
        after = costs_usd(await stack.admin_get(session, "/metrics"))
        lines = (await stack.admin_get(session, "/decisions")).splitlines()
    cost = {lane: after[lane] - before.get(lane, 0.0) for lane in after}
    decisions = [json.loads(line) for line in lines if line.strip()]
    return results, cost, [{**d, "at_s": d["at_s"] - began} for d in decisions]


def relative_error(simulated: float, live: float) -> float:
    return abs(simulated - live) / live if live else math.nan


def report(console: Console, live, simulated, live_cost: dict[str, float]) -> bool:
    table = Table(title="live replay against the simulation of the same requests")
    for name in ("lane", "figure", "live", "simulated", "error"):
        table.add_column(name, justify="left" if name in ("lane", "figure") else "right")
    within = True
    for lane in (*sorted(set(live.rows) - {TOTAL}), TOTAL):
        real, sim = live.rows.get(lane), simulated.rows.get(lane)
        if real is None or sim is None:
            continue
        cost = sum(live_cost.values()) if lane == TOTAL else live_cost.get(lane, 0.0)
        figures = (
            ("requests", real.requests, sim.requests, "{:,}"),
            ("p50 ms", real.p50_s * 1e3, sim.p50_s * 1e3, "{:.1f}"),
            ("p95 ms", real.p95_s * 1e3, sim.p95_s * 1e3, "{:.1f}"),
            ("cost $", cost, sim.cost_usd, "{:.6f}"),
        )
        for name, a, b, fmt in figures:
            error = relative_error(b, a)
            judged = lane == TOTAL and name != "requests"
            mark = "" if not judged else (" ok" if error <= TARGET else " over")
            within &= not judged or error <= TARGET
            table.add_row(lane, name, fmt.format(a), fmt.format(b), f"{error:.1%}{mark}")
    console.print(table)
    return within


def decision_table(live: list[dict], simulated: list[dict]) -> Table:
    """The mode changes, live and simulated, side by side in order."""
    table = Table(title="mode changes (seconds from the first request)")
    for name in ("decision", "live", "simulated"):
        table.add_column(name, justify="left" if name == "decision" else "right")
    shown = [[d for d in run if d["kind"] in SHOWN_DECISIONS] for run in (live, simulated)]
    for index in range(max(map(len, shown), default=0)):
        pair = [run[index] if index < len(run) else None for run in shown]
        kinds = {d["kind"] for d in pair if d is not None}
        name = " / ".join(sorted(kinds)) + f" {pair[0].get('to_mode', '') if pair[0] else ''}"
        table.add_row(name, *(f"{d['at_s']:.1f}" if d is not None else "-" for d in pair))
    return table


def one_run(console: Console, args, run: int) -> dict[str, tuple[float, float]]:
    """A fresh stack, profiled and replayed, and the simulation of what it was sent: total (live, simulated)
    p50, p95 and cost."""
    config_path = ready_config_path("default")
    trace, _, _ = Schedule(speedup=args.speedup, length_s=args.length).trace()
    trace = [replace(r, route=ROUTE) for r in trace]
    with LocalStack(config_path) as stack:
        service = profiled(stack, console)
        console.print(f"run {run}: replaying {len(trace):,} requests over {trace[-1].t_s:.0f} s through the router")
        results, live_cost, live_decisions = asyncio.run(live_run(stack, trace))
    sent = as_sent(trace, results)
    slo = SloTargets()
    outcomes = {
        "live": as_outcome(sent, results),
        "simulated": Engine(load_config(config_path), service, seed=args.seed).run(sent),
    }
    if args.out:
        _write(args.out / f"run-{run}", service, sent, outcomes, slo, live_decisions)
    live, simulated = (summarize(outcome, slo, label) for label, outcome in outcomes.items())
    report(console, live, simulated, live_cost)
    console.print(decision_table(live_decisions, outcomes["simulated"].decisions))
    real, sim = live.rows[TOTAL], simulated.rows[TOTAL]
    return {
        "p50": (real.p50_s, sim.p50_s),
        "p95": (real.p95_s, sim.p95_s),
        "cost": (sum(live_cost.values()), sim.cost_usd),
    }


def spread_table(runs: list[dict[str, tuple[float, float]]]) -> Table:
    """Each figure's live values from run to run (the test bed's own spread) beside the simulation's error."""
    table = Table(title=f"{len(runs)} runs: the live stack's spread beside the simulation's error (total)")
    for name in ("figure", "live, run by run", "live spread", "error, run by run"):
        table.add_column(name, justify="left" if name == "figure" else "right")
    for figure in ("p50", "p95", "cost"):
        live = [run[figure][0] for run in runs]
        errors = [relative_error(run[figure][1], run[figure][0]) for run in runs]
        shown = [f"{v * 1e3:.1f} ms" if figure != "cost" else f"${v:.4f}" for v in live]
        spread = max(live) / min(live) - 1 if min(live) > 0 else math.nan
        table.add_row(figure, ", ".join(shown), f"{spread:.0%}", ", ".join(f"{e:.1%}" for e in errors))
    return table


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--length", type=float, default=95.0, help="seconds of the demo's trace to send")
    parser.add_argument("--speedup", type=float, default=8.0, help="how much faster the rush runs")
    parser.add_argument("--seed", type=int, default=1, help="the simulator's seed")
    parser.add_argument("--runs", type=int, default=3, help="fresh stacks, each profiled and replayed")
    parser.add_argument("--out", type=Path, help="write the profiled service model and the sent trace here")
    args = parser.parse_args()
    console = Console(width=160)
    runs = [one_run(console, args, run) for run in range(1, args.runs + 1)]
    console.print(spread_table(runs))
    within = all(relative_error(sim, real) <= TARGET for run in runs for real, sim in run.values())
    console.print(f"total p50, p95 and cost within {TARGET:.0%} in every run: {'yes' if within else 'no'}")
    return 0


def _write(
    out: Path, service: ServiceModel, sent: list[TraceRequest], outcomes: dict, slo: SloTargets, live_decisions: list
) -> None:
    """The profiled model, the requests as sent, and both runs' per-request CSVs and decision logs."""
    from commands.profile import write_lane
    from simulator.report import write_decisions, write_requests_csv
    from simulator.traces import write_jsonl

    out.mkdir(parents=True, exist_ok=True)
    for lane, model in service.lanes.items():
        write_lane(out / "service.yaml", lane, model, "bench/fidelity.py", hop_s=service.hop_s)
    write_jsonl(sent, out / "sent.jsonl")
    for label, outcome in outcomes.items():
        write_requests_csv(outcome, slo, out / f"{label}.csv", [request.route for request in sent])
    write_decisions(live_decisions, out / "live-decisions.jsonl")
    write_decisions(outcomes["simulated"].decisions, out / "simulated-decisions.jsonl")


if __name__ == "__main__":
    raise SystemExit(main())
