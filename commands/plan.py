"""`modeshift plan`: a trace, a config and a service model in; the fleets that could serve it, side by side.

    modeshift plan --trace T -c CONFIG [--service MODEL] [--window 60s] [--out DIR]

Prints one row per fleet (simulator.plan: static peak, the best static
split, utilisation autoscaling, modeshift, the oracle): the replica-hours of
each lane, the dollars, the saving against static peak and the share of each
class that met its objective. With `--out DIR` it writes `plan.json` (the
same rows) and `keda.yaml`: a KEDA ScaledObject per autoscaled lane reading
the router's GET /capacity, its min and max replicas from the plan (the
fewest modeshift ran with, the most it or the oracle asked for), scaling
the Deployment named as the lane's upstream host (the headless Service of
deploy/kubernetes/).

Exit status: 0, or 2 for input that cannot be used (one line per problem).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml
from rich.console import Console
from rich.table import Table

from configs.loader import ConfigError
from configs.schema import ModeshiftConfig
from policies.units import parse_duration_s
from simulator.command import EXIT_INVALID, EXIT_OK, add_input_arguments, read_inputs
from simulator.outcome import SloTargets
from simulator.plan import MODESHIFT, ORACLE, Plan, plan


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_input_arguments(parser, "the router config to plan for")
    parser.add_argument("--window", default="60s", help="the oracle's window, and the static fleets' (default 60s)")
    parser.add_argument("--out", metavar="DIR", help="write plan.json and keda.yaml here")


def run(args: argparse.Namespace) -> int:
    console = Console(width=None if sys.stdout.isatty() else 160)
    try:
        inputs = read_inputs(args)
        config, trace, slo = inputs.config, inputs.trace, inputs.slo
        with console.status("planning") as status:
            result = plan(
                config,
                inputs.service,
                trace,
                slo,
                seed=args.seed,
                window_s=parse_duration_s(args.window),
                progress=lambda what: status.update(f"simulating {what}"),
            )
    except ConfigError as exc:
        return _invalid(exc.lines)
    except ValueError as exc:
        return _invalid(str(exc).splitlines())
    console.print(f"{len(trace):,} requests over {trace[-1].t_s:,.0f} s; service model: {inputs.service_path}")
    console.print(plan_table(result, slo))
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "plan.json").write_text(json.dumps(result.as_record(slo), indent=2, allow_nan=False) + "\n")
        (out / "keda.yaml").write_text(keda_manifests(config, result))
        console.print(f"wrote plan.json and keda.yaml to {out}")
    return EXIT_OK


def plan_table(result: Plan, slo: SloTargets) -> Table:
    lanes = list(dict.fromkeys(lane for fleet in result.fleets for lane in fleet.replica_hours))
    table = Table(
        title=f"fleets compared over {result.duration_s / 3600:.2f} h (target: {slo.attainment:.0%} of each class)"
    )
    table.add_column("fleet", no_wrap=True)
    for lane in lanes:
        table.add_column(f"{lane} replica-h", justify="right")
    for name in ("cost", "saving", "SLO pinned", "SLO switchable"):
        table.add_column(name, justify="right", no_wrap=True)
    table.add_column("replicas")
    for fleet in result.fleets:
        table.add_row(
            fleet.label,
            *(f"{fleet.replica_hours[lane]:.2f}" if lane in fleet.replica_hours else "-" for lane in lanes),
            f"${fleet.cost_usd:,.2f}",
            f"{result.saving(fleet):+.1%}",
            *(_attainment(fleet.attainment[c], slo) for c in ("pinned", "switchable")),
            fleet.how,
        )
    return table


def keda_manifests(config: ModeshiftConfig, result: Plan) -> str:
    """A ScaledObject per autoscaled lane, with the plan's min and max (see the module docstring)."""
    by_label = {f.label: f for f in result.fleets}
    admin_port = config.server.admin_listen.rpartition(":")[2]
    docs: list[dict[str, Any]] = [
        {
            "apiVersion": "keda.sh/v1alpha1",
            "kind": "TriggerAuthentication",
            "metadata": {"name": "modeshift-admin"},
            "spec": {"secretTargetRef": [{"parameter": "token", "name": "modeshift-admin", "key": "token"}]},
        }
    ]
    for name, lane in config.lanes.items():
        if lane.autoscale is None or name not in by_label[MODESHIFT].replicas:
            continue
        fewest, most = by_label[MODESHIFT].replicas[name]
        most = max(most, by_label[ORACLE].replicas.get(name, (0, 0))[1])
        target = urlsplit(lane.upstreams[0]).hostname or name
        docs.append(
            {
                "apiVersion": "keda.sh/v1alpha1",
                "kind": "ScaledObject",
                "metadata": {"name": target.split(".")[0]},
                "spec": {
                    "scaleTargetRef": {"name": target.split(".")[0]},
                    "minReplicaCount": max(fewest, lane.autoscale.min),
                    "maxReplicaCount": max(most, 1),
                    "pollingInterval": 15,
                    "advanced": {
                        "horizontalPodAutoscalerConfig": {
                            "behavior": {
                                "scaleUp": {"stabilizationWindowSeconds": 0},
                                "scaleDown": {"stabilizationWindowSeconds": 0},
                            }
                        }
                    },
                    "triggers": [
                        {
                            "type": "metrics-api",
                            "metricType": "AverageValue",
                            "metadata": {
                                "url": f"http://modeshift:{admin_port}/capacity",
                                "valueLocation": f"lanes.{name}.desired",
                                "targetValue": "1",
                                "authMode": "bearer",
                            },
                            "authenticationRef": {"name": "modeshift-admin"},
                        }
                    ],
                },
            }
        )
    header = (
        "# Written by `modeshift plan`: KEDA acts on the router's figure (GET /capacity), within the plan's\n"
        "# min and max. The router damps its figure itself, so the HPA adds no window of its own.\n"
    )
    return header + yaml.safe_dump_all(docs, sort_keys=False)


def _attainment(share: float, slo: SloTargets) -> str:
    if math.isnan(share):
        return "-"
    mark = "" if share >= slo.attainment else " (missed)"
    return f"{share:.2%}{mark}"


def _invalid(lines: list[str]) -> int:
    for line in lines:
        print(line, file=sys.stderr)
    return EXIT_INVALID
