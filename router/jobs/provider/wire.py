"""What a provider client gives the bridge, whichever provider it speaks to.

A client (router.jobs.provider.openai, .anthropic) turns gathered lines into
a batch at its provider, tells how the batch stands, reads its results and
cancels it. Each line's result is a `LineResult`: an answer to store (a 2xx
or a 4xx that is the request's own fault), or `rerun` (expired, cancelled,
or a failure that another lane may not have: 408, 429, 5xx), which the
bridge runs on the fallback lane.

Provider calls raise `ProviderError`; `transient` says whether trying again
later can help (connection failures, 408, 429, 5xx). Nothing here keeps
state; what must be remembered across a restart is in the job store.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass

import aiohttp

from router.jobs.runner import transient


@dataclass(frozen=True, slots=True)
class Line:
    """One job, as a line of a batch: its custom_id (the job id), the path it calls, its JSON body."""

    custom_id: str
    url: str
    body: dict


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


async def checked_json(response: aiohttp.ClientResponse, what: str) -> dict:
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


def jsonl(content: bytes) -> list[dict]:
    """The JSON objects of a JSONL file (blank lines skipped; a line that is not an object is skipped too)."""
    out = []
    for raw in content.splitlines():
        if raw.strip():
            try:
                item = json.loads(raw)
            except ValueError:
                continue
            if isinstance(item, dict):
                out.append(item)
    return out


def tokens_of(body: dict) -> tuple[int, int]:
    """(input, output) tokens of an answer body: OpenAI's usage (prompt/completion) or Anthropic's (input/output)."""
    usage = body.get("usage") if isinstance(body, dict) else None
    if not isinstance(usage, dict):
        return 0, 0
    first = usage.get("prompt_tokens", usage.get("input_tokens", 0))
    second = usage.get("completion_tokens", usage.get("output_tokens", 0))
    return (first if isinstance(first, int) else 0), (second if isinstance(second, int) else 0)
