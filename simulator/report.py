"""Writing a simulation down: the comparison table, per-request CSV, the decision log.

- `comparison_table`: a rich Table, one row per contender (the config's
  policy, each --policy, the always-<mode> baselines, the oracle), with the
  totals, the SLO attainment per class, cost, saving against the first
  baseline, transitions and rollbacks.
- `lane_table`: one contender's figures per lane and in total.
- `write_requests_csv`: one row per request (arrival, lane, status,
  latency, cost, pinned, met, route, time to first token, and the replica
  that took it where the run modelled replicas), the format `modeshift replay` writes
  too, so a simulated and a live run compare line by line, and say which
  request path each played.
- `write_decisions`: JSON Lines, one `Action.as_record()` per line, the
  format of the router's GET /decisions.

What must not live here: running anything (simulator.engine, .compare).
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from rich.table import Table

from policies.control.actions import plain
from simulator.outcome import NO_LANE, NO_REPLICA, TOTAL, Outcome, Row, SloTargets, Summary

REQUEST_COLUMNS = (
    "arrival_s",
    "lane",
    "status",
    "latency_s",
    "cost_usd",
    "pinned",
    "met_slo",
    "route",
    "ttft_s",
    "replica",
)


def comparison_table(summaries: Mapping[str, Summary], slo: SloTargets, baseline: str | None = None) -> Table:
    table = Table(title=f"policies compared (SLO: pinned {_ms(slo.pinned_s)}, switchable {_ms(slo.switchable_s)})")
    table.add_column("contender", no_wrap=True)
    figures = ("requests", "p50", "p95", "p99", "SLO pinned", "SLO switchable", "replica-h", "cost", "per 1k", "saving")
    for name in figures:
        table.add_column(name, justify="right", no_wrap=True)
    table.add_column("transitions", justify="right")
    table.add_column("rollbacks", justify="right")
    base = summaries[baseline].total.cost_usd if baseline is not None and baseline in summaries else math.nan
    for label, summary in summaries.items():
        row = summary.total
        saving = 1.0 - row.cost_usd / base if base > 0 else math.nan
        table.add_row(
            label,
            f"{row.requests:,}",
            *_latencies(row),
            _attainment(row.slo_pinned, slo),
            _attainment(row.slo_switchable, slo),
            _replica_hours(row),
            _usd(row.cost_usd),
            _usd(row.cost_per_1k_usd),
            "-" if math.isnan(saving) else f"{saving:+.1%}",
            str(summary.transitions),
            str(summary.rollbacks),
        )
    return table


def _replica_hours(row: Row) -> str:
    return "-" if math.isnan(row.replica_hours) else f"{row.replica_hours:,.2f}"


def lane_table(summary: Summary, slo: SloTargets) -> Table:
    table = Table(title=f"{summary.label}: per lane")
    columns = (
        "lane",
        "requests",
        "errors",
        "p50",
        "p95",
        "p99",
        "SLO pinned",
        "SLO switchable",
        "replica-h",
        "cost",
        "per 1k",
    )
    for name in columns:
        table.add_column(name, justify="left" if name == "lane" else "right", no_wrap=True)
    for lane, row in summary.rows.items():
        table.add_row(
            f"[bold]{lane}[/bold]" if lane == TOTAL else lane,
            f"{row.requests:,}",
            f"{row.errors:,}",
            *_latencies(row),
            _attainment(row.slo_pinned, slo),
            _attainment(row.slo_switchable, slo),
            _replica_hours(row),
            _usd(row.cost_usd),
            _usd(row.cost_per_1k_usd),
        )
    return table


def write_requests_csv(
    outcome: Outcome, slo: SloTargets, path: str | Path, routes: Sequence[str], ttft_s: Sequence[float] = ()
) -> None:
    """One row per request; `routes`: the path each request took, in the outcome's order; `ttft_s`: a streamed
    answer's time to its first token (empty where there is none, as in a simulation)."""
    met = outcome.met(slo)
    names = (*outcome.lanes, "")
    replica = outcome.replica if outcome.replica is not None else np.full(len(outcome), NO_REPLICA)
    with open(path, "w", newline="", encoding="utf-8") as f:
        out = csv.writer(f)
        out.writerow(REQUEST_COLUMNS)
        for i in range(len(outcome)):
            lane = int(outcome.lane[i])
            out.writerow(
                (
                    f"{outcome.arrival_s[i]:.6f}",
                    names[lane] if lane != NO_LANE else "",
                    int(outcome.status[i]),
                    f"{outcome.latency_s[i]:.6f}",
                    "" if math.isnan(outcome.cost_usd[i]) else f"{outcome.cost_usd[i]:.9f}",
                    int(outcome.pinned[i]),
                    int(met[i]),
                    routes[i],
                    f"{ttft_s[i]:.6f}" if i < len(ttft_s) and not math.isnan(ttft_s[i]) else "",
                    int(replica[i]) if replica[i] != NO_REPLICA else "",
                )
            )


def write_decisions(decisions: Iterable[dict[str, Any]], path: str | Path) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for record in decisions:
            f.write(json.dumps(plain(record), allow_nan=False) + "\n")


def _latencies(row: Row) -> tuple[str, str, str]:
    return _ms(row.p50_s), _ms(row.p95_s), _ms(row.p99_s)


def _usd(dollars: float) -> str:
    """A figure that does not exist (per 1k of no requests, a cost nobody reported) is "-", never "$nan"."""
    return "-" if math.isnan(dollars) else f"${dollars:,.4f}"


def _ms(seconds: float) -> str:
    if math.isnan(seconds):
        return "-"
    if math.isinf(seconds):
        return "no latency target"
    if seconds >= 60:
        return f"{seconds / 60:.1f} min"
    return f"{seconds:.2f} s" if seconds >= 1 else f"{seconds * 1000:.0f} ms"


def _attainment(share: float, slo: SloTargets) -> str:
    if math.isnan(share):
        return "-"
    text = f"{share:.2%}"
    return text if share >= slo.attainment else f"[red]{text}[/red]"
