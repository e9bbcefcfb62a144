"""Codecs: what merges, how answers split, and what passes through untouched."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from backends.codecs import CodecError, codec_for
from backends.codecs.base import apportion

embeddings = codec_for("openai-embeddings")
kserve = codec_for("kserve-v2")


def body(payload) -> bytes:
    return json.dumps(payload).encode()


@given(st.integers(0, 10_000), st.lists(st.floats(0.1, 1000), min_size=1, max_size=50))
def test_apportioned_shares_add_up_and_follow_the_weights(total, weights):
    shares = apportion(total, weights)
    assert sum(shares) == total and all(s >= 0 for s in shares)
    exact = [total * w / sum(weights) for w in weights]
    assert all(abs(s - x) < 1 for s, x in zip(shares, exact))


def test_embedding_requests_merge_in_order_and_split_back_reindexed():
    parts = [
        embeddings.read(body({"model": "m", "input": "one"})),
        embeddings.read(body({"model": "m", "input": ["two", "three"]})),
    ]
    assert parts[0].key == parts[1].key and [p.items for p in parts] == [1, 2]
    merged = json.loads(embeddings.merge(parts))
    assert merged == {"model": "m", "input": ["one", "two", "three"]}
    answer = {
        "object": "list",
        "model": "m",
        "data": [{"object": "embedding", "index": i, "embedding": [float(i)]} for i in (2, 0, 1)],
        "usage": {"prompt_tokens": 10, "total_tokens": 10},
    }
    replies = embeddings.split(body(answer), parts)
    first, second = (json.loads(r.body) for r in replies)
    assert [d["embedding"] for d in first["data"]] == [[0.0]]
    assert [(d["index"], d["embedding"]) for d in second["data"]] == [(0, [1.0]), (1, [2.0])]
    assert first["usage"]["prompt_tokens"] + second["usage"]["prompt_tokens"] == 10
    assert [r.input_tokens for r in replies] == [first["usage"]["prompt_tokens"], second["usage"]["prompt_tokens"]]


def test_embedding_requests_with_other_options_do_not_share_a_key():
    a = embeddings.read(body({"model": "m", "input": "x"}))
    assert a.key != embeddings.read(body({"model": "n", "input": "x"})).key
    assert a.key != embeddings.read(body({"model": "m", "input": "x", "encoding_format": "base64"})).key
    assert a.key != embeddings.read(body({"model": "m", "input": "x", "dimensions": 64})).key


@pytest.mark.parametrize(
    "raw", [b"not json", b"[1, 2]", body({"input": [1, 2, 3]}), body({"input": []}), body({"model": "m"})]
)
def test_embedding_requests_that_cannot_merge_pass_through(raw):
    assert embeddings.read(raw) is None


def test_an_embeddings_answer_of_the_wrong_size_cannot_be_split():
    parts = [embeddings.read(body({"input": ["a", "b"]}))]
    answer = {"data": [{"index": 0, "embedding": [0.0]}], "usage": {"prompt_tokens": 1}}
    with pytest.raises(CodecError, match="sent 2 inputs but the answer holds 1"):
        embeddings.split(body(answer), parts)
    with pytest.raises(CodecError, match="malformed"):
        embeddings.split(b"<html>", parts)


def infer(rows: list[list[int]], request_id: str | None = None, datatype: str = "INT32") -> bytes:
    payload = {"inputs": [{"name": "x", "datatype": datatype, "shape": [len(rows), 2], "data": rows}]}
    if request_id:
        payload["id"] = request_id
    return body(payload)


def test_infer_requests_merge_along_the_batch_dimension_and_split_by_rows():
    parts = [kserve.read(infer([[1, 2]], "a")), kserve.read(infer([[3, 4], [5, 6]], "b"))]
    assert parts[0].key == parts[1].key
    merged = json.loads(kserve.merge(parts))
    assert merged["inputs"] == [{"name": "x", "datatype": "INT32", "shape": [3, 2], "data": [1, 2, 3, 4, 5, 6]}]
    answer = {
        "model_name": "m",
        "outputs": [{"name": "y", "datatype": "FP32", "shape": [3, 2], "data": list(range(6))}],
    }
    first, second = (json.loads(r.body) for r in kserve.split(body(answer), parts))
    assert first["id"] == "a" and first["outputs"][0]["shape"] == [1, 2] and first["outputs"][0]["data"] == [0, 1]
    assert second["id"] == "b" and second["outputs"][0]["data"] == [2, 3, 4, 5]
    assert second["model_name"] == "m"


def test_infer_requests_merge_only_with_the_same_layout():
    base = kserve.read(infer([[1, 2]]))
    assert base.key != kserve.read(infer([[1, 2]], datatype="INT64")).key
    three_wide = {"inputs": [{"name": "x", "datatype": "INT32", "shape": [1, 3], "data": [1, 2, 3]}]}
    assert base.key != kserve.read(body(three_wide)).key


@pytest.mark.parametrize(
    "payload",
    [
        {"inputs": [{"name": "x", "datatype": "INT32", "shape": [2, 2], "data": [1, 2, 3]}]},  # data short of shape
        {"inputs": [{"name": "x", "datatype": "BYTES", "shape": [1], "parameters": {"binary_data_size": 4}}]},
        {"inputs": []},
    ],
)
def test_infer_requests_that_cannot_merge_pass_through(payload):
    assert kserve.read(body(payload)) is None


def test_an_infer_answer_not_batched_like_the_request_cannot_be_split():
    parts = [kserve.read(infer([[1, 2]])), kserve.read(infer([[3, 4]]))]
    answer = {"outputs": [{"name": "y", "datatype": "FP32", "shape": [1, 2], "data": [0, 1]}]}
    with pytest.raises(CodecError, match="not a batch of 2"):
        kserve.split(body(answer), parts)


def test_passthrough_protocols_never_merge():
    for protocol in ("http", "openai-chat"):
        codec = codec_for(protocol)
        assert not codec.batchable and codec.read(body({"input": "x"})) is None


def test_chat_usage_is_read_from_a_whole_answer_and_from_a_stream_cut_anywhere():
    chat = codec_for("openai-chat")
    assert chat.usage(body({"choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": 3}})) == (7, 3)
    assert chat.usage(b"not json") is None and chat.usage(body({"choices": []})) is None
    events = (
        b'data: {"choices": [{"delta": {"content": "hi"}}]}\n\n'
        b'data: {"choices": [], "usage": {"prompt_tokens": 11, "completion_tokens": 2}}\n\n'
        b"data: [DONE]\n\n"
    )
    for cut in range(1, len(events)):
        reader = chat.stream_usage()
        reader.feed(events[:cut])
        reader.feed(events[cut:])
        assert reader.usage == (11, 2), cut
    silent = chat.stream_usage()
    silent.feed(b'data: {"choices": [{"delta": {"content": "no usage here"}}]}\n\n')
    assert silent.usage is None
