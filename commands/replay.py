"""Sending a trace to a live router with its timing: open loop, one result per request.

Each trace request becomes an embeddings request whose text has about as
many words as the trace's input tokens suggest (clamped, so a CPU model can
keep up), or with `protocol="openai-chat"` a chat completion of such a
prompt asking for the trace's output tokens (`max_tokens`; streamed when
asked, with the time to the first token recorded). It is sent at its
arrival time (divided by `speed`) however slow earlier answers are (open
loop: a slow server meets the load the trace describes, not less). A
request on the default route "/" goes to `url`; one with its own route goes
to that path on the same host. Each result keeps the path it went to, so
the simulation of the same run (`as_sent`, `simulate --route`) plays the
same request path. A trace's `mode` becomes X-Modeshift-Mode (a pin), its
`deadline_ms` X-Modeshift-Deadline-Ms and its class X-Modeshift-Priority:
claims the router honours only for a key its `access:` section grants them
(`$MODESHIFT_API_KEY`, sent as a bearer token; the command says how many
were dropped). A result records when it was sent, the lane that served it
(X-Modeshift-Lane), its status and latency, the tokens the answer counted,
and the cost the router attributed to it (X-Modeshift-Cost-Usd).

`modeshift replay` (`run`) shows progress and writes the results in the
simulator's per-request CSV, so a live run and a simulated one compare.

What must not live here: starting servers (commands.demo), the figures
(simulator.outcome).
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import random
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import numpy as np

from backends.modeled_server import DRAW_HEADER, draw_word
from commands.profile import answer_usage, words_text
from router.headers import (
    CLAIM_DENIED_HEADER,
    COST_HEADER,
    DEADLINE_HEADER,
    LANE_HEADER,
    MODE_HEADER,
    PRIORITY_HEADER,
)
from simulator.outcome import NO_LANE, Outcome
from simulator.traces import TraceRequest


@dataclass(frozen=True, slots=True)
class Result:
    sent_s: float  # since the replay began
    lane: str  # "" when the router did not say (an error before a lane was chosen)
    status: int  # 0 when no answer came (connection error, timeout)
    latency_s: float
    index: int = 0  # the request's place in the trace
    input_tokens: int = 0  # as the answer's usage counted them, else the words sent
    route: str = "/"  # the path it was sent to
    output_tokens: int = 0  # chat: as the answer's usage counted them, else max_tokens
    ttft_s: float = math.nan  # streamed chat: from sending to the first token
    cost_usd: float = math.nan  # what the router attributed to it (X-Modeshift-Cost-Usd); NaN when it did not say
    claims_denied: bool = False  # the router dropped its pin, class or deadline (X-Modeshift-Claim-Denied)


PROTOCOLS = ("openai-embeddings", "openai-chat")


API_KEY_VARIABLE = "MODESHIFT_API_KEY"  # the key replay sends, for the router's grants (access:)


def text_for(request: TraceRequest, rng: random.Random, *, tokens_per_word: int = 32, most_words: int = 24) -> str:
    words = min(max(request.input_tokens // tokens_per_word, 4), most_words)
    return words_text(rng, words)


def texts_for(
    trace: Sequence[TraceRequest], rng: random.Random, modeled_draws: Sequence[float] | None = None
) -> list[str]:
    """Each request's text; with `modeled_draws`, its first word carries its draw (a merged call has no header
    of its own, and keeps its first text), so the text keeps its length."""
    texts = [text_for(request, rng) for request in trace]
    if modeled_draws is None:
        return texts
    return [" ".join([draw_word(z), *text.split()[1:]]) for z, text in zip(modeled_draws, texts, strict=True)]


def body_for(
    request: TraceRequest, text: str, protocol: str, *, stream: bool = False, model: str | None = None
) -> dict[str, Any]:
    """The request a trace request becomes: an embeddings input, or a chat prompt asking for its output tokens."""
    if protocol == "openai-embeddings":
        body: dict[str, Any] = {"input": text}
    elif protocol == "openai-chat":
        body = {"messages": [{"role": "user", "content": text}], "max_tokens": max(request.output_tokens, 1)}
        if stream:
            body.update(stream=True, stream_options={"include_usage": True})
    else:
        raise ValueError(f"protocol must be one of {', '.join(PROTOCOLS)}, got {protocol!r}")
    if model is not None:
        body["model"] = model
    return body


async def replay(
    url: str,
    trace: Sequence[TraceRequest],
    *,
    seed: int = 0,
    speed: float = 1.0,
    timeout_s: float = 30.0,
    protocol: str = "openai-embeddings",
    stream: bool = False,
    model: str | None = None,
    modeled_draws: Sequence[float] | None = None,
    api_key: str | None = None,
    on_result: Callable[[Result], None] | None = None,
) -> list[Result]:
    """Send `trace` (POST, OpenAI embeddings or chat bodies) at its arrival times; results in trace order.

    `modeled_draws`: each request's standard normal draw, sent for an upstream of known service model
    (backends.modeled_server) to use for its jitter, in a header and as its text's first word (a merged
    call keeps its first text's): the simulator's draws, to compare a live run with it.
    `api_key`: sent as `Authorization: Bearer`; the router grants a trace's pins and classes by it (`access:`).
    """
    if speed <= 0:
        raise ValueError(f"speed must be positive, got {speed}")
    texts = texts_for(trace, random.Random(seed), modeled_draws)
    bodies = [body_for(request, text, protocol, stream=stream, model=model) for request, text in zip(trace, texts)]
    origin = urlsplit(url)
    results: list[Result | None] = [None] * len(trace)
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), timeout=timeout) as session:
        began = time.perf_counter()

        async def send(index: int, request: TraceRequest, body: dict[str, Any], at_s: float) -> None:
            route = request.route if request.route != "/" else (origin.path or "/")
            target = url if request.route == "/" else urlunsplit((*origin[:2], route, "", ""))
            headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
            if request.mode is not None:
                headers[MODE_HEADER] = request.mode
            if request.deadline_ms is not None:
                headers[DEADLINE_HEADER] = f"{request.deadline_ms:g}"
            if request.traffic_class is not None:
                headers[PRIORITY_HEADER] = request.traffic_class
            if modeled_draws is not None:
                headers[DRAW_HEADER] = repr(modeled_draws[index])
            started = time.perf_counter()
            prompt = body["input"] if "input" in body else body["messages"][0]["content"]
            lane, status, usage, ttft_s, cost_usd, denied = "", 0, {}, math.nan, math.nan, False
            try:
                async with session.post(target, json=body, headers=headers) as response:
                    lane, status = response.headers.get(LANE_HEADER, ""), response.status
                    denied = CLAIM_DENIED_HEADER in response.headers
                    cost_usd = float(response.headers.get(COST_HEADER, "nan"))
                    if body.get("stream"):
                        data, ttft_s = await _streamed(response, started)
                        usage = _stream_usage(data)
                    else:
                        usage = answer_usage(await response.read())
            except (aiohttp.ClientError, TimeoutError):
                pass
            latency_s = time.perf_counter() - started
            result = results[index] = Result(
                at_s,
                lane,
                status,
                latency_s,
                index,
                usage.get("prompt_tokens", len(prompt.split())),
                route,
                usage.get("completion_tokens", body.get("max_tokens", 0)),
                ttft_s,
                cost_usd,
                denied,
            )
            if on_result is not None:
                on_result(result)

        tasks = []
        t0 = trace[0].t_s if trace else 0.0
        for index, (request, body) in enumerate(zip(trace, bodies)):
            at_s = (request.t_s - t0) / speed
            delay = at_s - (time.perf_counter() - began)
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(send(index, request, body, at_s)))
        await asyncio.gather(*tasks)
    return [r for r in results if r is not None]


async def _streamed(response: aiohttp.ClientResponse, started: float) -> tuple[bytes, float]:
    """A streamed answer's bytes, and the seconds from sending to its first token (its first non-empty delta)."""
    data, ttft_s = bytearray(), math.nan
    async for chunk in response.content.iter_any():
        data += chunk
        if math.isnan(ttft_s) and b'"content"' in data:
            ttft_s = time.perf_counter() - started
    return bytes(data), ttft_s


