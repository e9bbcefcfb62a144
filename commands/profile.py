"""`modeshift profile`: measure a live backend and write the service model the simulator reads.

    modeshift profile --url http://127.0.0.1:8101/v1/embeddings --lane realtime --out service.yaml

Three sweeps, closed loop, on real HTTP:
1. one call at a time, at each batch size in `--batch-sizes` (embeddings:
   texts per call of varied lengths; chat: `max_tokens` per call);
2. one call at a time, one text (chat: one prompt) of each length in
   `--lengths` words, so the time per input token is told apart from the
   time per item (in the first sweep the two grow together);
3. at each level in `--concurrency`, that many clients sending single-item
   calls, to find how many calls the backend serves at once: the most
   calls/s seen, times the time one call took at the fewest clients
   (Little's law).
The first two are fitted together: the time of a call against what it
carries (simulator.service.fit_latency: non-negative least squares of
relative errors, jitter from the residuals).

With `--via` (the same endpoint through the router) it also measures the
router's hop: single-item calls, direct and via the router pinned to the
lane (`--via-lane`, which must not micro-batch the route), the difference
of the medians. It goes into the model's `hop`.

Input tokens are read from the answer's `usage` where it has one, else
counted as words. The lane goes into `--out`, added to the lanes already
there (so two runs profile two lanes into one file). Every call must answer
2xx; one that does not stops the run with the status and body, since a model
of failing calls would mislead the simulator.

What must not live here: the model and the fit (simulator.service).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import yaml
from multidict import CIMultiDictProxy

from router.headers import BATCH_HEADER, MODE_HEADER
from simulator.service import Measurement, ServerLane, ServiceModel, fit_latency, load_service_model

_WORDS = (
    "the router sends each request to a lane by policy while the batch lane merges many texts into one pass "
    "latency cost queue model token weight transition rollback window throughput deadline replica"
).split()


class ProfileFailed(RuntimeError):
    pass


def words_text(rng: random.Random, words: int) -> str:
    """A synthetic text of `words` words, for the calls a profile or a replay sends."""
    return " ".join(rng.choices(_WORDS, k=words))


@dataclass(frozen=True, slots=True)
class Plan:
    url: str
    protocol: str = "openai-embeddings"  # or "openai-chat"
    batch_sizes: tuple[int, ...] = (1, 2, 4, 8, 16, 32)
    lengths: tuple[int, ...] = (4, 16, 64, 128)  # words in the one text (prompt) of a length sweep call
    concurrency: tuple[int, ...] = (1, 2, 4, 8)
    calls: int = 12  # per batch size, and per client at each concurrency level
    model: str | None = None  # sent as "model" when given
    via: str | None = None  # the same endpoint through the router, to measure the hop
    seed: int = 0


def body_for(plan: Plan, size: int, rng: random.Random, words: int | None = None) -> tuple[dict[str, Any], int]:
    """A request carrying `size` (texts, or output tokens for chat), and its input words.

    With `words`, each text (the prompt) has that many; else a few, drawn.
    """

    def text() -> str:
        return words_text(rng, words or rng.randint(4, 24))

    if plan.protocol == "openai-chat":
        prompt = text()
        body = {"messages": [{"role": "user", "content": prompt}], "max_tokens": size}
        sent = len(prompt.split())
    else:
        texts = [text() for _ in range(size)]
        body, sent = {"input": texts}, sum(len(t.split()) for t in texts)
    if plan.model is not None:
        body["model"] = plan.model
    return body, sent


async def _call(
    session: aiohttp.ClientSession, plan: Plan, size: int, rng: random.Random, words: int | None = None
) -> Measurement:
    body, words = body_for(plan, size, rng, words)
    latency, data, _ = await _post(session, plan.url, body)
    usage = answer_usage(data)
    input_tokens = usage.get("prompt_tokens", words)
    if plan.protocol == "openai-chat":
        return Measurement(
            items=1, input_tokens=input_tokens, output_tokens=usage.get("completion_tokens", size), latency_s=latency
        )
    return Measurement(items=size, input_tokens=input_tokens, output_tokens=0, latency_s=latency)


async def _post(
    session: aiohttp.ClientSession, url: str, body: dict[str, Any], headers: dict[str, str] | None = None
) -> tuple[float, bytes, CIMultiDictProxy[str]]:
    """One timed call that must answer 2xx: its seconds, body and headers."""
    started = time.perf_counter()
    async with session.post(url, json=body, headers=headers) as response:
        data = await response.read()
        if not 200 <= response.status < 300:
            raise ProfileFailed(f"{url} answered {response.status}: {data[:300].decode(errors='replace')}")
    return time.perf_counter() - started, data, response.headers


async def measure_hop(plan: Plan, lane: str) -> float:
    """Seconds the router adds to a call: the same single-item calls direct and via `plan.via`, pinned to `lane`.

    Pairs alternate which goes first, so neither side always meets a
    backend that has just worked. The lane must not micro-batch the route
    (a merged call waits for its flush, which the simulator models itself).
    """
    if plan.via is None:
        raise ValueError("measuring the hop needs the router's URL (--via)")
    rng = random.Random(plan.seed + 1)
    pin: dict[str, str] | None = {MODE_HEADER: lane}
    timeout = aiohttp.ClientTimeout(total=300)
    direct: list[float] = []
    via: list[float] = []
    async with aiohttp.ClientSession(timeout=timeout) as session:
        for k in range(2 * plan.calls + 2):
            body, _ = body_for(plan, plan.batch_sizes[0], rng)
            calls: list[tuple[list[float], str, dict[str, str] | None]] = [
                (direct, plan.url, None),
                (via, plan.via, pin),
            ]
            for out, url, headers in calls if k % 2 else reversed(calls):
                latency, _, answered = await _post(session, url, body, headers)
                if BATCH_HEADER in answered:
                    raise ProfileFailed(
                        f"the router micro-batched the call on lane {lane!r}: measure the hop on a lane that does "
                        f"not micro-batch (--via-lane)"
                    )
                if k >= 2:  # the first pair warms the connections
                    out.append(latency)
    return max(0.0, float(statistics.median(via) - statistics.median(direct)))


def answer_usage(data: bytes) -> dict[str, int]:
    """The numbers in an answer's `usage` (prompt_tokens, ...); empty when it has none."""
    try:
        usage = json.loads(data).get("usage") or {}
    except (ValueError, AttributeError):
        return {}
    return {k: int(v) for k, v in usage.items() if isinstance(v, int | float)}


