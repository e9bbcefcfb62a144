"""Sending a trace to a live router with its timing: open loop, one result per request.

Each trace request becomes an embeddings request whose text has about as
many words as the trace's input tokens suggest (clamped, so a CPU model can
keep up), sent at its arrival time however slow earlier answers are (open
loop: a slow server meets the load the trace describes, not less). A result
records when it was sent, the lane that served it (X-Modeshift-Lane), its
status and latency.

What must not live here: starting servers (router.demo), reports.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import aiohttp

from simulator.traces import TraceRequest

_WORDS = (
    "router lane batch realtime policy weight transition rollback latency cost queue upstream model embedding "
    "request trace window snapshot controller flush deadline budget spill replica token throughput"
).split()


@dataclass(frozen=True, slots=True)
class Result:
    sent_s: float  # since the replay began
    lane: str  # "" when the router did not say (an error before a lane was chosen)
    status: int  # 0 when no answer came (connection error, timeout)
    latency_s: float


def text_for(request: TraceRequest, rng: random.Random, *, tokens_per_word: int = 32, most_words: int = 24) -> str:
    words = min(max(request.input_tokens // tokens_per_word, 4), most_words)
    return " ".join(rng.choices(_WORDS, k=words))


async def replay(
    url: str,
    trace: Sequence[TraceRequest],
    *,
    seed: int = 0,
    timeout_s: float = 30.0,
    on_result: Callable[[Result], None] | None = None,
) -> list[Result]:
    """Send `trace` to `url` (POST, OpenAI embeddings body) at its arrival times."""
    rng = random.Random(seed)
    bodies = [{"input": text_for(request, rng)} for request in trace]
    results: list[Result] = []
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), timeout=timeout) as session:
        began = time.perf_counter()

        async def send(body: dict, at_s: float) -> None:
            started = time.perf_counter()
            lane, status = "", 0
            try:
                async with session.post(url, json=body) as response:
                    await response.read()
                    lane, status = response.headers.get("X-Modeshift-Lane", ""), response.status
            except (aiohttp.ClientError, TimeoutError):
                pass
            result = Result(at_s, lane, status, time.perf_counter() - started)
            results.append(result)
            if on_result is not None:
                on_result(result)

        tasks = []
        t0 = trace[0].t_s if trace else 0.0
        for request, body in zip(trace, bodies):
            at_s = request.t_s - t0
            delay = at_s - (time.perf_counter() - began)
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(send(body, at_s)))
        await asyncio.gather(*tasks)
    return results
