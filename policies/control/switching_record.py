"""The switching controller's state as plain data: what a new leader needs to carry on where the last left off.

`SwitchingController.record()` writes it; `restore(record, snapshot)` reads it
back into another controller with the same modes (router.cluster keeps it
in Redis with its fencing epoch). Everything is kept: the state, the mode,
the weights in force, a transition under way (its modes, its baseline and
target weights, its step, and the evidence its steps are compared with),
the undo of the last transition, a proposal being held and the cooldown.

What is not kept is what only means something to the windows of the
controller that wrote it: the cumulative marks a step's evidence is counted
from. A restored transition starts its current step's evidence and clock
again from the new leader's snapshot (no data is never a promotion), and
keeps the evidence from before the step, which is window totals and means
the same to anyone.

Times are the control clock's seconds (router: in a cluster, wall-clock
seconds, the same on every replica). Pure: no clock, no I/O.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from policies.control import stream_health as health
from policies.control.protocol import Proposal
from policies.control.replicas import totals_from, totals_record
from policies.control.switching_table import Ramp, State, Undo
from policies.control.weights import Weights

VERSION = 1


class Restored(NamedTuple):
    state: State
    mode: str | None
    weights: Weights
    transition: Ramp | None
    undo: Undo | None
    hold: Proposal | None
    hold_since_s: float
    cooldown_until_s: float | None


def _weights(weights: Weights) -> dict[str, Any]:
    return {"lanes": list(weights.lanes), "weights": weights.as_dict()}


def _weights_from(record: dict[str, Any]) -> Weights:
    return Weights(record["weights"], tuple(record["lanes"]))


def _evidence(evidence: health.Evidence) -> list[list[Any]]:
    return [[traffic_class, lane, totals_record(totals)] for (traffic_class, lane), totals in evidence.items()]


def _evidence_from(record: list[list[Any]]) -> health.Evidence:
    return {(traffic_class, lane): totals_from(totals) for traffic_class, lane, totals in record}


def record_of(
    state: State,
    mode: str | None,
    weights: Weights,
    transition: Ramp | None,
    undo: Undo | None,
    hold: Proposal | None,
    hold_since_s: float,
    cooldown_until_s: float | None,
) -> dict[str, Any]:
    out: dict[str, Any] = {
        "version": VERSION,
        "state": state.value,
        "mode": mode,
        "weights": _weights(weights),
        "transition": None,
        "undo": None,
        "hold": hold.as_record() if hold is not None else None,
        "hold_since_s": hold_since_s,
        "cooldown_until_s": cooldown_until_s,
    }
    if transition is not None:
        t = transition
        out["transition"] = {
            "from_mode": t.from_mode,
            "to_mode": t.to_mode,
            "cause": t.cause,
            "baseline": _weights(t.baseline),
            "target": _weights(t.target),
            "gaining": list(t.gaining),
            "losing": list(t.losing),
            "started_s": t.started_s,
            "step_index": t.step_index,
            "before": _evidence(t.before),
            "withheld": t.withheld,
        }
    if undo is not None:
        out["undo"] = {"from_mode": undo.from_mode, "to_mode": undo.to_mode, "baseline": _weights(undo.baseline)}
    return out


def read(record: dict[str, Any]) -> Restored:
    """The controller state a `record_of` dict stands for; ValueError when it is of another version."""
    if record.get("version") != VERSION:
        raise ValueError(f"controller record version {record.get('version')!r}; this code reads {VERSION}")
    transition = None
    if (t := record["transition"]) is not None:
        transition = Ramp(
            from_mode=t["from_mode"],
            to_mode=t["to_mode"],
            cause=t["cause"],
            baseline=_weights_from(t["baseline"]),
            target=_weights_from(t["target"]),
            gaining=tuple(t["gaining"]),
            losing=tuple(t["losing"]),
            started_s=float(t["started_s"]),
            step_index=int(t["step_index"]),
            before=_evidence_from(t["before"]),
            withheld=bool(t["withheld"]),
        )
    undo = None
    if (u := record["undo"]) is not None:
        undo = Undo(u["from_mode"], u["to_mode"], _weights_from(u["baseline"]))
    hold = None
    if (h := record["hold"]) is not None:
        hold = Proposal(h["target_mode"], h["reason"], h["policy"], h["figures"], h["hold_s"])
    return Restored(
        State(record["state"]),
        record["mode"],
        _weights_from(record["weights"]),
        transition,
        undo,
        hold,
        float(record["hold_since_s"]),
        record["cooldown_until_s"],
    )


def shifted(record: dict[str, Any], by_s: float) -> dict[str, Any]:
    """The same record with every time in it moved by `by_s` seconds: from one clock's seconds to another's.

    A replica measures with its own monotonic clock and shares wall-clock
    seconds (router.cluster): it shifts a record by (wall - monotonic) to
    write it and back to read it, so a step of a host's wall clock never
    stretches or freezes its own control.
    """
    out = dict(record)
    out["hold_since_s"] = float(record["hold_since_s"]) + by_s
    if record["cooldown_until_s"] is not None:
        out["cooldown_until_s"] = float(record["cooldown_until_s"]) + by_s
    if record["transition"] is not None:
        out["transition"] = {**record["transition"], "started_s": float(record["transition"]["started_s"]) + by_s}
    return out
