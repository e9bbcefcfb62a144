"""The official `openai` client, with only base_url changed, against the router.

Embeddings go to the real reference model through the batch lane's
micro-batcher; chat completions (unstreamed and streamed) go to an
OpenAI-compatible test upstream, and the router charges their tokens.
"""

from __future__ import annotations

import asyncio
import json
import math

import numpy as np
import openai
import pytest
from aiohttp import web

from tests.router.helpers import two_lane_config

PRICES = {"per_1k_input_tokens": 0.5, "per_1k_output_tokens": 1.5}
WORDS = ["modeshift", " routes", " your", " traffic", "."]


async def chat_completions(request: web.Request) -> web.StreamResponse:
    """A tiny OpenAI-compatible chat server: the answer is WORDS, usage counts words."""
    payload = await request.json()
    prompt_tokens = sum(len(m["content"].split()) for m in payload["messages"])
    usage = {"prompt_tokens": prompt_tokens, "completion_tokens": len(WORDS), "total_tokens": prompt_tokens + 5}
    base = {"id": "chatcmpl-1", "created": 1, "model": payload["model"]}
    if not payload.get("stream"):
        message = {"role": "assistant", "content": "".join(WORDS)}
        choice = {"index": 0, "message": message, "finish_reason": "stop"}
        return web.json_response({**base, "object": "chat.completion", "choices": [choice], "usage": usage})
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    for word in WORDS:
        chunk = {**base, "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": word}}]}
        await response.write(f"data: {json.dumps(chunk)}\n\n".encode())
    if payload.get("stream_options", {}).get("include_usage"):
        last = {**base, "object": "chat.completion.chunk", "choices": [], "usage": usage}
        await response.write(f"data: {json.dumps(last)}\n\n".encode())
    await response.write(b"data: [DONE]\n\n")
    await response.write_eof()
    return response


@pytest.fixture
async def stack(model_server, embedder, upstream, start_router):
    model_url, model = await model_server(embedder, mode="realtime")

    async def chat(request: web.Request) -> web.StreamResponse:
        return await chat_completions(request)

    chat_upstream = await upstream(chat)
    config = two_lane_config(
        [chat_upstream.url],
        [model_url],
        lanes={
            "realtime": {"upstreams": [chat_upstream.url], "cost": PRICES},
            "batch": {"upstreams": [model_url], "batching": {"rule": "hybrid", "max_batch": 64, "max_wait": "30ms"}},
        },
        routes=[
            {"path": "/v1/embeddings", "protocol": "openai-embeddings", "pin": "batch"},
            {"path": "/v1/chat/completions", "protocol": "openai-chat", "pin": "realtime"},
        ],
    )
    router = await start_router(config)
    client = openai.AsyncOpenAI(base_url=f"{router.url}/v1", api_key="sk-test", max_retries=0)
    yield router, client, model
    await client.close()


def charged(router) -> dict:
    lane = router.runtime.state.lanes["realtime"].window.since_start
    return {"input": lane.input_tokens, "output": lane.output_tokens, "cost": lane.cost_usd}


async def test_embeddings_through_the_micro_batcher(stack, embedder):
    router, client, model = stack
    inputs = [["a first sentence"], ["second", "and third"], ["a fourth, longer sentence about lanes"]]
    answers = await asyncio.gather(
        *(client.embeddings.create(model="all-MiniLM-L6-v2", input=texts) for texts in inputs)
    )
    for texts, answer in zip(inputs, answers):
        got = np.array([d.embedding for d in answer.data], dtype=np.float32)
        assert [d.index for d in answer.data] == list(range(len(texts)))
        assert np.abs(got - embedder.embed(texts).vectors).max() <= 1e-5
    # Usage is reported per upstream call: each request gets a share by text
    # length, and the shares add up to what the upstream counted.
    counted = sum(sum(embedder.embed(texts).tokens) for texts in inputs)
    assert sum(answer.usage.prompt_tokens for answer in answers) == counted
    assert model.describe()["requests"] < len(inputs)  # merged into fewer upstream calls


async def test_an_unstreamed_chat_completion_is_charged_its_tokens(stack):
    router, client, _ = stack
    answer = await client.chat.completions.create(
        model="m", messages=[{"role": "user", "content": "say four words please"}]
    )
    assert answer.choices[0].message.content == "".join(WORDS)
    assert (answer.usage.prompt_tokens, answer.usage.completion_tokens) == (4, 5)
    figures = charged(router)
    assert (figures["input"], figures["output"]) == (4, 5)
    assert math.isclose(figures["cost"], (4 * 0.5 + 5 * 1.5) / 1000)


async def test_a_streamed_chat_completion_arrives_in_chunks_and_its_final_usage_is_charged(stack):
    router, client, _ = stack
    stream = await client.chat.completions.create(
        model="m",
        messages=[{"role": "user", "content": "stream three words"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    pieces, usage = [], None
    async for chunk in stream:
        pieces += [c.delta.content for c in chunk.choices if c.delta.content]
        usage = chunk.usage or usage
    assert pieces == WORDS
    assert (usage.prompt_tokens, usage.completion_tokens) == (3, 5)
    figures = charged(router)
    assert (figures["input"], figures["output"]) == (3, 5)
    assert math.isclose(figures["cost"], (3 * 0.5 + 5 * 1.5) / 1000)
