"""OpenAI's Files and Batches API on the router, driven by the official `openai` client."""

from __future__ import annotations

import asyncio
import json
import time

import numpy as np
import openai
import pytest
from aiohttp import web

from tests.router.helpers import two_lane_config
from tests.router.jobs.test_jobs import jobs_config


def request_line(custom_id: str, text: str, url: str = "/v1/embeddings") -> dict:
    return {"custom_id": custom_id, "method": "POST", "url": url, "body": {"model": "m", "input": text}}


def jsonl(lines: list) -> bytes:
    return "".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines).encode()


def embeddings_upstream(seen: list, delay_s: float = 0.0):
    async def embeddings(request: web.Request) -> web.Response:
        payload = await request.json()
        seen.append((request.headers.get("Authorization"), payload["input"]))
        await asyncio.sleep(delay_s)
        if payload["input"] == "bad":
            return web.json_response({"error": {"message": "bad input", "type": "invalid_request_error"}}, status=400)
        data = [{"object": "embedding", "index": 0, "embedding": [float(len(payload["input"]))]}]
        return web.json_response({"object": "list", "data": data, "model": "m", "usage": {"prompt_tokens": 1}})

    return embeddings


async def finished(client: openai.AsyncOpenAI, batch_id: str, timeout_s: float = 20.0):
    async with asyncio.timeout(timeout_s):
        while True:
            batch = await client.batches.retrieve(batch_id)
            if batch.status in ("completed", "failed", "expired", "cancelled"):
                return batch
            await asyncio.sleep(0.1)


@pytest.fixture
async def client_for():
    made: list[openai.AsyncOpenAI] = []

    async def make(router) -> openai.AsyncOpenAI:
        made.append(openai.AsyncOpenAI(base_url=f"{router.url}/v1", api_key="sk-test", max_retries=0))
        return made[-1]

    yield make
    for client in made:
        await client.close()


async def test_a_batch_runs_every_line_and_keeps_one_bad_line_to_the_error_file(
    upstream, start_router, job_database, client_for
):
    seen: list = []
    server = await upstream(embeddings_upstream(seen))
    router = await start_router(jobs_config(server.url, server.url, job_database))
    client = await client_for(router)
    texts = ["a", "bb", "bad", "dddd", "eeeee"]
    upload = await client.files.create(
        file=("in.jsonl", jsonl([request_line(f"req-{i}", t) for i, t in enumerate(texts)])), purpose="batch"
    )
    assert upload.purpose == "batch" and upload.bytes > 0
    batch = await client.batches.create(
        input_file_id=upload.id, endpoint="/v1/embeddings", completion_window="24h", metadata={"run": "1"}
    )
    assert batch.status == "in_progress" and batch.request_counts.total == 5
    batch = await finished(client, batch.id)
    assert batch.status == "completed" and batch.metadata == {"run": "1"}
    assert (batch.request_counts.completed, batch.request_counts.failed) == (4, 1)
    output = [json.loads(line) for line in (await client.files.content(batch.output_file_id)).text.splitlines()]
    assert [line["custom_id"] for line in output] == ["req-0", "req-1", "req-3", "req-4"]
    assert [line["response"]["body"]["data"][0]["embedding"] for line in output] == [[1.0], [2.0], [4.0], [5.0]]
    [error] = [json.loads(line) for line in (await client.files.content(batch.error_file_id)).text.splitlines()]
    assert error["custom_id"] == "req-2" and error["response"]["status_code"] == 400
    assert {auth for auth, _ in seen} == {"Bearer sk-test"}  # the lines ran with the creator's key
    assert [b.id for b in (await client.batches.list()).data] == [batch.id]


async def test_a_malformed_file_fails_the_batch_with_an_error_naming_each_line(
    upstream, start_router, job_database, client_for
):
    server = await upstream(embeddings_upstream([]))
    router = await start_router(jobs_config(server.url, server.url, job_database))
    client = await client_for(router)
    lines = [
        request_line("ok", "x"),
        "{not json",
        request_line("wrong-url", "x", url="/v1/chat/completions"),
        request_line("ok", "again"),
    ]
    upload = await client.files.create(file=("in.jsonl", jsonl(lines)), purpose="batch")
    batch = await client.batches.create(input_file_id=upload.id, endpoint="/v1/embeddings", completion_window="24h")
    assert batch.status == "failed"
    problems = {(e.line, e.code) for e in batch.errors.data}
    assert problems == {(2, "invalid_json_line"), (3, "mismatched_url"), (4, "duplicate_custom_id")}
    assert all(f"line {e.line}" in e.message for e in batch.errors.data)


