"""An upstream of known capacity: a model server whose service time is a given model, not a model's.

`ModeledServer` answers like an embedding server (POST /v1/embeddings in
the OpenAI shape, with usage), like a chat server (POST
/v1/chat/completions: `max_tokens` output tokens, streamed as server-sent
events when `stream` is true, the first after the prefill and then one per
output token's time, usage in the last chunk), and any other path with a
small JSON body, but spends no CPU on it: a call holds one of `slots` (a
model server's concurrency; later calls queue inside the server, as vLLM's
or TGI's do) for

    base_s + per_item_s x items + per_input_token_s x input tokens + per_output_token_s x output tokens,

times a log-normal factor of mean 1 and sigma `jitter`, exp(jitter x z -
jitter^2 / 2) for a standard normal z drawn from a seeded generator, the
simulator's own formula (simulator.service.jittered_s). A request may bring
its own z in `X-Modeled-Z`, or as the first word of its first text,
`modeled-z=<z>`, which a router's merged call keeps (its first text is its
first request's, whose draw the simulator gives the merged call): a replay
sends the simulator's draw for each request both ways, so a live run and the
simulation of the same trace give each call the same service time, and what
differs between them is the router, not the luck of the draws.

The times are booked, not slept one after another: a call is given, in
arrival order, the slot that frees first (a FIFO queue in front of `slots`
servers, the simulator's `ServerLane`), and its start, its first token and
its end are computed from the model; the handler then waits until each of
those times. A timer that wakes late (a few tenths of a millisecond on
loopback) makes only that answer late; it never delays the calls behind it,
nor the tokens after it, so nothing drifts and the capacity is known exactly
(slots over the mean call time), which is what overload tests and benchmarks
need: the router's and the simulator's behaviour at twice a lane's capacity
can be measured on two shared cores, where a real model's own time would be
the noise. As in the simulator, a call whose client went away keeps its slot
until its booked end.

Input tokens are counted as words. What must not live here: anything about
lanes or routing; this is the far side of a lane.
"""

from __future__ import annotations

import asyncio
import heapq
import json
import math
import random
from collections.abc import Sequence
from typing import Any

from aiohttp import web

from backends.openai_api import ApiError, parse_embeddings_request

DIMENSION = 8
DRAW_HEADER = "X-Modeled-Z"  # a request's own standard normal draw for its jitter
DRAW_WORD = "modeled-z="  # ... or the first word of its first text: `modeled-z=<z>`