async def measure(
    plan: Plan, on_step: Callable[[str], None] | None = None
) -> tuple[list[Measurement], dict[int, float]]:
    """The one-at-a-time calls (both sweeps), and calls/s at each concurrency level."""
    rng = random.Random(plan.seed)
    timeout = aiohttp.ClientTimeout(total=300)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), timeout=timeout) as session:
        await _call(session, plan, 1, rng)  # warm-up: connections, lazy model loading
        points = []
        for size in plan.batch_sizes:
            for _ in range(plan.calls):
                points.append(await _call(session, plan, size, rng))
            _report(on_step, f"batch size {size}", points[-plan.calls :])
        for words in plan.lengths:
            for _ in range(plan.calls):
                points.append(await _call(session, plan, plan.batch_sizes[0], rng, words))
            _report(on_step, f"{words} words", points[-plan.calls :])
        rates = {}
        for clients in plan.concurrency:

            async def client(seed: int) -> None:
                own = random.Random(seed)
                for _ in range(plan.calls):
                    await _call(session, plan, 1, own)

            began = time.perf_counter()
            await asyncio.gather(*(client(plan.seed + 1000 * clients + k) for k in range(clients)))
            rates[clients] = clients * plan.calls / (time.perf_counter() - began)
            if on_step is not None:
                on_step(f"{clients} clients: {rates[clients]:.1f} calls/s")
    return points, rates


def _report(on_step: Callable[[str], None] | None, what: str, points: list[Measurement]) -> None:
    if on_step is not None:
        on_step(f"{what}: median {statistics.median(p.latency_s for p in points):.4f} s")


def build_lane(points: list[Measurement], rates: dict[int, float]) -> ServerLane:
    latency = fit_latency(points)
    # The fewest clients (one, by default) see the calls' own service time.
    fewest = min(rates)
    service_s = fewest / rates[fewest]
    concurrency = max(1, round(max(rates.values()) * service_s))
    return ServerLane(replicas=1, concurrency=concurrency, latency=latency)


def run(args: argparse.Namespace) -> int:
    """The `modeshift profile` command."""
    plan = Plan(
        url=args.url,
        protocol=args.protocol,
        batch_sizes=tuple(int(x) for x in args.batch_sizes.split(",")),
        lengths=tuple(int(x) for x in args.lengths.split(",")) if args.lengths else (),
        concurrency=tuple(int(x) for x in args.concurrency.split(",")),
        calls=args.calls,
        model=args.model,
        via=args.via,
    )
    try:
        points, rates = asyncio.run(measure(plan, on_step=lambda line: print(line, flush=True)))
        hop_s = asyncio.run(measure_hop(plan, args.via_lane or args.lane)) if plan.via else None
    except (ProfileFailed, aiohttp.ClientError, TimeoutError) as exc:
        print(f"profile failed: {exc}", file=sys.stderr)
        return 1
    lane = build_lane(points, rates)
    write_lane(Path(args.out), args.lane, lane, args.url, hop_s=hop_s)
    if hop_s is not None:
        print(f"the router's hop: {hop_s * 1000:.2f} ms")
    latency = lane.latency
    print(
        f"{args.lane}: {latency.base_s * 1000:.2f} ms + {latency.per_item_s * 1000:.3f} ms/item "
        f"+ {latency.per_input_token_s * 1000:.4f} ms/input token + {latency.per_output_token_s * 1000:.3f} ms/output "
        f"token, jitter {latency.jitter:.2f}; {lane.concurrency} at once -> {args.out}"
    )
    return 0


def write_lane(path: Path, lane_name: str, lane: ServerLane, url: str, *, hop_s: float | None = None) -> ServiceModel:
    """Add (or replace) `lane_name` in the model at `path`, creating the file when absent.

    The hop is set when given, else kept from the file.
    """
    known = load_service_model(path) if path.exists() else None
    lanes = dict(known.lanes) if known else {}
    lanes[lane_name] = lane
    if hop_s is None:
        hop_s = known.hop_s if known else 0.0
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    model = ServiceModel(lanes=lanes, hop_s=hop_s, source=f"modeshift profile {url}, {stamp}")
    data = model.model_dump(by_alias=True, exclude_none=True)
    data["hop"] = _duration(hop_s)
    for entry in data["lanes"].values():  # durations as the loader reads them: with units
        if "latency" in entry:
            entry["latency"] = {k: _duration(v) if k != "jitter" else round(v, 4) for k, v in entry["latency"].items()}
        for key in ("turnaround_median", "max_turnaround"):
            if key in entry:
                entry[key] = f"{entry[key]:g}s"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return model


def _duration(seconds: float) -> str:
    return f"{seconds * 1000:.6g}ms"
