"""Simulator fidelity where the test bed is not the noise: upstreams whose service model is known exactly.

    python bench/fidelity_modeled.py [--seconds 40] [--seed 1] [--only NAME]

Two upstreams of known service time on loopback (backends.modeled_server:
slots, a base, a time per text, log-normal jitter; no model, no CPU), each
in a process of its own on the other cores (bench/modeled_upstream.py), so
their timers keep to the model however busy the router is; the router and
the client in this process on the first core, with configs/default.yaml
pointed at them (bench/overload
has the numbers: real-time 4 slots x 40 ms, 100 req/s; batch one merged
call at a time, 30 ms + 4 ms a text), and embeddings calls on
/v1/embeddings, 10% pinned to real-time, under five loads:

  50%, 85%, 100%   steady Poisson at that share of the real-time capacity
  rush             calm at 5%, then twice the capacity for a quarter of the run, then calm
                   (the calm lies below the load policy's thresholds, 8 and 20 req/s, and
                   the first tick of the rush reads 27 req/s: the rush changes the mode, not
                   the luck of a reading on a threshold, as a calm at 20% or 10% did)
  bursty           on-off: spells at 150% of capacity between spells at 30%

Each is replayed live (commands.replay, open loop) and simulated
(simulator.engine, the same config, the servers' own numbers as the service
model, and as its hop what a single call through the router takes beyond
that model, measured once on a router of its own). Printed
per scenario: p50, p95 and p99 per lane and in total, the cost the router
attributed (the sum of every answer's X-Modeshift-Cost-Usd) against the
simulated one, the share of 503s, and the times of the mode changes, live
and simulated. Targets (issue 20): p50, p95 and cost within 10% and every
transition within one tick, at every load.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import random
import statistics
import sys
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import aiohttp
import numpy as np
from fidelity import decision_table, relative_error
from overload import BATCH, JITTER, PINNED_SHARE, REALTIME, capacity_per_s, contender_config, run_uvloop
from overload import service_model as known_model
from processes import free_port, process
from proxy_overhead import cpus
from rich.console import Console
from rich.table import Table

from backends.modeled_server import DRAW_HEADER, ModeledServer
from commands.replay import as_outcome, replay
from router.headers import MODE_HEADER
from router.server import RunningRouter, runtime_for
from simulator import generators
from simulator.engine import Engine
from simulator.outcome import TOTAL, Outcome, SloTargets, summarize
from simulator.traces import TraceRequest, with_pinned_share

HERE = Path(__file__).resolve().parent
ROUTE = "/v1/embeddings"
TARGET = 0.10
SCENARIOS = ("50%", "85%", "100%", "rush", "bursty")
HOP_CALLS = 40


def scenario(name: str, seconds: float, seed: int) -> list[TraceRequest]:
    rng, capacity = np.random.default_rng(seed), capacity_per_s()
    sizes = generators.Sizes(input_median=128, output_median=1, sigma=0.3)
    if name.endswith("%"):
        trace = generators.poisson(float(name[:-1]) / 100 * capacity, seconds, rng, sizes, route=ROUTE)
    elif name == "rush":
        quarter = seconds / 4
        rates = [(0.0, 0.05 * capacity), (1.5 * quarter, 2.0 * capacity), (2.5 * quarter, 0.05 * capacity)]
        trace = generators.step(rates, seconds, rng, sizes, route=ROUTE)
    else:
        trace = generators.on_off(1.5 * capacity, 0.3 * capacity, 4.0, 8.0, seconds, rng, sizes, route=ROUTE)
    trace = [TraceRequest(r.t_s, r.input_tokens, 0, ROUTE) for r in trace]
    return with_pinned_share(trace, PINNED_SHARE, random.Random(seed))


@contextlib.contextmanager
def modeled_upstreams(seed: int) -> Iterator[dict[str, str]]:
    """Each lane's upstream of known service model in a process of its own on the other cores: lane -> URL."""
    _, upstream_cpu = cpus()
    ports = {"realtime": free_port(), "batch": free_port()}
    settings = {"realtime": {**REALTIME, "seed": seed}, "batch": {**BATCH, "seed": seed + 1}}
    with contextlib.ExitStack() as stack:
        for lane, port in ports.items():
            command = [*upstream_cpu, sys.executable, str(HERE / "modeled_upstream.py"), str(port)]
            stack.enter_context(process([*command, json.dumps({**settings[lane], "jitter": JITTER})], port))
        yield {lane: f"http://127.0.0.1:{port}" for lane, port in ports.items()}


