"""`modeshift profile`: measure a live backend and write the service model the simulator reads.

    modeshift profile --url http://127.0.0.1:8101/v1/embeddings --lane realtime --out service.yaml

Two sweeps, closed loop, on real HTTP:
1. one call at a time, at each batch size in `--batch-sizes` (embeddings:
   texts per call of varied lengths; chat: `max_tokens` per call), so the
   time of a call can be fitted against what it carries
   (simulator.service.fit_latency: non-negative least squares, jitter from
   the residuals);
2. at each level in `--concurrency`, that many clients sending single-item
   calls, to find how many calls the backend serves at once: the most
   calls/s seen, times the one-at-a-time service time (Little's law).

Input tokens are read from the answer's `usage` where it has one, else
counted as words. The lane goes into `--out`, added to the lanes already
there (so two runs profile two lanes into one file). Every call must answer
2xx; one that does not stops the run with the status and body, since a model
of failing calls would mislead the simulator.

What must not live here: the model and the fit (simulator.service).
"""

from __future__ import annotations

import asyncio
import json
import random
import statistics
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
import yaml

from simulator.service import Measurement, ServerLane, ServiceModel, fit_latency, load_service_model

_WORDS = (
    "the router sends each request to a lane by policy while the batch lane merges many texts into one pass "
    "latency cost queue model token weight transition rollback window throughput deadline replica"
).split()


class ProfileFailed(RuntimeError):
    pass


@dataclass(frozen=True, slots=True)
class Plan:
    url: str
    protocol: str = "openai-embeddings"  # or "openai-chat"
    batch_sizes: tuple[int, ...] = (1, 2, 4, 8, 16, 32)
    concurrency: tuple[int, ...] = (1, 2, 4, 8)
    calls: int = 12  # per batch size, and per client at each concurrency level
    model: str | None = None  # sent as "model" when given
    seed: int = 0


def body_for(plan: Plan, size: int, rng: random.Random) -> tuple[dict, int]:
    """A request carrying `size` (texts, or output tokens for chat), and its input words."""
    if plan.protocol == "openai-chat":
        words = rng.randint(8, 40)
        text = " ".join(rng.choices(_WORDS, k=words))
        body = {"messages": [{"role": "user", "content": text}], "max_tokens": size}
    else:
        texts = [" ".join(rng.choices(_WORDS, k=rng.randint(4, 24))) for _ in range(size)]
        body, words = {"input": texts}, sum(len(t.split()) for t in texts)
    if plan.model is not None:
        body["model"] = plan.model
    return body, words


async def _call(session: aiohttp.ClientSession, plan: Plan, size: int, rng: random.Random) -> Measurement:
    body, words = body_for(plan, size, rng)
    started = time.perf_counter()
    async with session.post(plan.url, json=body) as response:
        data = await response.read()
        if not 200 <= response.status < 300:
            raise ProfileFailed(f"{plan.url} answered {response.status}: {data[:300].decode(errors='replace')}")
    latency = time.perf_counter() - started
    usage = _usage(data)
    input_tokens = usage.get("prompt_tokens", words)
    if plan.protocol == "openai-chat":
        return Measurement(
            items=1, input_tokens=input_tokens, output_tokens=usage.get("completion_tokens", size), latency_s=latency
        )
    return Measurement(items=size, input_tokens=input_tokens, output_tokens=0, latency_s=latency)


def _usage(data: bytes) -> dict:
    try:
        usage = json.loads(data).get("usage") or {}
    except (ValueError, AttributeError):
        return {}
    return {k: int(v) for k, v in usage.items() if isinstance(v, int | float)}


async def measure(plan: Plan, on_step=None) -> tuple[list[Measurement], dict[int, float]]:
    """The one-at-a-time calls, and calls/s at each concurrency level."""
    rng = random.Random(plan.seed)
    timeout = aiohttp.ClientTimeout(total=300)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), timeout=timeout) as session:
        await _call(session, plan, 1, rng)  # warm-up: connections, lazy model loading
        points = []
        for size in plan.batch_sizes:
            for _ in range(plan.calls):
                points.append(await _call(session, plan, size, rng))
            if on_step is not None:
                on_step(
                    f"batch size {size}: median {statistics.median(p.latency_s for p in points[-plan.calls :]):.4f} s"
                )
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


def build_lane(points: list[Measurement], rates: dict[int, float]) -> ServerLane:
    latency = fit_latency(points)
    single = [p.latency_s for p in points if p.items == 1] or [p.latency_s for p in points]
    service_s = statistics.mean(single)
    concurrency = max(1, round(max(rates.values()) * service_s))
    return ServerLane(replicas=1, concurrency=concurrency, latency=latency)


def run(args) -> int:
    """The `modeshift profile` command."""
    plan = Plan(
        url=args.url,
        protocol=args.protocol,
        batch_sizes=tuple(int(x) for x in args.batch_sizes.split(",")),
        concurrency=tuple(int(x) for x in args.concurrency.split(",")),
        calls=args.calls,
        model=args.model,
    )
    try:
        points, rates = asyncio.run(measure(plan, on_step=lambda line: print(line, flush=True)))
    except (ProfileFailed, aiohttp.ClientError, TimeoutError) as exc:
        print(f"profile failed: {exc}", file=sys.stderr)
        return 1
    lane = build_lane(points, rates)
    write_lane(Path(args.out), args.lane, lane, args.url)
    latency = lane.latency
    print(
        f"{args.lane}: {latency.base_s * 1000:.2f} ms + {latency.per_item_s * 1000:.3f} ms/item "
        f"+ {latency.per_input_token_s * 1000:.4f} ms/input token + {latency.per_output_token_s * 1000:.3f} ms/output "
        f"token, jitter {latency.jitter:.2f}; {lane.concurrency} at once -> {args.out}"
    )
    return 0


def write_lane(path: Path, lane_name: str, lane: ServerLane, url: str) -> ServiceModel:
    """Add (or replace) `lane_name` in the model at `path`, creating the file when absent."""
    lanes = dict(load_service_model(path).lanes) if path.exists() else {}
    lanes[lane_name] = lane
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    model = ServiceModel(lanes=lanes, source=f"modeshift profile {url}, {stamp}")
    data = model.model_dump(by_alias=True, exclude_none=True)
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
