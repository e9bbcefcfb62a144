"""`modeshift demo`: the live stack on loopback, a real trace with a rush, and what it cost.

Starts the realtime and the batch reference backends and the router with
configs/default.yaml (commands.demo_stack), replays the bundled slice of the
Azure LLM trace (2023) with its timing, a rush in the middle (commands.replay),
and shows the router's mode and the requests per lane as it goes, with the
status page's address and its token. Then it prints the requests per lane,
every transition with its reason, p50/p95/p99 per lane as the client saw
them, and the cost per 1,000 requests against sending everything to the
realtime lane, and writes a report folder (`DemoOptions.out`): the
decisions, the per-request CSV, and plots of arrival rate, weights, p95 and
cumulative cost per lane (simulator.plots, from the router's own history).
Run from a terminal, the stack stays up for the status page until Enter (or
`linger` seconds). Everything it started is stopped at the end, also on
Ctrl-C.
"""

from __future__ import annotations

import asyncio
import json
import signal
import statistics
import sys
import time
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import aiohttp
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from commands.demo_report import write_report
from commands.demo_stack import LocalStack
from commands.replay import Result, replay
from configs import ready_config_path
from simulator.traces import TraceRequest, bundled_azure_slice, with_rush


@dataclass(frozen=True)
class Schedule:
    """The slice at its own rate (about 5 req/s), then a rush `speedup` times faster, then calm again."""

    calm_s: float = 10.0
    rush_s: float = 25.0
    speedup: float = 8.0
    length_s: float = 95.0

    def trace(self) -> tuple[list[TraceRequest], int, int]:
        """The requests to send, and where the rush starts and ends (indices)."""
        trace = bundled_azure_slice()
        start = next(i for i, r in enumerate(trace) if r.t_s >= self.calm_s)
        rush_end_t = trace[start].t_s + self.rush_s * self.speedup
        end = next((i for i, r in enumerate(trace) if r.t_s >= rush_end_t), len(trace))
        rushed = with_rush(trace, start, end, self.speedup)
        return [r for r in rushed if r.t_s <= self.length_s], start, end


SHOWN_DECISIONS = ("TransitionStarted", "StepAdvanced", "TransitionCompleted", "RolledBack", "Paused", "Resumed")


@dataclass(frozen=True)
class LaneFigures:
    """One lane as the client saw it: requests answered there, non-2xx among them, 2xx latency quantiles."""

    requests: int
    errors: int
    p50_ms: float
    p95_ms: float
    p99_ms: float


@dataclass(frozen=True)
class DemoReport:
    requests_sent: int
    lanes: dict[str, LaneFigures]
    transitions: list[dict[str, Any]]  # the router's decision lines, timed from the start of the replay
    cost_per_1k_usd: float | None  # attributed, over every lane; None without realtime traffic to compare
    all_realtime_per_1k_usd: float | None  # the realtime lane's observed cost per request, for everything
    status_page: str = ""  # its address, with the admin token the page needs


@dataclass(frozen=True)
class DemoOptions:
    config: Path | None = None  # default: the ready configs/default.yaml
    out: Path | None = Path("demo-report")  # the report folder; None: none written
    linger_s: float | None = None  # after the replay, keep the stack up this long; None: until Enter, if a terminal


def run_demo(schedule: Schedule = Schedule(), options: DemoOptions = DemoOptions()) -> int:
    """The demo as a command: 0 once the report is printed, 130 on Ctrl-C."""
    try:
        play_demo(schedule, Console(), options)
    except KeyboardInterrupt:
        return 130
    return 0


QUIET = DemoOptions(out=None, linger_s=0)  # no report folder, no waiting: for tests and benchmarks


def play_demo(schedule: Schedule, console: Console, options: DemoOptions = QUIET) -> DemoReport:
    """Start the stack, replay the schedule through it, stop it; print the report as it goes, and return it."""
    config_path = options.config or ready_config_path("default")
    trace, start, end = schedule.trace()
    rush_from, rush_to = trace[start].t_s, trace[min(end, len(trace)) - 1].t_s
    console.print(f"[bold]modeshift demo[/bold]  config {config_path}")
    console.print(
        f"trace  {len(trace):,} requests of the Azure LLM trace (2023) over {trace[-1].t_s:.0f} s; "
        f"a rush of {schedule.speedup:g}x from {rush_from:.0f} s to {rush_to:.0f} s"
    )
    stack = LocalStack(config_path)
    # SIGTERM (a supervisor, a killed `make`) unwinds like Ctrl-C, so the
    # children are stopped by the `finally` below rather than left running.
    previous = signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        with console.status("starting two reference backends (loading the model) and the router..."):
            stack.start()
        status_page = f"{stack.admin_url}/#token={stack.token}"
        console.print(f"router {stack.data_url}  status page {status_page}")
        began = time.monotonic()
        results, status, history = asyncio.run(_drive(stack, trace, console))
        _linger(console, options.linger_s)
        stack.stop()
        decisions = _decisions(stack, began)
        transitions = [d for d in decisions if d["kind"] in SHOWN_DECISIONS]
        report = replace(_figures(len(trace), results, transitions, status), status_page=status_page)
        _print(console, report)
        if options.out is not None:
            written = write_report(options.out, trace, results, decisions, history, began)
            console.print(f"wrote the decisions, the per-request CSV and {written} plots to {options.out}/")
        return report
    except KeyboardInterrupt:
        console.print("interrupted: stopping the backends and the router")
        raise
    finally:
        stack.stop()
        stack.cleanup()
        signal.signal(signal.SIGTERM, previous)


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def _linger(console: Console, linger_s: float | None) -> None:
    """Keep the stack (and its status page) up: `linger_s` seconds, or until Enter when run from a terminal."""
    if linger_s is None and sys.stdin.isatty():
        console.print("the status page stays up: press Enter to stop")
        sys.stdin.readline()
    elif linger_s:
        console.print(f"the status page stays up for {linger_s:g} s")
        time.sleep(linger_s)


