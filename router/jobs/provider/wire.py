"""What a provider client gives the bridge, whichever provider it speaks to.

A client (router.jobs.provider.openai, .anthropic) turns gathered lines into
a batch at its provider, tells how the batch stands, reads its results and
cancels it. Each line's result is a `LineResult`: an answer to store (a 2xx
or a 4xx that is the request's own fault), or `rerun` (expired, cancelled,
or a failure that another lane may not have: 408, 429, 5xx), which the
bridge runs on the fallback lane.

Provider calls raise `ProviderError`; `transient` says whether trying again
later can help (connection failures, 408, 429, 5xx), `unsupported` whether
the server has no such call at all (404, 405, 501: a listing some servers
do not offer). Nothing here keeps state; what must be remembered across a
restart is in the job store.

Result files can be hundreds of megabytes: `lines_of` reads one as it
streams in, a chunk at a time, and `parsed_lines` parses each line (a large
one in a worker thread, so the event loop keeps serving), so the memory a
file takes is a chunk and a line, whatever its size.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp

from router.jobs.runner import transient


@dataclass(frozen=True, slots=True)
class Line:
    """One job, as a line of a batch: its custom_id (the job id), the path it calls, its JSON body."""

    custom_id: str
    url: str
    body: dict[str, Any]


@dataclass(frozen=True, slots=True)
class LineResult:
    custom_id: str
    status: int | None  # the answer's status; None when there is no answer to store
    body: bytes | None
    rerun: bool  # no answer the job should end with: run it on the fallback lane
    error: str | None = None  # why, in words
    input_tokens: int = 0
    output_tokens: int = 0


@dataclass(frozen=True, slots=True)
class RemoteState:
    status: str  # the provider's own word: in_progress, completed, expired, ended, ...
    ended: bool  # no line will change any more: results can be read


class ProviderError(Exception):
    def __init__(self, message: str, *, status: int | None = None):
        super().__init__(message)
        self.status = status

    @property
    def transient(self) -> bool:
        return self.status is None or transient(self.status)

    @property
    def unsupported(self) -> bool:
        return self.status in UNSUPPORTED


UNSUPPORTED = frozenset((404, 405, 501))
CHUNK_BYTES = 1 << 20  # read from a result file at a time
MAX_LINE_BYTES = 64 << 20  # a longer line is no answer anyone sent: the file is refused
THREAD_LINE_BYTES = 256 << 10  # a line this long is parsed off the event loop
YIELD_EVERY = 200  # lines parsed on the loop between two chances for other tasks to run
MALFORMED = None  # what parsed_lines yields for a line that is not a JSON object


async def checked_json(response: aiohttp.ClientResponse, what: str) -> dict[str, Any]:
    """The JSON object of a provider's 2xx answer; ProviderError (with the provider's message) otherwise."""
    text = await response.text()
    if response.status >= 300:
        raise ProviderError(f"{what}: {response.status} {_message(text)}", status=response.status)
    try:
        payload = json.loads(text)
    except ValueError:
        raise ProviderError(f"{what}: the answer is not JSON: {text[:200]!r}", status=response.status) from None
    if not isinstance(payload, dict):
        raise ProviderError(f"{what}: expected a JSON object, got {text[:200]!r}", status=response.status)
    return payload


async def checked_bytes(response: aiohttp.ClientResponse, what: str) -> bytes:
    body = await response.read()
    if response.status >= 300:
        raise ProviderError(
            f"{what}: {response.status} {_message(body.decode(errors='replace'))}", status=response.status
        )
    return body


def _message(text: str) -> str:
    try:
        error = json.loads(text).get("error")
        return str(error.get("message") if isinstance(error, Mapping) else error)
    except (ValueError, AttributeError):
        return text[:200]


async def lines_of(response: aiohttp.ClientResponse, what: str) -> AsyncIterator[bytes]:
    """The non-blank lines of a 2xx answer's body as they stream in; ProviderError for an error answer."""
    if response.status >= 300:
        await checked_bytes(response, what)
    pending = b""
    async for chunk in response.content.iter_chunked(CHUNK_BYTES):
        pending += chunk
        *complete, pending = pending.split(b"\n")
        for line in complete:
            if line.strip():
                yield line
        if len(pending) > MAX_LINE_BYTES:
            raise ProviderError(f"{what}: a line longer than {MAX_LINE_BYTES} bytes", status=response.status)
    if pending.strip():
        yield pending


async def parsed_lines(lines: AsyncIterator[bytes]) -> AsyncIterator[dict[str, Any] | None]:
    """Each line as a JSON object, or MALFORMED (None) for a line that is not one."""
    since_yield = 0
    async for raw in lines:
        if len(raw) >= THREAD_LINE_BYTES:
            item = await asyncio.to_thread(_object, raw)
        else:
            item = _object(raw)
            since_yield += 1
            if since_yield >= YIELD_EVERY:
                since_yield = 0
                await asyncio.sleep(0)
        yield item


def _object(raw: bytes) -> dict[str, Any] | None:
    try:
        item = json.loads(raw)
    except ValueError:
        return MALFORMED
    return item if isinstance(item, dict) else MALFORMED


def tokens_of(body: dict[str, Any]) -> tuple[int, int]:
    """(input, output) tokens of an answer body: OpenAI's usage (prompt/completion) or Anthropic's (input/output)."""
    usage = body.get("usage") if isinstance(body, dict) else None
    if not isinstance(usage, dict):
        return 0, 0
    first = usage.get("prompt_tokens", usage.get("input_tokens", 0))
    second = usage.get("completion_tokens", usage.get("output_tokens", 0))
    return (first if isinstance(first, int) else 0), (second if isinstance(second, int) else 0)
