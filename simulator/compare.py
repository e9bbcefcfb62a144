"""Comparing policies on one trace: the config's own, the ones asked for, the baselines and the oracle.

`variants` builds one config per contender from the user's config, changing
only the policy (and, for a baseline, the initial mode): the config's own
policy, each `--policy` spec, and `always-<mode>` (the static policy) for
every configured mode, so always-realtime and always-batch are always there.

The oracle is the limit a policy could reach knowing the future: the trace
is cut into windows of `window_s`; in each window it takes, from the
always-<mode> runs, the cheapest mode whose requests there met the SLO
(every traffic class at or above the attainment target), or the mode that
came closest when none did. Its figures are those windows stitched
together. It ignores what a switch costs (a queue carried over, a ramp), so
it is a bound, not a plan.

What must not live here: the event loop (simulator.engine), printing
(simulator.report).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import yaml

from configs.schema import ModeshiftConfig
from policies.registry import PolicySpec
from simulator.engine import Engine
from simulator.outcome import Outcome, SloTargets, Summary, summarize
from simulator.service import ServiceModel
from simulator.traces import TraceRequest

OWN = "config"
ORACLE = "oracle"
DEFAULT_SLO = SloTargets()


def parse_policy(text: str) -> PolicySpec:
    """`TYPE` or `TYPE:key=value,key=value` (values read as YAML scalars: 5, 2s, batch)."""
    type_name, _, rest = text.partition(":")
    params = {}
    for pair in filter(None, rest.split(",")):
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--policy {text!r}: expected TYPE:key=value,key=value; {pair!r} has no '='")
        params[key.strip()] = yaml.safe_load(value)
    return PolicySpec.model_validate({"type": type_name.strip(), "params": params})


def with_policy(config: ModeshiftConfig, spec: PolicySpec, initial_mode: str | None = None) -> ModeshiftConfig:
    """`config` with another policy, validated again (so a mode it names must exist)."""
    data = config.model_dump(by_alias=True, exclude={"policy"})
    data["policy"] = {"type": spec.type, "params": spec.params.model_dump(by_alias=True)}
    if initial_mode is not None:
        data["initial_mode"] = initial_mode
    return ModeshiftConfig.model_validate(data)


def baseline_label(mode: str) -> str:
    return f"always-{mode}"


def variants(config: ModeshiftConfig, policies: Sequence[str] = ()) -> dict[str, ModeshiftConfig]:
    out = {OWN: config}
    for text in policies:
        out[text] = with_policy(config, parse_policy(text))
    for mode in config.modes:
        out[baseline_label(mode)] = with_policy(
            config, PolicySpec.model_validate({"type": "static", "params": {"mode": mode}}), mode
        )
    return out


@dataclass(frozen=True)
class Comparison:
    summaries: dict[str, Summary]  # contenders in order, then the oracle
    outcomes: dict[str, Outcome]
    oracle_modes: list[str]  # the mode the oracle chose in each window


def compare(
    config: ModeshiftConfig,
    service: ServiceModel,
    trace: Sequence[TraceRequest],
    *,
    policies: Sequence[str] = (),
    slo: SloTargets = DEFAULT_SLO,
    seed: int = 0,
    window_s: float = 60.0,
    progress: Callable[[str, int], None] | None = None,
) -> Comparison:
    outcomes = {}
    for label, variant in variants(config, policies).items():
        report = (lambda done, label=label: progress(label, done)) if progress is not None else None
        outcomes[label] = Engine(variant, service, seed=seed).run(trace, progress=report)
    by_mode = {mode: outcomes[baseline_label(mode)] for mode in config.modes}
    stitched, chosen = oracle(by_mode, slo, window_s)
    summaries = {label: summarize(outcome, slo, label) for label, outcome in outcomes.items()}
    summaries[ORACLE] = summarize(stitched, slo, ORACLE)
    summaries[ORACLE] = _with_transitions(summaries[ORACLE], sum(a != b for a, b in zip(chosen, chosen[1:])))
    outcomes[ORACLE] = stitched
    return Comparison(summaries, outcomes, chosen)


def oracle(by_mode: Mapping[str, Outcome], slo: SloTargets, window_s: float) -> tuple[Outcome, list[str]]:
    """Per window, the cheapest mode that met the SLO there; the stitched outcome and the choices."""
    first = next(iter(by_mode.values()))
    end_s = max(o.end_s for o in by_mode.values())
    n_windows = max(1, math.ceil(end_s / window_s))
    window = np.minimum((first.arrival_s // window_s).astype(np.int64), n_windows - 1)
    score = {}  # mode -> (cost per window, worst class attainment per window)
    for mode, outcome in by_mode.items():
        met = outcome.met(slo)
        idle = math.fsum(_idle_per_window(outcome, window_s).values())
        cost = np.bincount(window, weights=outcome.cost_usd, minlength=n_windows) + idle
        worst = np.ones(n_windows)
        for cls in (outcome.pinned, ~outcome.pinned):
            count = np.bincount(window[cls], minlength=n_windows)
            hits = np.bincount(window[cls], weights=met[cls], minlength=n_windows)
            share = np.divide(hits, count, out=np.ones(n_windows), where=count > 0)
            worst = np.minimum(worst, share)
        score[mode] = (cost, worst)
    chosen = []
    for w in range(n_windows):
        meeting = [m for m in by_mode if score[m][1][w] >= slo.attainment]
        if meeting:
            chosen.append(min(meeting, key=lambda m: score[m][0][w]))
        else:
            chosen.append(max(by_mode, key=lambda m: (score[m][1][w], -score[m][0][w])))
    pick = np.asarray([list(by_mode).index(m) for m in chosen])[window]
    parts = [o.select(pick == k) for k, o in enumerate(by_mode.values())]
    stitched = _concatenated(parts, first, by_mode, chosen, window_s, end_s)
    return stitched, chosen


def _concatenated(
    parts: list[Outcome],
    first: Outcome,
    by_mode: Mapping[str, Outcome],
    chosen: list[str],
    window_s: float,
    end_s: float,
) -> Outcome:
    order = np.argsort(np.concatenate([p.arrival_s for p in parts]), kind="stable")

    def joined(name: str) -> np.ndarray:
        return np.concatenate([getattr(p, name) for p in parts])[order]

    # Each lane's provisioned cost, paid per window in the mode chosen there.
    idle = {lane: 0.0 for lane in first.lanes}
    for mode in chosen:
        for lane, usd in _idle_per_window(by_mode[mode], window_s).items():
            idle[lane] += usd
    return Outcome(
        lanes=first.lanes,
        arrival_s=joined("arrival_s"),
        lane=joined("lane"),
        status=joined("status"),
        latency_s=joined("latency_s"),
        cost_usd=joined("cost_usd"),
        pinned=joined("pinned"),
        deadline_s=joined("deadline_s"),
        idle_cost_usd=idle,
        end_s=end_s,
    )


def _idle_per_window(outcome: Outcome, window_s: float) -> dict[str, float]:
    """Each lane's provisioned cost over one window of the run."""
    share = window_s / max(outcome.end_s, window_s)
    return {lane: usd * share for lane, usd in outcome.idle_cost_usd.items()}


def _with_transitions(summary: Summary, transitions: int) -> Summary:
    return Summary(summary.label, summary.rows, transitions, 0)