async def test_cancel_keeps_what_finished_and_drops_what_had_not_started(
    upstream, start_router, job_database, client_for
):
    seen: list = []
    server = await upstream(embeddings_upstream(seen, delay_s=0.2))
    router = await start_router(jobs_config(server.url, server.url, job_database, max_share=0.25))  # one at a time
    client = await client_for(router)
    upload = await client.files.create(
        file=("in.jsonl", jsonl([request_line(f"r{i}", "x" * (i + 1)) for i in range(10)])), purpose="batch"
    )
    batch = await client.batches.create(input_file_id=upload.id, endpoint="/v1/embeddings", completion_window="24h")
    async with asyncio.timeout(10):
        while not seen:
            await asyncio.sleep(0.02)
    cancelling = await client.batches.cancel(batch.id)
    assert cancelling.status == "cancelling"
    batch = await finished(client, batch.id)
    assert batch.status == "cancelled"
    counts = batch.request_counts
    assert counts.total == 10 and 1 <= counts.completed < 10 and counts.completed + counts.failed == 10
    errors = [json.loads(line) for line in (await client.files.content(batch.error_file_id)).text.splitlines()]
    assert {e["error"]["code"] for e in errors} == {"batch_cancelled"} and len(errors) == counts.failed
    assert len(seen) == counts.completed


async def test_an_expired_batch_keeps_its_finished_lines(upstream, start_router, job_database, client_for):
    seen: list = []
    server = await upstream(embeddings_upstream(seen, delay_s=0.2))
    router = await start_router(jobs_config(server.url, server.url, job_database, max_share=0.25))
    client = await client_for(router)
    upload = await client.files.create(
        file=("in.jsonl", jsonl([request_line(f"r{i}", "x") for i in range(10)])), purpose="batch"
    )
    batch = await client.batches.create(input_file_id=upload.id, endpoint="/v1/embeddings", completion_window="24h")
    async with asyncio.timeout(10):
        while not seen:
            await asyncio.sleep(0.02)
    router.runtime.jobs.batches.clock = lambda: time.time() + 2 * 86400  # the window runs out
    batch = await finished(client, batch.id)
    assert batch.status == "expired" and batch.expired_at is not None
    assert batch.output_file_id is not None and 1 <= batch.request_counts.completed < 10
    errors = [json.loads(line) for line in (await client.files.content(batch.error_file_id)).text.splitlines()]
    assert {e["error"]["code"] for e in errors} == {"batch_expired"}


async def test_a_batch_of_embeddings_on_the_reference_model_matches_the_model(
    model_server, embedder, upstream, start_router, tmp_path, client_for
):
    realtime_url, _ = await model_server(embedder, mode="realtime")
    batch_url, batch_service = await model_server(embedder, mode="batch")
    config = two_lane_config(
        [realtime_url],
        [batch_url],
        lanes={
            "realtime": {"upstreams": [realtime_url]},
            "batch": {"upstreams": [batch_url], "batching": {"rule": "hybrid", "max_batch": 16, "max_wait": "20ms"}},
        },
        routes=[{"path": "/v1/embeddings", "protocol": "openai-embeddings"}],
        jobs={"database": str(tmp_path / "jobs.sqlite3")},
    )
    router = await start_router(config)
    client = await client_for(router)
    texts = [f"sentence number {i} about batching" for i in range(12)]
    lines = [
        {**request_line(f"t{i}", t), "body": {"model": "all-MiniLM-L6-v2", "input": t}} for i, t in enumerate(texts)
    ]
    upload = await client.files.create(file=("in.jsonl", jsonl(lines)), purpose="batch")
    batch = await client.batches.create(input_file_id=upload.id, endpoint="/v1/embeddings", completion_window="24h")
    batch = await finished(client, batch.id, timeout_s=60)
    assert batch.status == "completed" and batch.request_counts.completed == 12
    output = [json.loads(line) for line in (await client.files.content(batch.output_file_id)).text.splitlines()]
    got = np.array([line["response"]["body"]["data"][0]["embedding"] for line in output])
    assert [line["custom_id"] for line in output] == [f"t{i}" for i in range(12)]
    assert np.abs(got - embedder.embed(texts).vectors).max() <= 1e-5
    assert batch_service.counters.items == 12 and batch_service.counters.requests < 12  # lines were merged
