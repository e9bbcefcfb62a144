"""OpenAI's Batch API: a JSONL input file (Files API), a batch made from it, its output and error files.

    POST /v1/files                  multipart: file=<our batch id>.jsonl, purpose=batch -> {id}
    POST /v1/batches                {input_file_id, endpoint, completion_window, metadata} -> {id, status}
    GET  /v1/batches/{id}           status: validating, in_progress, finalizing, completed, failed,
                                    expired, cancelling, cancelled; output_file_id, error_file_id
    GET  /v1/files/{id}/content     output and error lines: {custom_id, response: {status_code, body}, error}
    POST /v1/batches/{id}/cancel

Nothing is made twice after a crash: the input file is named after our
batch id and the batch carries it in `metadata.modeshift_batch`, so a
restarted router finds what it made before (`find`, `stage`) instead of
uploading again. Lines that expired or were cancelled (`batch_expired`,
`batch_cancelled`), and lines answered 408, 429 or 5xx, are given back to
run elsewhere; any other answer is the line's own.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp

from router.jobs.provider.wire import (
    Line,
    LineResult,
    ProviderError,
    RemoteState,
    checked_json,
    lines_of,
    parsed_lines,
    tokens_of,
)
from router.jobs.runner import transient

ENDED = frozenset(("completed", "failed", "expired", "cancelled"))
RERUN_CODES = frozenset(("batch_expired", "batch_cancelled"))
ENDPOINTS = ("/v1/chat/completions", "/v1/embeddings", "/v1/completions", "/v1/responses")
_LISTED = 100  # files or batches looked through for one made before a crash


class OpenAIBatchApi:
    api = "openai"
    endpoints = ENDPOINTS

    def __init__(self, session: aiohttp.ClientSession, base: str, completion_window: str):
        self.session = session
        self.base = base.rstrip("/")
        self.window = completion_window

    def encode(self, line: Line) -> bytes:
        record = {"custom_id": line.custom_id, "method": "POST", "url": line.url, "body": line.body}
        return json.dumps(record, separators=(",", ":")).encode() + b"\n"

    async def find(self, batch_id: str, headers: list[tuple[str, str]]) -> str | None:
        """The provider's batch made for `batch_id` before a crash, if any (none found on a server that cannot
        list: the look is only for what a crash left half-made)."""
        listing = await self._listing("/v1/batches", {"limit": _LISTED}, headers, "listing batches")
        for batch in listing.get("data") or []:
            if isinstance(batch, dict) and (batch.get("metadata") or {}).get("modeshift_batch") == batch_id:
                return str(batch["id"])
        return None

    async def stage(self, batch_id: str, content: bytes, headers: list[tuple[str, str]], staged: str | None) -> str:
        """The input file's id: the one stored, one uploaded before a crash (by its name), or a new upload."""
        if staged:
            return staged
        name = f"{batch_id}.jsonl"
        listing = await self._listing("/v1/files", {"purpose": "batch"}, headers, "listing files")
        for file in listing.get("data") or []:
            if isinstance(file, dict) and file.get("filename") == name and file.get("bytes") == len(content):
                return str(file["id"])
        form = aiohttp.FormData()
        form.add_field("purpose", "batch")
        form.add_field("file", content, filename=name, content_type="application/jsonl")
        async with self.session.post(f"{self.base}/v1/files", data=form, headers=headers) as r:
            return str((await checked_json(r, "uploading the batch file"))["id"])

    async def create(
        self, batch_id: str, endpoint: str, content: bytes, staged: str | None, headers: list[tuple[str, str]]
    ) -> str:
        body = {
            "input_file_id": staged,
            "endpoint": endpoint,
            "completion_window": self.window,
            "metadata": {"modeshift_batch": batch_id},
        }
        async with self.session.post(f"{self.base}/v1/batches", json=body, headers=headers) as r:
            return str((await checked_json(r, "creating the batch"))["id"])

    async def state(self, remote_id: str, headers: list[tuple[str, str]]) -> RemoteState:
        batch = await self._batch(remote_id, headers)
        status = str(batch.get("status"))
        return RemoteState(status, status in ENDED)

    async def results(self, remote_id: str, headers: list[tuple[str, str]]) -> AsyncIterator[LineResult | None]:
        """Each line of the batch's output and error files as it streams in; None for a malformed line."""
        batch = await self._batch(remote_id, headers)
        for key in ("output_file_id", "error_file_id"):
            file_id = batch.get(key)
            if not file_id:
                continue
            async with self.session.get(f"{self.base}/v1/files/{file_id}/content", headers=headers) as r:
                async for item in parsed_lines(lines_of(r, f"reading the batch's {key[:-8]} file")):
                    yield _result(item) if item is not None and isinstance(item.get("custom_id"), str) else None

    async def _listing(
        self, path: str, params: dict[str, Any], headers: list[tuple[str, str]], what: str
    ) -> dict[str, Any]:
        """A listing, or an empty one from a server that does not offer it (404, 405, 501)."""
        async with self.session.get(f"{self.base}{path}", params=params, headers=headers) as r:
            try:
                return await checked_json(r, what)
            except ProviderError as exc:
                if exc.unsupported:
                    return {"data": []}
                raise

    async def cancel(self, remote_id: str, headers: list[tuple[str, str]]) -> None:
        async with self.session.post(f"{self.base}/v1/batches/{remote_id}/cancel", headers=headers) as r:
            await checked_json(r, "cancelling the batch")

    async def _batch(self, remote_id: str, headers: list[tuple[str, str]]) -> dict[str, Any]:
        async with self.session.get(f"{self.base}/v1/batches/{remote_id}", headers=headers) as r:
            batch = await checked_json(r, "reading the batch")
        if batch.get("id") != remote_id:
            raise ProviderError(f"asked for batch {remote_id}, got {batch.get('id')!r}")
        return batch


def _result(item: dict[str, Any]) -> LineResult:
    custom_id = item["custom_id"]
    response = item.get("response")
    error = item.get("error")
    if isinstance(response, dict) and isinstance(response.get("status_code"), int):
        status, body = response["status_code"], response.get("body")
        encoded = json.dumps(body).encode() if not isinstance(body, str) else body.encode()
        if transient(status):
            return LineResult(custom_id, None, None, rerun=True, error=f"the provider answered {status}")
        tokens = tokens_of(body) if status < 300 and isinstance(body, dict) else (0, 0)
        failed = None if status < 300 else f"the provider answered {status}"
        return LineResult(
            custom_id, status, encoded, rerun=False, error=failed, input_tokens=tokens[0], output_tokens=tokens[1]
        )
    code = error.get("code") if isinstance(error, dict) else None
    message = error.get("message") if isinstance(error, dict) else None
    if code in RERUN_CODES or code is None:
        return LineResult(custom_id, None, None, rerun=True, error=f"{code or 'no answer'}: {message}")
    return LineResult(custom_id, None, json.dumps({"error": error}).encode(), rerun=False, error=f"{code}: {message}")
