"""Plots of simulated runs: arrival rate, weights, latency, replicas and cumulative cost over time.

One PNG per contender (panels sharing the time axis, from the outcome's
per-tick timeline; the replicas panel where the run counted them) and one that overlays every contender's
cumulative cost. matplotlib is the `plots` extra; without it, `plot_runs`
raises PlotsUnavailable naming the pip command.

What must not live here: figures (simulator.outcome), running anything.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from types import ModuleType

import numpy as np

from simulator.outcome import Outcome


class PlotsUnavailable(RuntimeError):
    pass


def plot_runs(outcomes: Mapping[str, Outcome], directory: str | Path) -> list[Path]:
    """Write the plots into `directory` (created); the paths written."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise PlotsUnavailable('plots need matplotlib: pip install "modeshift[plots]"') from None
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for label, outcome in outcomes.items():
        if not outcome.timeline:
            continue  # the oracle is stitched from windows: it has no ticks of its own
        written.append(_one_run(plt, label, outcome, directory / f"{_slug(label)}.png"))
    written.append(_costs(plt, outcomes, directory / "cumulative-cost.png"))
    return written


def _one_run(plt: ModuleType, label: str, outcome: Outcome, path: Path) -> Path:
    rows = outcome.timeline
    t = np.array([r.t_s for r in rows])
    counted = bool(rows and rows[0].replicas)
    panels = 5 if counted else 4
    fig, axes = plt.subplots(panels, 1, sharex=True, figsize=(9, 2.25 * panels), constrained_layout=True)
    rate, weights, latency, *more, cost = axes
    fig.suptitle(f"{label}: {len(outcome):,} requests")
    if counted:
        (replicas,) = more
        for k, lane in enumerate(outcome.lanes):
            replicas.step(t, [r.replicas[k] for r in rows], where="post", label=lane)
        replicas.set_ylabel("replicas paid")
    rate.plot(t, [r.arrival_rate_per_s for r in rows], color="black")
    rate.set_ylabel("arrivals / s")
    for k, lane in enumerate(outcome.lanes):
        weights.plot(t, [r.weights[k] for r in rows], label=lane)
        latency.plot(t, [r.p95_s[k] for r in rows], label=lane)
        cost.plot(t, [r.cost_usd[k] for r in rows], label=lane)
    weights.set_ylabel("weight")
    weights.set_ylim(-0.05, 1.05)
    weights.legend(loc="upper right")
    latency.set_ylabel("p95 latency (s)")
    latency.set_yscale("log")
    cost.set_ylabel("cumulative USD")
    cost.set_xlabel("time (s)")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _costs(plt: ModuleType, outcomes: Mapping[str, Outcome], path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(9, 4.5), constrained_layout=True)
    for label, outcome in outcomes.items():
        order = np.argsort(outcome.arrival_s, kind="stable")
        ax.plot(outcome.arrival_s[order], np.cumsum(outcome.cost_usd[order]), label=label)
    ax.set_title("variable cost by arrival time (provisioned cost excluded)")
    ax.set_xlabel("time (s)")
    ax.set_ylabel("cumulative USD")
    ax.legend()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _slug(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", label).strip("_") or "run"
