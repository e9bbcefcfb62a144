"""Traces: requests with arrival times, read from the formats users have.

A trace is a list of TraceRequest sorted by arrival `t_s`, seconds from the
first request. Readers here: the Azure LLM inference CSV
(`TIMESTAMP,ContextTokens,GeneratedTokens`). `bundled_azure_slice()` is the
slice shipped with modeshift as package data: the first 3,000 requests (about
10.5 minutes) of the Azure LLM inference trace 2023, conversation service
(Microsoft, Azure Public Dataset, CC-BY-4.0), so the demo and the tests run
without ../shared.

`with_rush` compresses the arrivals between two indices, turning a quiet
stretch into a rush: the shape the demo and the tests use to make a policy
move traffic to batch and back.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, replace
from datetime import datetime
from importlib import resources
from pathlib import Path


@dataclass(frozen=True, slots=True)
class TraceRequest:
    t_s: float
    input_tokens: int
    output_tokens: int


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