def _stream_usage(data: bytes) -> dict[str, int]:
    """The usage in a stream's events (the last chunk's, with `stream_options.include_usage`); empty when none."""
    for line in reversed(data.splitlines()):
        if line.startswith(b"data: {") and b'"usage"' in line:
            return answer_usage(line[len(b"data: ") :])
    return {}


def as_sent(trace: Sequence[TraceRequest], results: Sequence[Result]) -> list[TraceRequest]:
    """The trace as the router received it, to simulate against a live run.

    A replay sends short texts, not the trace's token counts: each request
    carries the input tokens of its result, the output tokens it got (none
    from embeddings; a chat answer's own), and the path it was sent to.
    """
    return [
        replace(trace[r.index], input_tokens=r.input_tokens, output_tokens=r.output_tokens, route=r.route)
        for r in results
    ]


def as_outcome(trace: Sequence[TraceRequest], results: Sequence[Result]) -> Outcome:
    """Live results in the simulator's shape, each with the cost the router said it attributed (NaN: unsaid)."""
    lanes = tuple(sorted({r.lane for r in results if r.lane}))
    index = {lane: i for i, lane in enumerate(lanes)}
    return Outcome(
        lanes=lanes,
        arrival_s=np.array([r.sent_s for r in results]),
        lane=np.array([index.get(r.lane, NO_LANE) for r in results], dtype=np.int16),
        status=np.array([r.status or 599 for r in results], dtype=np.int16),
        latency_s=np.array([r.latency_s for r in results]),
        cost_usd=np.array([r.cost_usd for r in results], dtype=float),
        pinned=np.array([trace[r.index].mode is not None for r in results], dtype=bool),
        deadline_s=np.array(
            [deadline_ms / 1000.0 if (deadline_ms := trace[r.index].deadline_ms) else np.nan for r in results]
        ),
        idle_cost_usd={},
        end_s=max((r.sent_s + r.latency_s for r in results), default=0.0),
    )


