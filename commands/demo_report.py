"""The demo's report folder: what the router decided, what every request got, and pictures of it.

- `decisions.jsonl`: every decision the router logged, timed from the start
  of the replay (`t`), in the format of the admin API's GET /decisions;
- `requests.csv`: one row per request, the simulator's per-request format
  (simulator.report), with the cost the router attributed to each;
- PNG plots of arrival rate, weights, p95 and cumulative cost per lane over
  the run, drawn by the simulator's plotting code (simulator.plots) from
  the router's own history (GET /history, one sample per control tick).

What must not live here: running the demo (commands.demo).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from commands.replay import Result, as_outcome
from simulator.outcome import SloTargets, TimelineRow
from simulator.plots import PlotsUnavailable, plot_runs
from simulator.report import write_decisions, write_requests_csv
from simulator.traces import TraceRequest


def write_report(
    out: Path,
    trace: Sequence[TraceRequest],
    results: Sequence[Result],
    decisions: list[dict[str, Any]],
    history: list[dict[str, Any]],
    began_s: float,
) -> int:
    """Write the folder; how many plots it holds (none without matplotlib: the `plots` extra)."""
    out.mkdir(parents=True, exist_ok=True)
    write_decisions(decisions, out / "decisions.jsonl")
    outcome = as_outcome(trace, results)
    write_requests_csv(
        outcome, SloTargets(), out / "requests.csv", [r.route for r in results], [r.ttft_s for r in results]
    )
    live = replace(outcome, timeline=timeline(history, outcome.lanes, began_s), decisions=decisions)
    try:
        return len(plot_runs({"demo": live}, out))
    except PlotsUnavailable:
        return 0


def timeline(history: list[dict[str, Any]], lanes: Sequence[str], began_s: float) -> list[TimelineRow]:
    """The router's per-tick history as the simulator's timeline: times from `began_s`, cost cumulated."""
    rows, spent, last_s = [], dict.fromkeys(lanes, 0.0), None
    for sample in history:
        at_s = sample["at_s"]
        if at_s < began_s:
            continue
        figures = sample["lanes"]
        for lane in lanes:
            if last_s is not None and lane in figures:
                spent[lane] += figures[lane]["cost_per_s"] * (at_s - last_s)
        last_s = at_s
        rows.append(
            TimelineRow(
                t_s=at_s - began_s,
                arrival_rate_per_s=sum(f["rate_per_s"] for f in figures.values()),
                weights=tuple(figures.get(lane, {}).get("weight", 0.0) for lane in lanes),
                p95_s=tuple(_seconds(figures.get(lane, {}).get("p95_ms")) for lane in lanes),
                cost_usd=tuple(spent[lane] for lane in lanes),
            )
        )
    return rows


def _seconds(ms: float | None) -> float:
    return ms / 1000.0 if ms is not None else math.nan