class ModeledServer:
    def __init__(
        self,
        *,
        slots: int,
        base_s: float,
        per_item_s: float = 0.0,
        per_input_token_s: float = 0.0,
        per_output_token_s: float = 0.0,
        jitter: float = 0.0,
        seed: int = 0,
    ):
        self.slots = slots
        self.base_s = base_s
        self.per_item_s = per_item_s
        self.per_input_token_s = per_input_token_s
        self.per_output_token_s = per_output_token_s
        self.jitter = jitter
        self._rng = random.Random(seed)
        self._free_at = [-math.inf] * slots  # a heap: when each slot is next free, on the loop's clock
        self.calls = 0
        self.items = 0
        self.output_tokens: list[int] = []  # asked for by each chat call, in arrival order
        self.service_s: list[float] = []  # each call's service time, in arrival order
        self._runner: web.AppRunner | None = None
        self.url = ""

    def call_s(self, items: int, input_tokens: int, output_tokens: int = 0, z: float | None = None) -> float:
        mean = self.base_s + self.per_item_s * items + self.per_input_token_s * input_tokens
        return (mean + self.per_output_token_s * output_tokens) * self._factor(z)

    def _factor(self, z: float | None = None) -> float:
        """One call's log-normal jitter, mean 1: of the request's own draw `z`, else of the next one."""
        if self.jitter <= 0:
            return 1.0
        if z is None:
            z = self._rng.gauss(0.0, 1.0)
        return math.exp(self.jitter * z - 0.5 * self.jitter * self.jitter)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        if request.path.rstrip("/").endswith("/chat/completions"):
            return await self._chat(request, body)
        texts: list[str] = []
        if request.path.rstrip("/").endswith("/embeddings"):
            try:
                texts = parse_embeddings_request(json.loads(body or b"null")).texts
            except (ApiError, ValueError) as exc:
                return web.json_response({"error": {"message": str(exc)}}, status=400)
        tokens = [len(text.split()) for text in texts]
        self.calls += 1
        self.items += max(len(texts), 1)
        _, end = self._book(self.call_s(max(len(texts), 1), sum(tokens), z=_draw(request, texts)))
        await _until(end)
        if not texts:
            return web.json_response({"ok": True})
        data = [
            {"object": "embedding", "index": i, "embedding": [1.0 / DIMENSION] * DIMENSION} for i in range(len(texts))
        ]
        usage = {"prompt_tokens": sum(tokens), "total_tokens": sum(tokens)}
        return web.json_response({"object": "list", "data": data, "model": "modeled", "usage": usage})

    async def _chat(self, request: web.Request, body: bytes) -> web.StreamResponse:
        try:
            asked = json.loads(body or b"null")
            prompt = " ".join(str(message.get("content", "")) for message in asked["messages"])
            output = int(asked.get("max_tokens") or asked.get("max_completion_tokens") or 16)
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            return web.json_response({"error": {"message": f"not a chat completion request: {exc}"}}, status=400)
        self.output_tokens.append(output)
        usage = {"prompt_tokens": len(prompt.split()), "completion_tokens": output}
        usage["total_tokens"] = usage["prompt_tokens"] + output
        self.calls += 1
        self.items += 1
        factor = self._factor(_draw(request))
        prefill_s = (self.base_s + self.per_item_s + self.per_input_token_s * usage["prompt_tokens"]) * factor
        token_s = self.per_output_token_s * factor
        start, end = self._book(prefill_s + token_s * output)
        if not asked.get("stream"):
            await _until(end)
            message = {"role": "assistant", "content": " ".join(["token"] * output)}
            choice = {"index": 0, "message": message, "finish_reason": "length"}
            return web.json_response(
                {"object": "chat.completion", "model": "modeled", "choices": [choice], "usage": usage}
            )
        await _until(start)
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for k in range(output):  # token k when the prefill and k tokens' time are over
            await _until(start + prefill_s + token_s * k)
            delta = {"choices": [{"index": 0, "delta": {"content": "token "}, "finish_reason": None}]}
            await response.write(_event({"object": "chat.completion.chunk", "model": "modeled", **delta}))
        await _until(end)
        if (asked.get("stream_options") or {}).get("include_usage"):
            await response.write(_event({"object": "chat.completion.chunk", "choices": [], "usage": usage}))
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response

    def _book(self, service_s: float) -> tuple[float, float]:
        """A call arriving now: the slot that frees first is its, from when it frees; its start and end."""
        start = max(asyncio.get_running_loop().time(), heapq.heappop(self._free_at))
        heapq.heappush(self._free_at, start + service_s)
        self.service_s.append(service_s)
        return start, start + service_s

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        bound = self._runner.addresses[0]
        self.url = f"http://{bound[0]}:{bound[1]}"
        return self.url

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


async def _until(at_s: float) -> None:
    """Wait until the loop's clock reads `at_s` (at once when it is past)."""
    await asyncio.sleep(max(at_s - asyncio.get_running_loop().time(), 0.0))


def _event(data: dict[str, Any]) -> bytes:
    return f"data: {json.dumps(data)}\n\n".encode()


def draw_word(z: float) -> str:
    """The word that carries a request's draw in its text, through a router that merges texts into one call."""
    return f"{DRAW_WORD}{z!r}"


def _draw(request: web.Request, texts: Sequence[str] = ()) -> float | None:
    """The call's own draw: its `X-Modeled-Z`, else its first text's first word; None when it brings neither."""
    value = request.headers.get(DRAW_HEADER)
    if value is None and texts and texts[0].startswith(DRAW_WORD):
        value = texts[0].split(maxsplit=1)[0].removeprefix(DRAW_WORD)
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None