def run(args: argparse.Namespace) -> int:
    """The `modeshift replay` command: send, show progress, print the figures, write the CSV."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from simulator.command import slo_targets
    from simulator.outcome import summarize
    from simulator.report import lane_table, write_requests_csv
    from simulator.traces import prepared

    try:
        trace = prepared(
            args.trace,
            window=args.slice,
            pinned_share=args.pinned_share,
            pinned_lane=args.pinned_lane,
            seed=args.seed,
            route=args.route or "/",
        )
        slo = slo_targets(args)
    except ValueError as exc:
        print(exc, file=sys.stderr)
        return 2
    if not trace:
        print(f"{args.trace}: no requests in the trace (after --slice)", file=sys.stderr)
        return 2
    console = Console(width=None if sys.stdout.isatty() else 160)
    console.print(f"sending {len(trace):,} requests over {trace[-1].t_s / args.speed:,.0f} s to {args.target}")
    columns = (TextColumn("replay"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console) as progress:
        task = progress.add_task("", total=len(trace))
        results = asyncio.run(
            replay(
                args.target,
                trace,
                seed=args.seed,
                speed=args.speed,
                timeout_s=args.timeout,
                protocol=args.protocol,
                stream=args.stream,
                model=args.model,
                api_key=os.environ.get(API_KEY_VARIABLE),
                on_result=lambda _: progress.advance(task),
            )
        )
    outcome = as_outcome(trace, results)
    if denied := sum(r.claims_denied for r in results):
        console.print(
            f"the router dropped the pins, classes or deadlines of {denied:,} requests (X-Modeshift-Claim-Denied): "
            f"grant them in its access section to a key, and set ${API_KEY_VARIABLE}"
        )
    console.print(lane_table(summarize(outcome, slo, f"replay of {args.trace}"), slo))
    routes = sorted({r.route for r in results})
    console.print(f"routes: {', '.join(routes)} (simulate the same path: --route {urlsplit(args.target).path or '/'})")
    ttft = np.array([r.ttft_s for r in results if not math.isnan(r.ttft_s)])
    if ttft.size:
        p50, p95 = np.percentile(ttft, (50, 95)) * 1e3
        console.print(f"time to first token: p50 {p50:.0f} ms, p95 {p95:.0f} ms ({ttft.size:,} streamed answers)")
    if args.out:
        write_requests_csv(outcome, slo, args.out, [r.route for r in results], [r.ttft_s for r in results])
        console.print(f"wrote {len(results):,} results to {args.out}")
    failed = sum(1 for r in results if r.status == 0)
    return 1 if failed == len(results) else 0
