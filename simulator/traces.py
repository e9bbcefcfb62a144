"""Traces: requests with arrival times, read from the formats users have.

A trace is a list of TraceRequest sorted by arrival `t_s`, seconds from the
first request. Formats (`load_trace` picks by content):
- our JSONL: one object per line with `t` (seconds), `route`, `input_tokens`,
  `output_tokens` or `items`, and optionally `mode` (a pinned lane),
  `deadline_ms` and `id`;
- the Azure LLM inference CSV (`TIMESTAMP,ContextTokens,GeneratedTokens`);
- the Mooncake JSONL (`timestamp` in ms, `input_length`, `output_length`).
A line that cannot be read is a ValueError naming the file, the line and the
field.

`bundled_azure_slice()` is the slice shipped with modeshift as package data:
the first 3,000 requests (about 10.5 minutes) of the Azure LLM inference
trace 2023, conversation service (Microsoft, Azure Public Dataset,
CC-BY-4.0), so the demo and the tests run without ../shared.

Transforms return new traces: `time_scaled` (faster or slower), `sliced`
(a window, re-based to 0), `with_pinned_share` (a share of requests pinned
to a lane, drawn with a seeded RNG), `with_rush` (a stretch compressed into
a rush, the shape the demo uses). Generators live in simulator.generators.
"""

from __future__ import annotations

import csv
import json
import random
from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import datetime
from importlib import resources
from pathlib import Path
from typing import Any


@dataclass(frozen=True, slots=True)
class TraceRequest:
    t_s: float
    input_tokens: int
    output_tokens: int
    route: str = "/"
    items: int = 1  # texts or rows, for protocols that count items rather than tokens
    mode: str | None = None  # the lane it is pinned to, if any
    deadline_ms: float | None = None
    id: str | None = None
    traffic_class: str | None = None  # its objectives' class ("class" in JSONL), as X-Modeshift-Priority names it

    def as_record(self) -> dict[str, Any]:
        record = {"t": self.t_s, "route": self.route, "input_tokens": self.input_tokens}
        record["output_tokens"] = self.output_tokens
        if self.items != 1:
            record["items"] = self.items
        for key in ("mode", "deadline_ms", "id"):
            if (value := getattr(self, key)) is not None:
                record[key] = value
        if self.traffic_class is not None:
            record["class"] = self.traffic_class
        return record


_FIELDS = {"t", "route", "input_tokens", "output_tokens", "items", "mode", "deadline_ms", "id", "class"}


def read_jsonl(path: str | Path) -> list[TraceRequest]:
    """Our JSONL trace format; times may start anywhere and are re-based to the first request."""
    requests = []
    for number, line in _lines(path):
        where = f"{path}:{number}"
        try:
            record = json.loads(line)
        except ValueError as exc:
            raise ValueError(f"{where}: not JSON ({exc})") from None
        if not isinstance(record, dict) or "t" not in record:
            raise ValueError(f"{where}: each line needs an arrival time t (seconds)")
        unknown = set(record) - _FIELDS
        if unknown:
            raise ValueError(f"{where}: unknown fields {sorted(unknown)}; known: {sorted(_FIELDS)}")
        try:
            requests.append(
                TraceRequest(
                    t_s=float(record["t"]),
                    input_tokens=int(record.get("input_tokens", 0)),
                    output_tokens=int(record.get("output_tokens", 0)),
                    route=str(record.get("route", "/")),
                    items=int(record.get("items", 1)),
                    mode=record.get("mode"),
                    deadline_ms=float(record["deadline_ms"]) if record.get("deadline_ms") is not None else None,
                    id=str(record["id"]) if record.get("id") is not None else None,
                    traffic_class=str(record["class"]) if record.get("class") is not None else None,
                )
            )
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{where}: {exc}") from None
    return _rebased(requests)


def write_jsonl(trace: Iterable[TraceRequest], path: str | Path) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for request in trace:
            f.write(json.dumps(request.as_record()) + "\n")


def read_mooncake(path: str | Path) -> list[TraceRequest]:
    """The Mooncake trace: `timestamp` in milliseconds, `input_length`, `output_length`."""
    requests = []
    for number, line in _lines(path):
        try:
            record = json.loads(line)
            requests.append(
                TraceRequest(record["timestamp"] / 1000.0, int(record["input_length"]), int(record["output_length"]))
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"{path}:{number}: not a Mooncake line ({exc!r})") from None
    return _rebased(requests)


