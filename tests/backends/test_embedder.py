"""The reference model: offline, normalized, and the same vector alone or in a batch."""

from __future__ import annotations

import numpy as np
import pytest

from backends.embedder import Embedder, ModelUnavailable

MIXED = [
    "hi",
    "",
    "a sentence of moderate length about routing inference traffic",
    "padding must not leak into the mean: " + "many words make a long input " * 12,
    "ünïcödé text, emoji 🚀 and punctuation!?",
]


def test_a_batch_gives_each_text_the_vector_it_gets_alone(embedder):
    batch = embedder.embed(MIXED)
    alone = np.vstack([embedder.embed([text]).vectors for text in MIXED])
    assert batch.vectors.shape == (len(MIXED), embedder.dimension) == (5, 384)
    assert np.abs(batch.vectors - alone).max() <= 1e-5
    assert batch.tokens == [embedder.embed([text]).tokens[0] for text in MIXED]


def test_vectors_are_unit_length_and_similar_texts_are_close(embedder):
    out = embedder.embed(["a cat sits on the mat", "a kitten is sitting on a rug", "quarterly tax filing deadlines"])
    assert np.allclose(np.linalg.norm(out.vectors, axis=1), 1.0, atol=1e-5)
    close, far = out.vectors[0] @ out.vectors[1], out.vectors[0] @ out.vectors[2]
    assert close > far + 0.3


def test_tokens_count_the_special_tokens_and_stop_at_the_truncation_limit(embedder):
    out = embedder.embed(["", "word " * 1000])
    assert out.tokens[0] == 2  # [CLS] [SEP]
    assert out.tokens[1] == embedder.max_tokens == 256


def test_an_empty_call_returns_no_vectors(embedder):
    assert embedder.embed([]).vectors.shape == (0, embedder.dimension)


def test_a_directory_that_is_not_a_model_is_refused(tmp_path):
    with pytest.raises(ModelUnavailable, match="not a sentence-transformers model directory"):
        Embedder(tmp_path, device="cpu")


def test_texts_split_over_several_passes_come_back_in_order(embedder):
    alone = np.vstack([embedder.embed([text]).vectors for text in MIXED])
    chunk, embedder.chunk = embedder.chunk, 2
    try:
        out = embedder.embed(MIXED)
    finally:
        embedder.chunk = chunk
    assert np.abs(out.vectors - alone).max() <= 1e-5
