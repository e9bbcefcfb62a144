"""The OpenAI embeddings wire format: request parsing, responses, and errors.

Shapes follow OpenAI's API reference for POST /v1/embeddings:
request `{"input": str | [str], "model", "encoding_format": "float" | "base64"}`;
response `{"object": "list", "data": [{"object": "embedding", "index", "embedding"}],
"model", "usage": {"prompt_tokens", "total_tokens"}}`; errors
`{"error": {"message", "type", "param", "code"}}`. With "base64" each vector is
its little-endian float32 bytes, base64-encoded (the official Python client
asks for that by default and decodes it).

Used by the reference model server and by the router's embeddings codec.
What must not live here: HTTP handling, batching.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

# OpenAI's own limit on inputs per request.
MAX_INPUTS = 2048


class ApiError(Exception):
    """A request the API refuses, with the status and the OpenAI-shaped body to answer it."""

    def __init__(self, status: int, message: str, *, param: str | None = None, kind: str = "invalid_request_error"):
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.kind = kind

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": None}}


@dataclass(frozen=True, slots=True)
class EmbeddingsRequest:
    texts: list[str]
    model: str | None
    encoding_format: Literal["float", "base64"]


def parse_embeddings_request(payload: Any) -> EmbeddingsRequest:
    if not isinstance(payload, dict):
        raise ApiError(400, "the body must be a JSON object with an `input` field")
    raw = payload.get("input")
    if isinstance(raw, str):
        texts = [raw]
    elif isinstance(raw, list) and raw and all(isinstance(t, str) for t in raw):
        texts = raw
    elif isinstance(raw, list) and raw and all(isinstance(t, int | list) for t in raw):
        raise ApiError(400, "token arrays are not supported here: send the text itself", param="input")
    elif raw is None:
        raise ApiError(400, "`input` is missing: give a string or a list of strings", param="input")
    else:
        raise ApiError(400, "`input` must be a string or a non-empty list of strings", param="input")
    if len(texts) > MAX_INPUTS:
        raise ApiError(400, f"`input` has {len(texts)} items; at most {MAX_INPUTS} per request", param="input")
    encoding = payload.get("encoding_format", "float")
    if encoding not in ("float", "base64"):
        raise ApiError(400, f"`encoding_format` must be 'float' or 'base64', got {encoding!r}", param="encoding_format")
    model = payload.get("model")
    if model is not None and not isinstance(model, str):
        raise ApiError(400, "`model` must be a string", param="model")
    return EmbeddingsRequest(texts, model, encoding)


def encode_vector(vector: np.ndarray, encoding: str) -> list[float] | str:
    if encoding == "base64":
        return base64.b64encode(vector.astype("<f4", copy=False).tobytes()).decode("ascii")
    values: list[float] = vector.tolist()
    return values


def embeddings_response(vectors: np.ndarray, tokens: list[int], *, model: str, encoding: str) -> dict[str, Any]:
    used = int(sum(tokens))
    return {
        "object": "list",
        "data": [
            {"object": "embedding", "index": i, "embedding": encode_vector(vector, encoding)}
            for i, vector in enumerate(vectors)
        ],
        "model": model,
        "usage": {"prompt_tokens": used, "total_tokens": used},
    }