async def measured_hop_s(seed: int) -> float:
    """What one call through the router takes beyond its service model, as the simulator's `hop`.

    Single calls pinned to the real-time lane, each with the draw z = 0 so
    the upstream's own time is known to the microsecond: the median latency
    less that time is the router, the loopback network and the upstream's
    HTTP and timer, all of which a live client sees and the service model
    does not hold (`modeshift profile` puts the network into a fitted
    model's base and the router into its hop). Measured on a router of its
    own, so these calls are in no scenario's windows.
    """
    with modeled_upstreams(seed) as upstreams:
        router = RunningRouter(runtime_for(contender_config("shipped", upstreams)))
        await router.start(data=("127.0.0.1", 0), admin=("127.0.0.1", 0))
        try:
            host, port = router.data_address
            latencies = []
            body = {"input": ["one modeled text"], "model": "modeled"}
            headers = {MODE_HEADER: "realtime", DRAW_HEADER: "0"}
            async with aiohttp.ClientSession() as session:
                for k in range(HOP_CALLS + 2):
                    began = time.perf_counter()
                    async with session.post(f"http://{host}:{port}{ROUTE}", json=body, headers=headers) as answer:
                        await answer.read()
                        answer.raise_for_status()
                    if k >= 2:  # the first calls open the connections
                        latencies.append(time.perf_counter() - began)
        finally:
            await router.stop()
    served_s = ModeledServer(**REALTIME, jitter=JITTER).call_s(1, 0, z=0.0)
    return max(0.0, statistics.median(latencies) - served_s)


async def live(trace: list[TraceRequest], seed: int) -> tuple[Outcome, list[dict]]:
    """The router in this process (with the client), each upstream in a process of its own on the other cores."""
    with modeled_upstreams(seed) as upstreams:
        router = RunningRouter(runtime_for(contender_config("shipped", upstreams)))
        await router.start(data=("127.0.0.1", 0), admin=("127.0.0.1", 0))
        try:
            host, port = router.data_address
            began = router.runtime.now_s()  # the decisions are stamped on the router's clock
            draws = np.random.default_rng(seed).standard_normal(len(trace)).tolist()  # the simulator's (engine)
            results = await replay(
                f"http://{host}:{port}{ROUTE}", trace, seed=seed, timeout_s=60.0, modeled_draws=draws
            )
            decisions = [{**d, "at_s": d["at_s"] - began} for d in router.runtime.decisions.recent()]
        finally:
            await router.stop()
    return as_outcome(trace, results), decisions


def simulated(trace: list[TraceRequest], seed: int, hop_s: float) -> Outcome:
    config = contender_config("shipped", {"realtime": "http://127.0.0.1:1", "batch": "http://127.0.0.1:2"})
    return Engine(config, known_model().model_copy(update={"hop_s": hop_s}), seed=seed).run(trace)


def refused_share(outcome: Outcome, lane: str) -> float:
    """The share of the lane's requests (of all, in total) answered 503."""
    status = outcome.status if lane == TOTAL else outcome.status[outcome.lane == outcome.lanes.index(lane)]
    return float(np.mean(status == 503)) if len(status) else math.nan


