"""Anthropic's Message Batches: the requests go inline, the results come as one JSONL file.

    POST /v1/messages/batches               {requests: [{custom_id, params}]} -> {id, processing_status}
    GET  /v1/messages/batches/{id}          processing_status: in_progress, canceling, ended; results_url
    GET  /v1/messages/batches/{id}/results  {custom_id, result: {type: succeeded | errored | canceled |
                                            expired, message | error}}
    POST /v1/messages/batches/{id}/cancel

Calls carry `x-api-key` (the jobs' credential) and `anthropic-version`
(the jobs' own, else 2023-06-01). Only /v1/messages jobs can go. A result
`errored` with a transient error type (rate limit, overloaded, api_error),
`canceled` or `expired` is given back to run elsewhere; `errored` with the
request's own error (invalid_request_error, ...) fails the job with the
provider's error and its HTTP status.

A Message Batch has no metadata to find it by after a crash: a crash between
the provider's answer and our commit (milliseconds) can make a second batch
of the same lines; their results map by custom_id, and the first stored
outcome of each job is kept.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp

from router.jobs.provider.wire import (
    Line,
    LineResult,
    RemoteState,
    checked_json,
    lines_of,
    parsed_lines,
    tokens_of,
)
from router.jobs.runner import transient

VERSION = "2023-06-01"
ENDPOINTS = ("/v1/messages",)
ERROR_STATUS = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "billing_error": 402,
    "permission_error": 403,
    "not_found_error": 404,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "api_error": 500,
    "overloaded_error": 529,
}


class AnthropicBatchApi:
    api = "anthropic"
    endpoints = ENDPOINTS

    def __init__(self, session: aiohttp.ClientSession, base: str, completion_window: str):
        self.session = session
        self.base = base.rstrip("/")

    def encode(self, line: Line) -> bytes:
        return json.dumps({"custom_id": line.custom_id, "params": line.body}, separators=(",", ":")).encode() + b"\n"

    async def find(self, batch_id: str, headers: list[tuple[str, str]]) -> str | None:
        return None  # nothing to find it by (see the module docstring)

    async def stage(self, batch_id: str, content: bytes, headers: list[tuple[str, str]], staged: str | None) -> None:
        return None  # the requests go inline

    async def create(
        self, batch_id: str, endpoint: str, content: bytes, staged: str | None, headers: list[tuple[str, str]]
    ) -> str:
        requests = b"[" + b",".join(content.splitlines()) + b"]"
        body = b'{"requests":' + requests + b"}"
        async with self.session.post(
            f"{self.base}/v1/messages/batches", data=body, headers=_with_version(headers, "application/json")
        ) as r:
            return str((await checked_json(r, "creating the message batch"))["id"])

    async def state(self, remote_id: str, headers: list[tuple[str, str]]) -> RemoteState:
        async with self.session.get(
            f"{self.base}/v1/messages/batches/{remote_id}", headers=_with_version(headers)
        ) as r:
            batch = await checked_json(r, "reading the message batch")
        status = str(batch.get("processing_status"))
        return RemoteState(status, status == "ended")

    async def results(self, remote_id: str, headers: list[tuple[str, str]]) -> AsyncIterator[LineResult | None]:
        """Each line of the batch's results as it streams in; None for a malformed line."""
        async with self.session.get(
            f"{self.base}/v1/messages/batches/{remote_id}", headers=_with_version(headers)
        ) as r:
            batch = await checked_json(r, "reading the message batch")
        url = batch.get("results_url") or f"{self.base}/v1/messages/batches/{remote_id}/results"
        async with self.session.get(url, headers=_with_version(headers)) as r:
            async for item in parsed_lines(lines_of(r, "reading the message batch's results")):
                yield _result(item) if item is not None and isinstance(item.get("custom_id"), str) else None

    async def cancel(self, remote_id: str, headers: list[tuple[str, str]]) -> None:
        async with self.session.post(
            f"{self.base}/v1/messages/batches/{remote_id}/cancel", headers=_with_version(headers)
        ) as r:
            await checked_json(r, "cancelling the message batch")


def _with_version(headers: list[tuple[str, str]], content_type: str | None = None) -> list[tuple[str, str]]:
    out = list(headers)
    if not any(name.lower() == "anthropic-version" for name, _ in out):
        out.append(("anthropic-version", VERSION))
    if content_type is not None:
        out.append(("Content-Type", content_type))
    return out


def _result(item: dict[str, Any]) -> LineResult:
    custom_id = item["custom_id"]
    result = _mapping(item.get("result"))
    kind = result.get("type")
    if kind == "succeeded" and isinstance(result.get("message"), dict):
        message = result["message"]
        tokens = tokens_of(message)
        return LineResult(
            custom_id, 200, json.dumps(message).encode(), rerun=False, input_tokens=tokens[0], output_tokens=tokens[1]
        )
    if kind == "errored":
        error = _mapping(result.get("error"))
        nested = error.get("error")
        inner: dict[str, Any] = nested if isinstance(nested, dict) else error
        error_type = str(inner.get("type"))
        status = ERROR_STATUS.get(error_type, 500)
        if transient(status):
            return LineResult(custom_id, None, None, rerun=True, error=f"{error_type}: {inner.get('message')}")
        return LineResult(
            custom_id, status, json.dumps(error).encode(), rerun=False, error=f"{error_type}: {inner.get('message')}"
        )
    return LineResult(custom_id, None, None, rerun=True, error=f"the line was {kind or 'not answered'}")


def _mapping(value: Any) -> dict[str, Any]:
    """`value` when it is a JSON object, else an empty one (a provider's answer is read, not trusted)."""
    return value if isinstance(value, dict) else {}
