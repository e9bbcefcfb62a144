"""Router micro-batching against the real reference model server on loopback."""

from __future__ import annotations

import asyncio
import math
import threading

import numpy as np
from aiohttp import web

from policies.control.actions import Force
from tests.backends.test_embedder import MIXED
from tests.conftest import Wrapped
from tests.router.helpers import two_lane_config, until

BATCH = {"X-Modeshift-Mode": "batch"}


def batching_config(realtime: str, batch: str, *, max_wait: str = "50ms", queue_capacity: int = 1024, **lane_options):
    return two_lane_config(
        [realtime],
        [batch],
        lanes={
            "realtime": {"upstreams": [realtime]},
            "batch": {
                "upstreams": [batch],
                "batching": {"rule": "hybrid", "max_batch": 64, "max_wait": max_wait, "queue_capacity": queue_capacity},
                **lane_options,
            },
        },
        routes=[
            {"path": "/v1/embeddings", "protocol": "openai-embeddings"},
            {"path": "/v2/models", "protocol": "kserve-v2"},
            {"path": "/", "protocol": "http"},
        ],
    )


async def post_json(client, url, payload, headers=BATCH):
    async with client.post(url, json=payload, headers=headers) as response:
        return response.status, dict(response.headers), await response.json()


async def test_concurrent_requests_share_upstream_calls_and_get_their_own_vectors(
    model_server, embedder, start_router, client
):
    url, service = await model_server(embedder, mode="realtime")
    router = await start_router(batching_config(url, url, cost={"per_request": 0.003}))
    texts = [[MIXED[i % 5]] if i % 3 else [MIXED[i % 5], f"extra {i}"] for i in range(30)]
    answers = await asyncio.gather(*(post_json(client, f"{router.url}/v1/embeddings", {"input": t}) for t in texts))
    for sent, (status, headers, body) in zip(texts, answers):
        assert status == 200 and headers["X-Modeshift-Lane"] == "batch" and "X-Modeshift-Batch" in headers
        assert [d["index"] for d in body["data"]] == list(range(len(sent)))
        got = np.array([d["embedding"] for d in body["data"]], dtype=np.float32)
        assert np.abs(got - embedder.embed(sent).vectors).max() <= 1e-5
    total_tokens = sum(sum(embedder.embed(t).tokens) for t in texts)
    assert sum(body["usage"]["prompt_tokens"] for _, _, body in answers) == total_tokens
    assert service.describe()["requests"] <= 30 / 5  # the upstream saw merged calls only
    shares = [float(headers["X-Modeshift-Cost-Usd"]) for _, headers, _ in answers]  # each its share of a call
    assert sum(shares) > 0
    router.tick()
    assert math.isclose(sum(shares), router.runtime.state.control.last_snapshot.lanes["batch"].cost_usd)
    window = router.runtime.state.lanes["batch"].window
    assert window.in_flight == 0


async def test_a_poisoned_input_fails_only_its_own_request(model_server, embedder, start_router, client):
    url, service = await model_server(Wrapped(embedder), mode="realtime")
    router = await start_router(batching_config(url, url, max_wait="100ms"))
    texts = ["fine one", "fine two", "poison", "fine three", "fine four", "fine five"]
    answers = await asyncio.gather(*(post_json(client, f"{router.url}/v1/embeddings", {"input": t}) for t in texts))
    assert [status for status, _, _ in answers] == [200, 200, 500, 200, 200, 200]
    assert "poisons the pass" in answers[2][2]["error"]["message"]


async def test_kserve_requests_merge_through_the_router(model_server, embedder, start_router, client):
    url, service = await model_server(embedder, mode="realtime")
    router = await start_router(batching_config(url, url))
    target = f"{router.url}/v2/models/all-MiniLM-L6-v2/infer"

    def request(i: int) -> dict:
        return {"id": f"r{i}", "inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": [MIXED[i]]}]}

    answers = await asyncio.gather(*(post_json(client, target, request(i)) for i in range(5)))
    for i, (status, _, body) in enumerate(answers):
        assert status == 200 and body["id"] == f"r{i}" and body["outputs"][0]["shape"] == [1, 384]
        got = np.array(body["outputs"][0]["data"], dtype=np.float32)
        assert np.abs(got - embedder.embed([MIXED[i]]).vectors[0]).max() <= 1e-5
    assert service.describe()["requests"] < 5


async def test_requests_with_different_credentials_never_share_a_call(upstream, start_router, client):
    calls: list[tuple[str, int]] = []

    async def embeddings(request: web.Request) -> web.Response:
        payload = await request.json()
        calls.append((request.headers.get("Authorization", ""), len(payload["input"])))
        data = [{"object": "embedding", "index": i, "embedding": [0.0]} for i in range(len(payload["input"]))]
        return web.json_response({"object": "list", "data": data, "model": "m", "usage": {"prompt_tokens": 0}})

    server = await upstream(embeddings)
    router = await start_router(batching_config(server.url, server.url))
    keys = ["Bearer alice", "Bearer bob"] * 5
    answers = await asyncio.gather(
        *(
            post_json(client, f"{router.url}/v1/embeddings", {"input": "x"}, {**BATCH, "Authorization": key})
            for key in keys
        )
    )
    assert all(status == 200 for status, _, _ in answers)
    assert sorted(calls) == [("Bearer alice", 5), ("Bearer bob", 5)]