def compare(console: Console, name: str, real: Outcome, sim: Outcome, tick_s: float) -> dict[str, float]:
    """Print one scenario's table; the worst relative errors of the judged figures and of the transitions."""
    slo = SloTargets()
    live_rows, sim_rows = summarize(real, slo, "live").rows, summarize(sim, slo, "simulated").rows
    table = Table(title=f"{name}: live | simulated | error")
    for column in ("lane", "requests", "p50 ms", "p95 ms", "p99 ms", "503s"):
        table.add_column(column, justify="left" if column == "lane" else "right")
    worst: dict[str, float] = {}
    for lane in (*sorted(set(live_rows) - {TOTAL}), TOTAL):
        a, b = live_rows.get(lane), sim_rows.get(lane)
        if a is None or b is None:
            continue
        cells = [f"{a.requests:,} | {b.requests:,}"]
        for figure, x, y in (("p50", a.p50_s, b.p50_s), ("p95", a.p95_s, b.p95_s), ("p99", a.p99_s, b.p99_s)):
            error = relative_error(y, x)
            if lane == TOTAL:
                worst[figure] = error
            cells.append(f"{x * 1e3:.1f} | {y * 1e3:.1f} | {error:.1%}")
        cells.append(f"{refused_share(real, lane):.1%} | {refused_share(sim, lane):.1%}")
        table.add_row(lane, *cells)
    console.print(table)
    live_cost, sim_cost = float(np.nansum(real.cost_usd)), float(np.nansum(sim.cost_usd))
    worst["cost"] = relative_error(sim_cost, live_cost)
    console.print(
        f"cost the router attributed: live ${live_cost:.6f} | simulated ${sim_cost:.6f} ({worst['cost']:.1%})"
    )
    starts = [
        [d["at_s"] for d in run if d["kind"] in ("TransitionStarted", "TransitionCompleted")]
        for run in (real.decisions, sim.decisions)
    ]
    worst["transitions"] = (
        math.inf
        if len(starts[0]) != len(starts[1])
        else max((abs(x - y) / tick_s for x, y in zip(*starts, strict=True)), default=0.0)
    )
    return worst


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=40.0, help="length of each scenario's trace")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--only", choices=SCENARIOS, action="append")
    args = parser.parse_args()
    proxy_cpu, _ = cpus()
    if proxy_cpu:  # the router and the client on the first core, the upstreams on the others
        os.sched_setaffinity(0, {int(proxy_cpu[-1])})
    console = Console(width=160)
    tick_s = contender_config("shipped", {"realtime": "http://a:1", "batch": "http://b:2"}).switching.tick_s
    summary = Table(title=f"worst error per scenario (target: {TARGET:.0%}, transitions within one tick)")
    for column in ("scenario", "requests", "p50", "p95", "p99", "cost", "transitions (ticks)", "within"):
        summary.add_column(column, justify="left" if column == "scenario" else "right")
    hop_s = run_uvloop(measured_hop_s(args.seed))
    console.print(f"the hop (router, network, upstream HTTP and timer) beyond the service model: {hop_s * 1e3:.2f} ms")
    for name in args.only or SCENARIOS:
        trace = scenario(name, args.seconds, args.seed)
        began = time.perf_counter()
        real, decisions = run_uvloop(live(trace, args.seed))
        sim = simulated(trace, args.seed, hop_s)
        console.print(f"{name}: {len(trace):,} requests, live run {time.perf_counter() - began:.0f} s")
        console.print(decision_table(decisions, sim.decisions))
        worst = compare(console, name, replace(real, decisions=decisions), sim, tick_s)
        within = all(worst[k] <= TARGET for k in ("p50", "p95", "cost")) and worst["transitions"] <= 1.0
        summary.add_row(
            name,
            f"{len(trace):,}",
            *(f"{worst[k]:.1%}" for k in ("p50", "p95", "p99", "cost")),
            f"{worst['transitions']:.2f}",
            "yes" if within else "no",
        )
    console.print(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
