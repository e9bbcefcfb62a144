"""`kserve-v2`: KServe v2 / Triton infer requests merged along the batch dimension.

A request merges when every input is JSON (no binary tensor extension), its
first dimension is the batch, and the data are flat or nested lists. Parts
merge when their inputs agree in names, datatypes and the shape after the
first dimension, and they ask for the same outputs and parameters. The
merged answer's outputs are cut back by rows: an output of shape
[N, d1, d2, ...] gives each part its own rows of d1*d2*... values, with the
part's own request id.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any

from backends.codecs.base import Codec, CodecError, Part, Reply, estimated_tokens


def _flat(data: Any) -> list[Any] | None:
    if not isinstance(data, list):
        return None
    if data and isinstance(data[0], list):
        out: list[Any] = []
        for row in data:
            sub = _flat(row)
            if sub is None:
                return None
            out.extend(sub)
        return out
    return data


class KServeV2Codec(Codec):
    name = "kserve-v2"
    batchable = True

    def read(self, body: bytes) -> Part | None:
        try:
            payload = json.loads(body)
        except ValueError:
            return None  # binary tensors (Inference-Header-Content-Length) or not JSON: pass through
        inputs = payload.get("inputs") if isinstance(payload, dict) else None
        if not isinstance(inputs, list) or not inputs:
            return None
        tensors = []
        batch = None
        for tensor in inputs:
            if not isinstance(tensor, dict) or "parameters" in tensor:
                return None
            shape, data = tensor.get("shape"), _flat(tensor.get("data"))
            if not (isinstance(shape, list) and shape and all(isinstance(d, int) and d >= 0 for d in shape)):
                return None
            if data is None or len(data) != math.prod(shape) or (batch is not None and shape[0] != batch):
                return None
            batch = shape[0]
            tensors.append((tensor.get("name"), tensor.get("datatype"), shape, data))
        if not batch:
            return None
        layout = [(name, datatype, shape[1:]) for name, datatype, shape, _ in tensors]
        rest = {k: v for k, v in payload.items() if k not in ("inputs", "id")}
        try:
            key = json.dumps([layout, rest], sort_keys=True)
        except (TypeError, ValueError):
            return None
        return Part(
            key=key,
            items=batch,
            inputs=(tensors, rest, payload.get("id")),
            weight=float(batch),
            tokens=estimated_tokens(len(body)),
        )

    def merge(self, parts: Sequence[Part]) -> bytes:
        first_tensors, rest, _ = parts[0].inputs
        total = sum(part.items for part in parts)
        inputs = []
        for position, (name, datatype, shape, _) in enumerate(first_tensors):
            data = [value for part in parts for value in part.inputs[0][position][3]]
            inputs.append({"name": name, "datatype": datatype, "shape": [total, *shape[1:]], "data": data})
        return json.dumps({**rest, "inputs": inputs}, separators=(",", ":")).encode()

    def split(self, body: bytes, parts: Sequence[Part]) -> list[Reply]:
        try:
            answer = json.loads(body)
            outputs = answer["outputs"]
            layouts = [(o, o["shape"], _flat(o["data"])) for o in outputs]
        except (ValueError, KeyError, TypeError) as exc:
            raise CodecError(f"the merged infer answer is malformed: {exc!r}") from None
        total = sum(part.items for part in parts)
        batched: list[tuple[dict[str, Any], list[int], list[Any]]] = []
        for output, shape, data in layouts:
            if not shape or shape[0] != total or data is None or len(data) != math.prod(shape):
                raise CodecError(f"output {output.get('name')!r} has shape {shape}, not a batch of {total}")
            batched.append((output, shape, data))
        replies = []
        start = 0
        for part in parts:
            own_outputs = []
            for output, shape, data in batched:
                row = math.prod(shape[1:])
                rows = data[start * row : (start + part.items) * row]
                own_outputs.append({**output, "shape": [part.items, *shape[1:]], "data": rows})
            start += part.items
            own = {k: v for k, v in answer.items() if k not in ("outputs", "id")}
            if part.inputs[2] is not None:
                own["id"] = part.inputs[2]
            own["outputs"] = own_outputs
            replies.append(Reply(200, json.dumps(own, separators=(",", ":")).encode()))
        return replies
