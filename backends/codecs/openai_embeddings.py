"""`openai-embeddings`: many POST /v1/embeddings requests as one upstream call.

Parts merge when they name the same model and encoding format and carry
the same extra fields (`dimensions`, `user`): the merged request lists every
part's inputs in order, and the answer's `data` is cut back by position and
re-indexed from 0 for each part. OpenAI-compatible servers report usage only
for the whole call, so each part's `prompt_tokens` is the total apportioned
by the length of its texts; the shares add up to the total exactly.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from backends.codecs.base import Codec, CodecError, Part, Reply, apportion, estimated_tokens
from backends.openai_api import MAX_INPUTS


class OpenAIEmbeddingsCodec(Codec):
    name = "openai-embeddings"
    batchable = True

    def read(self, body: bytes) -> Part | None:
        try:
            payload = json.loads(body)
        except ValueError:
            return None
        if not isinstance(payload, dict):
            return None
        raw = payload.get("input")
        texts = [raw] if isinstance(raw, str) else raw
        if not (isinstance(texts, list) and 0 < len(texts) <= MAX_INPUTS and all(isinstance(t, str) for t in texts)):
            return None  # token arrays, empty or odd input: the upstream answers for itself
        options = {k: v for k, v in payload.items() if k != "input"}
        try:
            key = json.dumps(options, sort_keys=True)
        except (TypeError, ValueError):
            return None
        characters = sum(len(t) for t in texts)
        return Part(
            key=key,
            items=len(texts),
            inputs=(texts, options),
            weight=characters + len(texts),
            tokens=estimated_tokens(characters),
        )

    def merge(self, parts: Sequence[Part]) -> bytes:
        options = parts[0].inputs[1]
        texts = [text for part in parts for text in part.inputs[0]]
        return json.dumps({**options, "input": texts}, separators=(",", ":")).encode()

    def split(self, body: bytes, parts: Sequence[Part]) -> list[Reply]:
        try:
            answer = json.loads(body)
            data = sorted(answer["data"], key=lambda d: d["index"])
            usage = answer.get("usage") or {}
            prompt_tokens = int(usage.get("prompt_tokens", 0))
        except (ValueError, KeyError, TypeError) as exc:
            raise CodecError(f"the merged embeddings answer is malformed: {exc!r}") from None
        expected = sum(part.items for part in parts)
        if len(data) != expected:
            raise CodecError(f"the merged call sent {expected} inputs but the answer holds {len(data)} embeddings")
        shares = apportion(prompt_tokens, [part.weight for part in parts])
        replies = []
        start = 0
        for part, tokens in zip(parts, shares):
            rows = data[start : start + part.items]
            start += part.items
            for index, row in enumerate(rows):
                row["index"] = index
            own = {**answer, "data": rows, "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}
            replies.append(Reply(200, json.dumps(own, separators=(",", ":")).encode(), input_tokens=tokens))
        return replies
