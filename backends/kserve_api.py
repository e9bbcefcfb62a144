"""The KServe v2 (Open Inference Protocol) shapes the reference server speaks.

An embedding model takes one BYTES input of shape [N] (or [N, 1]) holding N
texts and answers one FP32 output `embedding` of shape [N, dimension], data
flattened in row-major order. Errors are `{"error": message}`, as the
protocol specifies.

Used by the reference model server and by the router's KServe codec.
What must not live here: HTTP handling, batching.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from backends.openai_api import MAX_INPUTS

INPUT_NAME = "text"
OUTPUT_NAME = "embedding"


class InferError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message

    def body(self) -> dict[str, str]:
        return {"error": self.message}


def parse_infer_texts(payload: Any) -> tuple[list[str], str | None]:
    """The texts of a v2 infer request for a text model, and its id."""
    if not isinstance(payload, dict) or not isinstance(payload.get("inputs"), list):
        raise InferError(400, "the body must be a JSON object with an `inputs` list")
    inputs = payload["inputs"]
    if len(inputs) != 1 or not isinstance(inputs[0], dict):
        raise InferError(400, f"expected exactly one input tensor ({INPUT_NAME!r}, BYTES), got {len(inputs)}")
    tensor = inputs[0]
    if tensor.get("datatype") != "BYTES":
        raise InferError(400, f"input {tensor.get('name')!r} must have datatype BYTES, got {tensor.get('datatype')!r}")
    shape = tensor.get("shape")
    if not (isinstance(shape, list) and len(shape) in (1, 2) and all(isinstance(d, int) for d in shape)):
        raise InferError(400, f"input shape must be [N] or [N, 1], got {shape!r}")
    if len(shape) == 2 and shape[1] != 1:
        raise InferError(400, f"input shape must be [N] or [N, 1], got {shape!r}")
    data = tensor.get("data")
    if isinstance(data, list) and data and isinstance(data[0], list):
        data = [x for row in data for x in row]
    if not isinstance(data, list) or not all(isinstance(x, str) for x in data):
        raise InferError(400, "input data must be a list of strings")
    if len(data) != shape[0]:
        raise InferError(400, f"input shape says {shape[0]} items but data holds {len(data)}")
    if not 1 <= len(data) <= MAX_INPUTS:
        raise InferError(400, f"an infer request holds 1 to {MAX_INPUTS} texts, got {len(data)}")
    request_id = payload.get("id")
    return data, request_id if isinstance(request_id, str) else None


def infer_response(model: str, vectors: np.ndarray, request_id: str | None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model_name": model,
        "model_version": "1",
        "outputs": [
            {
                "name": OUTPUT_NAME,
                "shape": list(vectors.shape),
                "datatype": "FP32",
                "data": vectors.reshape(-1).tolist(),
            }
        ],
    }
    if request_id is not None:
        body["id"] = request_id
    return body


def model_metadata(model: str, dimension: int) -> dict[str, Any]:
    return {
        "name": model,
        "versions": ["1"],
        "platform": "pytorch",
        "inputs": [{"name": INPUT_NAME, "datatype": "BYTES", "shape": [-1]}],
        "outputs": [{"name": OUTPUT_NAME, "datatype": "FP32", "shape": [-1, dimension]}],
    }
