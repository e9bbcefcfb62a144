"""The reference model server on loopback: both APIs, both modes, and its limits."""

from __future__ import annotations

import asyncio
import base64
import threading

import aiohttp
import numpy as np
import pytest

from tests.backends.test_embedder import MIXED
from tests.conftest import Wrapped
from tests.router.helpers import until


async def embed(session, url, body):
    async with session.post(f"{url}/v1/embeddings", json=body) as response:
        return response.status, await response.json()


async def test_openai_float_and_base64_answers_carry_the_same_vectors(model_server, embedder):
    url, _ = await model_server(embedder, mode="realtime")
    async with aiohttp.ClientSession() as session:
        status, floats = await embed(session, url, {"input": MIXED[:3], "model": "all-MiniLM-L6-v2"})
        _, packed = await embed(session, url, {"input": MIXED[:3], "encoding_format": "base64"})
    assert status == 200 and floats["object"] == "list" and floats["model"] == "all-MiniLM-L6-v2"
    assert [d["index"] for d in floats["data"]] == [0, 1, 2]
    as_floats = np.array([d["embedding"] for d in floats["data"]], dtype=np.float32)
    as_base64 = np.vstack([np.frombuffer(base64.b64decode(d["embedding"]), "<f4") for d in packed["data"]])
    assert np.array_equal(as_floats, as_base64)
    assert np.abs(as_floats - embedder.embed(MIXED[:3]).vectors).max() <= 1e-6
    tokens = sum(embedder.embed(MIXED[:3]).tokens)
    assert floats["usage"] == {"prompt_tokens": tokens, "total_tokens": tokens}


async def test_kserve_v2_infer_and_metadata(model_server, embedder):
    url, _ = await model_server(embedder, mode="realtime")
    body = {"id": "r1", "inputs": [{"name": "text", "shape": [2], "datatype": "BYTES", "data": MIXED[:2]}]}
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{url}/v2/models/all-MiniLM-L6-v2/infer", json=body) as response:
            assert response.status == 200
            answer = await response.json()
        async with session.get(f"{url}/v2/models/all-MiniLM-L6-v2") as response:
            meta = await response.json()
        async with session.post(f"{url}/v2/models/other/infer", json=body) as response:
            assert response.status == 404 and "not found" in (await response.json())["error"]
        bad = {"inputs": [{"name": "text", "shape": [3], "datatype": "BYTES", "data": MIXED[:2]}]}
        async with session.post(f"{url}/v2/models/all-MiniLM-L6-v2/infer", json=bad) as response:
            assert response.status == 400 and "shape says 3 items" in (await response.json())["error"]
    output = answer["outputs"][0]
    assert answer["id"] == "r1" and output["shape"] == [2, 384] and output["datatype"] == "FP32"
    vectors = np.array(output["data"], dtype=np.float32).reshape(2, 384)
    assert np.abs(vectors - embedder.embed(MIXED[:2]).vectors).max() <= 1e-6
    assert meta["outputs"][0]["shape"] == [-1, 384]


@pytest.mark.parametrize(
    ("body", "status", "says"),
    [
        ({"model": "x"}, 400, "`input` is missing"),
        ({"input": []}, 400, "non-empty list of strings"),
        ({"input": [1, 2]}, 400, "token arrays are not supported"),
        ({"input": "x", "encoding_format": "int8"}, 400, "encoding_format"),
        ({"input": "x", "model": "gpt-9"}, 404, "is not served here"),
        ({"input": ["x"] * 2049}, 400, "at most 2048"),
    ],
)
async def test_bad_embedding_requests_get_openai_shaped_errors(model_server, embedder, body, status, says):
    url, _ = await model_server(embedder, mode="realtime")
    async with aiohttp.ClientSession() as session:
        got, answer = await embed(session, url, body)
    assert got == status
    assert says in answer["error"]["message"] and answer["error"]["type"] == "invalid_request_error"


async def test_batch_mode_shares_passes_and_changes_no_vector(model_server, embedder):
    url, service = await model_server(embedder, mode="batch", max_batch=64, max_wait_s=0.02)
    texts = [MIXED[i % len(MIXED)] + f" #{i}" * (i % 4) for i in range(40)]
    async with aiohttp.ClientSession() as session:
        answers = await asyncio.gather(*(embed(session, url, {"input": text}) for text in texts))
    assert all(status == 200 for status, _ in answers)
    got = np.array([answer["data"][0]["embedding"] for _, answer in answers], dtype=np.float32)
    alone = np.vstack([embedder.embed([text]).vectors for text in texts])
    assert np.abs(got - alone).max() <= 1e-5
    figures = service.describe()
    assert figures["requests"] == 40 and figures["items"] == 40
    assert figures["model_calls"] < 40 / 4  # requests really shared passes


async def test_realtime_mode_gives_each_request_its_own_pass(model_server, embedder):
    url, service = await model_server(embedder, mode="realtime", workers=2)
    async with aiohttp.ClientSession() as session:
        answers = await asyncio.gather(*(embed(session, url, {"input": [t, t]}) for t in MIXED))
    assert all(status == 200 for status, _ in answers)
    assert service.describe()["model_calls"] == len(MIXED)


async def test_a_poisoned_input_fails_only_its_own_request(model_server, embedder):
    gate = threading.Event()
    url, service = await model_server(Wrapped(embedder, gate), mode="batch", max_batch=64, max_wait_s=0.05)
    texts = ["fine one", "poison", "fine two", "fine three"]
    async with aiohttp.ClientSession() as session:
        pending = [asyncio.ensure_future(embed(session, url, {"input": text})) for text in texts]
        await until(lambda: service.counters.calls == 1)  # the merged pass began, held at the gate
        gate.set()
        answers = await asyncio.gather(*pending)
    statuses = [status for status, _ in answers]
    assert statuses == [200, 500, 200, 200]
    assert "poisons the pass" in answers[1][1]["error"]["message"]
    assert service.describe()["model_calls"] == 1 + len(texts)  # the merged pass, then one each


async def test_a_full_batch_queue_answers_503_with_retry_after(model_server, embedder):
    gate = threading.Event()
    url, service = await model_server(
        Wrapped(embedder, gate), mode="batch", max_batch=1, max_wait_s=0.0, queue_capacity=1
    )
    async with aiohttp.ClientSession() as session:
        first = asyncio.ensure_future(embed(session, url, {"input": "one"}))
        await until(lambda: service.counters.calls == 1)  # taken, its pass held at the gate
        second = asyncio.ensure_future(embed(session, url, {"input": "two"}))
        await until(lambda: service.counters.requests == 2)  # queued: the queue is now full
        async with session.post(f"{url}/v1/embeddings", json={"input": "three"}) as response:
            assert response.status == 503 and response.headers["Retry-After"] == "1"
            assert "queue is full" in (await response.json())["error"]["message"]
        gate.set()
        assert [status for status, _ in await asyncio.gather(first, second)] == [200, 200]


async def test_health_paths_and_model_list(model_server, embedder):
    url, _ = await model_server(embedder, mode="batch")
    async with aiohttp.ClientSession() as session:
        for path, expected in (("/v2/health/live", {"live": True}), ("/v2/health/ready", {"ready": True})):
            async with session.get(url + path) as response:
                assert response.status == 200 and await response.json() == expected
        async with session.get(f"{url}/v1/models") as response:
            assert [m["id"] for m in (await response.json())["data"]] == ["all-MiniLM-L6-v2"]
        async with session.get(f"{url}/health") as response:
            health = await response.json()
    assert health["mode"] == "batch" and health["dimension"] == 384 and health["device"] == "cpu"