async def test_a_batch_lane_that_cannot_connect_fails_over_to_the_realtime_lane(
    model_server, embedder, start_router, client
):
    url, _ = await model_server(embedder, mode="realtime")
    router = await start_router(batching_config(url, "http://127.0.0.1:9"))
    router.runtime.command(Force(mode="batch", gradual=False))
    status, headers, body = await post_json(client, f"{router.url}/v1/embeddings", {"input": "hello"}, {})
    assert status == 200 and headers["X-Modeshift-Lane"] == "realtime"
    assert len(body["data"][0]["embedding"]) == 384


async def test_a_full_batch_queue_answers_503(model_server, embedder, start_router, client):
    gate = threading.Event()
    url, _ = await model_server(Wrapped(embedder, gate), mode="realtime")
    router = await start_router(batching_config(url, url, max_wait="10s", queue_capacity=2, max_in_flight=1))
    target = f"{router.url}/v1/embeddings"
    waiting = [asyncio.ensure_future(post_json(client, target, {"input": f"t{i}"})) for i in range(2)]
    await asyncio.sleep(0.2)
    status, headers, body = await post_json(client, target, {"input": "one too many"})
    assert status == 503 and headers["Retry-After"] == "1" and body["error"]["type"] == "lane_full"
    assert "batching.queue_capacity" in body["error"]["message"]
    gate.set()
    for task in waiting:
        task.cancel()
    await asyncio.gather(*waiting, return_exceptions=True)


async def test_a_full_batch_queue_spills_to_the_realtime_lane_when_the_lane_says_so(
    model_server, embedder, start_router, client
):
    gate = threading.Event()
    held_url, _ = await model_server(Wrapped(embedder, gate), mode="realtime")
    free_url, _ = await model_server(embedder, mode="realtime")
    config = batching_config(free_url, held_url, max_wait="10s", queue_capacity=1, max_in_flight=1, spill=True)
    router = await start_router(config)
    router.runtime.command(Force(mode="batch", gradual=False))  # auto traffic may spill; pinned may not
    target = f"{router.url}/v1/embeddings"
    waiting = asyncio.ensure_future(post_json(client, target, {"input": "queued"}, {}))
    batching = router.runtime.state.lanes["batch"].batching
    await until(lambda: batching.waiting == 1)  # the batch lane's queue of one is full
    status, headers, _ = await post_json(client, target, {"input": "spilled"}, {})
    assert status == 200 and headers["X-Modeshift-Lane"] == "realtime"
    gate.set()
    waiting.cancel()
    await asyncio.gather(waiting, return_exceptions=True)


async def test_idle_queues_are_dropped_once_many_keys_have_come_and_gone(upstream, start_router, client, monkeypatch):
    monkeypatch.setattr("router.microbatch.MAX_QUEUES", 3)

    async def embeddings(request: web.Request) -> web.Response:
        n = len((await request.json())["input"])
        data = [{"object": "embedding", "index": i, "embedding": [0.0]} for i in range(n)]
        return web.json_response({"object": "list", "data": data, "model": "m", "usage": {"prompt_tokens": 0}})

    server = await upstream(embeddings)
    router = await start_router(batching_config(server.url, server.url, max_wait="1ms"))
    for i in range(10):
        headers = {**BATCH, "Authorization": f"Bearer client-{i}"}
        status, _, _ = await post_json(client, f"{router.url}/v1/embeddings", {"input": "x"}, headers)
        assert status == 200
    assert len(router.runtime.state.lanes["batch"].batching._loops) <= 3


async def test_an_outsized_input_rides_a_call_of_its_own(upstream, start_router, client):
    calls: list[list[int]] = []

    async def embeddings(request: web.Request) -> web.Response:
        texts = (await request.json())["input"]
        calls.append([len(text) for text in texts])
        await asyncio.sleep(0.05)
        data = [{"object": "embedding", "index": i, "embedding": [0.0]} for i in range(len(texts))]
        return web.json_response({"object": "list", "data": data, "model": "m", "usage": {"prompt_tokens": 0}})

    server = await upstream(embeddings)
    config = batching_config(server.url, server.url, max_wait="50ms")
    lanes = config.lanes
    batching = lanes["batch"].batching.model_copy(update={"max_batch_tokens": 1000})
    lanes["batch"] = lanes["batch"].model_copy(update={"batching": batching})
    router = await start_router(config)
    texts = ["small"] * 15 + ["x" * 400_000] + ["small"] * 16  # the huge one: about 100,000 tokens
    answers = await asyncio.gather(
        *(post_json(client, f"{router.url}/v1/embeddings", {"input": text}) for text in texts)
    )
    assert all(status == 200 for status, _, _ in answers)
    huge = [call for call in calls if 400_000 in call]
    assert huge == [[400_000]]  # alone
    assert sum(len(call) for call in calls) == 32 and max(len(call) for call in calls) > 1  # the rest merged
