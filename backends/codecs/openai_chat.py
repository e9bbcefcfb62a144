"""`openai-chat`: chat completions pass through unmerged; their token usage is read for cost.

LLM servers batch for themselves (continuous batching), so the router never
merges chat requests. What it needs from them is the token count, for
per-token prices: a whole answer carries `usage` (`prompt_tokens`,
`completion_tokens`); a stream carries it in its last `data:` event when the
client asked for `stream_options: {"include_usage": true}` (vLLM and OpenAI
both honour it). The router does not add that option itself: the extra event
would change what the client receives. Without it a stream is charged by
its busy time alone.

`StreamUsage` reads a server-sent event stream chunk by chunk, looking only
at events that mention "usage", so the common chunk costs two byte scans.
"""

from __future__ import annotations

import json

from backends.codecs.base import Codec

Usage = tuple[int, int]  # (prompt tokens, completion tokens)


def usage_in(payload: object) -> Usage | None:
    usage = payload.get("usage") if isinstance(payload, dict) else None
    if not isinstance(usage, dict):
        return None
    prompt, completion = usage.get("prompt_tokens", 0), usage.get("completion_tokens", 0)
    if not (isinstance(prompt, int) and isinstance(completion, int)):
        return None
    return prompt, completion


class StreamUsage:
    """The usage of a chat completion stream, from its events as they pass."""

    _MARK = b'"usage"'

    def __init__(self) -> None:
        self.usage: Usage | None = None
        self._partial = b""  # an event line cut by a chunk boundary

    def feed(self, chunk: bytes) -> None:
        data = self._partial + chunk if self._partial else chunk
        whole = data.rfind(b"\n") + 1  # events end with a newline; keep what follows the last one
        self._partial = data[whole:] if len(data) - whole <= 1 << 20 else b""  # not SSE after all: drop
        if self._MARK not in data:
            return
        for line in data[:whole].split(b"\n"):
            if line.startswith(b"data:") and self._MARK in line:
                try:
                    found = usage_in(json.loads(line[5:]))
                except ValueError:
                    continue
                if found is not None:
                    self.usage = found


class OpenAIChatCodec(Codec):
    name = "openai-chat"
    batchable = False

    def usage(self, body: bytes) -> Usage | None:
        try:
            return usage_in(json.loads(body))
        except ValueError:
            return None

    def stream_usage(self) -> StreamUsage:
        return StreamUsage()