async def _drive(
    stack: LocalStack, trace: list[TraceRequest], console: Console
) -> tuple[list[Result], dict[str, Any], list[Any]]:
    """Replay `trace` with a live progress line; the results, the router's final status and its history."""
    served: Counter[str] = Counter()
    columns = (BarColumn(bar_width=20), TimeElapsedColumn(), TextColumn("{task.fields[state]}"))
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task("", total=trace[-1].t_s, state="")

        def counted(result: Result) -> None:
            served[result.lane or "error"] += 1

        sending = asyncio.create_task(replay(f"{stack.data_url}/v1/embeddings", trace, on_result=counted))
        began = time.monotonic()
        async with aiohttp.ClientSession() as session:
            while not sending.done():
                status = await stack.status(session)
                progress.update(
                    task, completed=min(time.monotonic() - began, trace[-1].t_s), state=_state(status, served)
                )
                await asyncio.wait({sending}, timeout=1.0)
            status = await stack.status(session)
            progress.update(task, state=_state(status, served))  # the last answers too: the table's own counts
            history = json.loads(await stack.admin_get(session, "/history"))["samples"]
        progress.update(task, completed=trace[-1].t_s)
        return sending.result(), status, history


def _state(status: dict[str, Any], served: Counter[str]) -> str:
    weights = " ".join(f"{lane} {w:.0%}" for lane, w in status["weights"].items())
    lanes = " ".join(f"{lane} {n}" for lane, n in sorted(served.items()))
    return f"{status['mode'] or 'moving'}: {weights} | served {lanes}"


def _decisions(stack: LocalStack, began_s: float) -> list[dict[str, Any]]:
    """The router's decision lines, timed from the start of the replay."""
    out = []
    for line in stack.router_log.read_text(errors="replace").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if record.get("event") == "decision":
            out.append({**record, "t": record["at_s"] - began_s})
    return out


def _quantiles_ms(latencies: list[float]) -> tuple[float, float, float]:
    if len(latencies) < 2:
        value = latencies[0] * 1e3 if latencies else float("nan")
        return value, value, value
    q = statistics.quantiles(latencies, n=100, method="inclusive")
    return q[49] * 1e3, q[94] * 1e3, q[98] * 1e3


def _figures(sent: int, results: list[Result], decisions: list[dict[str, Any]], status: dict[str, Any]) -> DemoReport:
    by_lane: dict[str, list[Result]] = {}
    for r in results:
        by_lane.setdefault(r.lane or "(none)", []).append(r)
    lanes = {}
    for lane, rs in sorted(by_lane.items()):
        p50, p95, p99 = _quantiles_ms([r.latency_s for r in rs if 200 <= r.status < 300])
        errors = sum(1 for r in rs if not 200 <= r.status < 300)
        lanes[lane] = LaneFigures(len(rs), errors, p50, p95, p99)
    totals = {name: lane["since_start"] for name, lane in status["lanes"].items()}
    total_cost = sum(lane["cost_usd"] for lane in totals.values())
    total_requests = sum(lane["requests"] for lane in totals.values())
    realtime = totals.get("realtime", {"requests": 0, "cost_usd": 0.0})
    actual = all_realtime = None
    if total_requests and realtime["requests"]:
        actual = total_cost / total_requests * 1000
        all_realtime = realtime["cost_usd"] / realtime["requests"] * 1000
    return DemoReport(sent, lanes, decisions, actual, all_realtime)


def _print(console: Console, report: DemoReport) -> None:
    console.print()
    console.print("[bold]transitions[/bold]")
    for d in report.transitions:
        target = d.get("to_mode") or d.get("mode") or ""
        console.print(f"  t={d['t']:6.1f}s  {d['kind']:<20} {target:<9} {d.get('reason', '')}")
    if not report.transitions:
        console.print("  none: the policy kept the initial mode")

    table = Table(title="requests per lane, as the client saw them")
    for column in ("lane", "requests", "share", "errors", "p50 ms", "p95 ms", "p99 ms"):
        table.add_column(column, justify="right" if column != "lane" else "left")
    answered = sum(lane.requests for lane in report.lanes.values())
    for name, lane in report.lanes.items():
        share = f"{lane.requests / answered:.1%}"
        table.add_row(
            name,
            f"{lane.requests:,}",
            share,
            str(lane.errors),
            f"{lane.p50_ms:.0f}",
            f"{lane.p95_ms:.0f}",
            f"{lane.p99_ms:.0f}",
        )
    console.print()
    console.print(table)

    console.print()
    if report.cost_per_1k_usd is not None and report.all_realtime_per_1k_usd:
        actual, all_realtime = report.cost_per_1k_usd, report.all_realtime_per_1k_usd
        console.print(
            f"cost per 1k requests: ${actual:.4f} with modeshift, ${all_realtime:.4f} all on the realtime lane "
            f"(at its observed cost per request): {1 - actual / all_realtime:.0%} saved"
        )
    console.print("costs are the router's attributed costs (configs/default.yaml prices, busy-second billing)")
