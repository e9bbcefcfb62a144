"""`modeshift simulate`: a trace, a config and policies in; one comparison table out.

    modeshift simulate --trace T -c CONFIG --service MODEL [--policy SPEC ...] [--out DIR] [--plots]

Runs the config's own policy, each `--policy` (`TYPE` or
`TYPE:key=value,...`), the always-<mode> baselines and the oracle over the
same trace with the same seeds, shows progress, prints the comparison and
the config policy's per-lane table, and with `--out` writes each
contender's per-request CSV and decision log (and plots with `--plots`).

Exit status: 0, or 2 for input that cannot be used (a config or service
model error, a trace line that cannot be read, a bad --policy), with one
line per problem on stderr.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from configs.loader import ConfigError, load_config
from configs.routes import RoutesByPrefix
from configs.schema import ModeshiftConfig
from policies.control.actions import plain
from policies.control.objectives import Objectives
from policies.units import parse_duration_s
from simulator.compare import OWN, Comparison, baseline_label, compare, variants
from simulator.outcome import SloTargets
from simulator.report import comparison_table, lane_table, write_decisions, write_requests_csv
from simulator.service import ServiceModel, check_covers, load_service_model
from simulator.traces import TraceRequest, prepared

EXIT_OK = 0
EXIT_INVALID = 2


def add_trace_arguments(parser: argparse.ArgumentParser, speed_help: str) -> None:
    """The trace and SLO options `simulate` and `replay` share (read by `prepared` and `slo_targets`)."""
    parser.add_argument("--trace", required=True, help="a trace file (JSONL, Azure CSV, Mooncake JSONL) or 'bundled'")
    parser.add_argument("--speed", type=float, default=1.0, help=speed_help)
    parser.add_argument("--slice", metavar="START:END", help="only this stretch of the trace (seconds)")
    parser.add_argument("--pinned-share", type=float, default=0.0, help="pin this share of requests to a lane")
    parser.add_argument("--pinned-lane", default="realtime", help="the lane --pinned-share pins to")
    parser.add_argument(
        "--slo-pinned", help="latency target of pinned requests (default: the config's pinned objective, else 1s)"
    )
    parser.add_argument(
        "--slo-switchable",
        help="latency target of the other requests (default: the config's switchable objective, else 30s)",
    )
    parser.add_argument(
        "--attainment", type=float, help="share of a class that must meet its target (default: the objectives')"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of service times and pinning")
    parser.add_argument(
        "--route",
        metavar="PATH",
        help="the path the trace's default-route requests take, e.g. /v1/embeddings (replay: --target's path)",
    )


def slo_targets(args: argparse.Namespace, objectives: Objectives | None = None) -> SloTargets:
    """The command line's targets, each defaulting to the config's objectives (or to SloTargets' own)."""
    base = SloTargets.of(objectives) if objectives is not None else SloTargets()
    return SloTargets(
        parse_duration_s(args.slo_pinned) if args.slo_pinned else base.pinned_s,
        parse_duration_s(args.slo_switchable) if args.slo_switchable else base.switchable_s,
        args.attainment if args.attainment is not None else base.attainment,
    )


def service_beside(config: str) -> str:
    """The service model shipped beside a config (`default.yaml` -> `default.service.yaml`); ValueError if none."""
    path = Path(config)
    beside = path.with_name(f"{path.stem}.service.yaml")
    if not beside.exists():
        raise ValueError(
            f"no service model for {config}: pass --service FILE (write one with `modeshift profile`), "
            f"or put it at {beside}"
        )
    return str(beside)


def add_input_arguments(parser: argparse.ArgumentParser, config_help: str) -> None:
    """The trace, config and service model options a simulating command reads with `read_inputs`."""
    add_trace_arguments(parser, "play the trace this many times faster")
    parser.add_argument("-c", "--config", required=True, metavar="FILE", help=config_help)
    parser.add_argument(
        "--service", metavar="FILE", help="the lanes' service model (YAML); default: CONFIG.service.yaml beside it"
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_input_arguments(parser, "the router config to simulate")
    parser.add_argument("--policy", action="append", default=[], metavar="SPEC", help="TYPE or TYPE:key=value,...")
    parser.add_argument("--oracle-window", default="60s", help="the oracle chooses a mode per window this long")
    parser.add_argument("--out", metavar="DIR", help="write per-request CSVs, decision logs and summary.json here")
    parser.add_argument("--plots", action="store_true", help="with --out: PNG plots too (needs modeshift[plots])")


@dataclass(frozen=True)
class Inputs:
    """What a simulating command (`simulate`, `plan`) reads from its command line."""

    config: ModeshiftConfig
    service: ServiceModel
    service_path: str
    trace: list[TraceRequest]
    slo: SloTargets


def read_inputs(args: argparse.Namespace) -> Inputs:
    """The config, service model, trace and targets `add_arguments`' options name, checked against each other:
    ConfigError or ValueError, with the lines to print, for what cannot be used."""
    config = load_config(args.config)
    service_path = args.service or service_beside(args.config)
    service = load_service_model(service_path)
    check_covers(service, list(config.lanes), service_path)
    trace = prepared(
        args.trace,
        window=args.slice,
        speed=args.speed,
        pinned_share=args.pinned_share,
        pinned_lane=args.pinned_lane,
        seed=args.seed,
        route=args.route or "/",
    )
    if not trace:
        raise ValueError(f"{args.trace}: no requests in the trace (after --slice)")
    routes = RoutesByPrefix(config.routes)
    unrouted = sorted({request.route for request in trace if routes.find(request.route) is None})
    if unrouted:
        raise ValueError(
            f"{args.trace}: {', '.join(unrouted)} match no route of {args.config}; "
            "give the trace's requests a path it routes with --route PATH"
        )
    return Inputs(config, service, service_path, trace, slo_targets(args, Objectives(config.objectives)))


def run(args: argparse.Namespace) -> int:
    # A pipe gets the table unwrapped (rich would fold it to 80 columns).
    console = Console(width=None if sys.stdout.isatty() else 160)
    try:
        inputs = read_inputs(args)
        window_s = parse_duration_s(args.oracle_window)
        contenders = list(variants(inputs.config, args.policy))
    except ConfigError as exc:
        return _invalid(exc.lines)
    except ValueError as exc:
        return _invalid(str(exc).splitlines())
    config, trace, slo = inputs.config, inputs.trace, inputs.slo
    console.print(
        f"{len(trace):,} requests over {trace[-1].t_s:,.0f} s; "
        f"{len(contenders)} contenders: {', '.join(contenders)}, and the oracle; service model: {inputs.service_path}"
    )
    with Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), console=console
    ) as progress:
        tasks = {label: progress.add_task(label, total=len(trace)) for label in contenders}
        result = compare(
            config,
            inputs.service,
            trace,
            policies=args.policy,
            slo=slo,
            seed=args.seed,
            window_s=window_s,
            progress=lambda label, done: progress.update(tasks[label], completed=done),
        )
    baseline = baseline_label(config.initial_mode)
    console.print(comparison_table(result.summaries, slo, baseline))
    console.print(f"saving: against {baseline}. oracle: the cheapest mode meeting the SLO per {window_s:g} s window")
    console.print(lane_table(result.summaries[OWN], slo))
    if args.out:
        _write(result, slo, Path(args.out), console, args.plots, [request.route for request in trace])
    return EXIT_OK


def _write(result: Comparison, slo: SloTargets, out: Path, console: Console, plots: bool, routes: list[str]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for label, outcome in result.outcomes.items():
        write_requests_csv(outcome, slo, out / f"requests-{_file_label(label)}.csv", routes)
        write_decisions(outcome.decisions, out / f"decisions-{_file_label(label)}.jsonl")
    summary = {
        label: {"rows": {lane: asdict(row) for lane, row in s.rows.items()}, "transitions": s.transitions}
        for label, s in result.summaries.items()
    }
    summary["oracle"]["modes_by_window"] = result.oracle_modes
    (out / "summary.json").write_text(json.dumps(plain(summary), indent=2, allow_nan=False) + "\n")  # strict JSON
    console.print(f"wrote per-request CSVs, decision logs and summary.json to {out}")
    if plots:
        from simulator.plots import PlotsUnavailable, plot_runs

        try:
            written = plot_runs(result.outcomes, out)
        except PlotsUnavailable as exc:
            console.print(escape(str(exc)), style="red")
            return
        console.print(f"wrote {len(written)} plots to {out}")


def _file_label(label: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in label)


def _invalid(lines: list[str]) -> int:
    for line in lines:
        print(line, file=sys.stderr)
    return EXIT_INVALID