def load_trace(path: str | Path) -> list[TraceRequest]:
    """Any of the three formats, told apart by the first line."""
    with open(path, encoding="utf-8") as f:
        first = f.readline()
    if first.startswith("TIMESTAMP"):
        return read_azure_csv(path)
    if '"timestamp"' in first and '"input_length"' in first:
        return read_mooncake(path)
    if first.lstrip().startswith("{"):
        return read_jsonl(path)
    raise ValueError(f"{path}: not a trace this reads (our JSONL, the Azure CSV, or the Mooncake JSONL)")


def _lines(path: str | Path) -> Iterable[tuple[int, str]]:
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if line.strip():
                yield number, line


def _rebased(requests: list[TraceRequest]) -> list[TraceRequest]:
    requests.sort(key=lambda r: r.t_s)
    origin = requests[0].t_s if requests else 0.0
    return [replace(r, t_s=r.t_s - origin) for r in requests] if origin else requests


def time_scaled(trace: list[TraceRequest], speed: float) -> list[TraceRequest]:
    """Arrivals `speed` times as fast (2.0: twice the rate, half the length)."""
    if speed <= 0:
        raise ValueError(f"speed must be positive, got {speed}")
    return [replace(r, t_s=r.t_s / speed) for r in trace]


def sliced(trace: list[TraceRequest], start_s: float, end_s: float | None = None) -> list[TraceRequest]:
    """The requests arriving in [start_s, end_s), re-based so the window starts at 0."""
    kept = [r for r in trace if r.t_s >= start_s and (end_s is None or r.t_s < end_s)]
    return [replace(r, t_s=r.t_s - start_s) for r in kept]


def with_pinned_share(
    trace: list[TraceRequest], share: float, rng: random.Random, lane: str = "realtime"
) -> list[TraceRequest]:
    """Pin about `share` of the requests not yet pinned to `lane` (a traffic class that must stay there)."""
    if not 0 <= share <= 1:
        raise ValueError(f"share must be within [0, 1], got {share}")
    return [replace(r, mode=lane) if r.mode is None and rng.random() < share else r for r in trace]


def read_azure_csv(path: str | Path) -> list[TraceRequest]:
    """The Azure LLM inference trace format (Azure Public Dataset, 2023)."""
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        return []
    missing = {"TIMESTAMP", "ContextTokens", "GeneratedTokens"} - set(rows[0])
    if missing:
        raise ValueError(f"{path}: not an Azure trace; missing columns {sorted(missing)}")
    # Timestamps carry 7 fractional digits; datetime takes at most 6.
    stamps = [datetime.fromisoformat(r["TIMESTAMP"][:26]) for r in rows]
    origin = stamps[0]
    requests = [
        TraceRequest((stamp - origin).total_seconds(), int(r["ContextTokens"]), int(r["GeneratedTokens"]))
        for stamp, r in zip(stamps, rows)
    ]
    return sorted(requests, key=lambda r: r.t_s)


def bundled_azure_slice() -> list[TraceRequest]:
    return read_azure_csv(Path(str(resources.files("simulator").joinpath("azure_conv_slice.csv"))))


def with_rush(trace: list[TraceRequest], start: int, end: int, speedup: float) -> list[TraceRequest]:
    """The gaps between requests start..end-1 shrunk `speedup` times; later requests shift earlier."""
    out: list[TraceRequest] = []
    t = 0.0
    for i, request in enumerate(trace):
        if i:
            gap = request.t_s - trace[i - 1].t_s
            t += gap / speedup if start <= i < end else gap
        out.append(replace(request, t_s=t))
    return out


def prepared(
    source: str,
    *,
    window: str | None = None,
    speed: float = 1.0,
    pinned_share: float = 0.0,
    pinned_lane: str = "realtime",
    seed: int = 0,
    route: str = "/",
) -> list[TraceRequest]:
    """A trace as the commands take it: a file or "bundled", then `START:END`, speed and a pinned share; the
    requests on the default route "/" take `route` (the path a replay sends them to)."""
    trace = bundled_azure_slice() if source == "bundled" else load_trace(source)
    if window:
        start, _, end = window.partition(":")
        trace = sliced(trace, float(start or 0), float(end) if end else None)
    if speed != 1.0:
        trace = time_scaled(trace, speed)
    if pinned_share:
        trace = with_pinned_share(trace, pinned_share, random.Random(seed), pinned_lane)
    if route != "/":
        trace = [replace(request, route=route) if request.route == "/" else request for request in trace]
    return trace
