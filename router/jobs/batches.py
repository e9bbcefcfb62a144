"""OpenAI's Files and Batches API, served by the router for self-hosted models.

    POST /v1/files                 multipart: file (JSONL), purpose=batch      -> file object
    GET  /v1/files, /v1/files/{id}, /v1/files/{id}/content; DELETE /v1/files/{id}
    POST /v1/batches               {input_file_id, endpoint, completion_window, metadata} -> batch object
    GET  /v1/batches, /v1/batches/{id}; POST /v1/batches/{id}/cancel

Each line of the input file is a request `{"custom_id", "method": "POST",
"url": <the batch's endpoint>, "body": {...}}`. Creating a batch validates
every line first (a malformed file fails the batch with an error per line,
naming it); then each line becomes a job (router.jobs.store) with the
batch's id, its custom_id and its line number, run by the job runner like
any other job, with the credentials of the request that created the batch.

Every file and batch belongs to the credential that made it (router.jobs.tenants),
and so do a batch's lines and its output files: another credential gets 404,
and a batch can only be made from its creator's own file. The admin API
sees them all (`EVERY_OWNER`).

Statuses: validating -> in_progress -> finalizing -> completed; failed (the
file did not validate); expired (the completion window ran out: lines not yet
started are dropped, the finished ones are kept); cancelling -> cancelled.
A sweep (every SWEEP_S) moves batches on: once no line is queued or running,
it writes the output file (lines that succeeded) and the error file (the
rest) and completes the batch. One bad line never fails the batch.

What must not live here: storage (router.jobs.batch_store, router.jobs.store),
running lines (router.jobs.runner).
"""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from aiohttp import BodyPartReader, MultipartReader, web
from aiohttp.http_exceptions import HttpProcessingError

from router.errors import ProxyError, bad_request, request_timeout
from router.intake import read_body
from router.jobs.batch_store import BatchRecord, BatchStore, FileRecord, LineOutcome, NewLine, NotCancellable
from router.jobs.database import EVERY_OWNER, Owner
from router.jobs.files import TooLarge

FILES = "/v1/files"
BATCHES = "/v1/batches"
SWEEP_S = 0.5
ENDPOINTS = ("/v1/embeddings", "/v1/chat/completions", "/v1/completions")
WINDOWS = {"24h": 86400.0}
MAX_LINES = 50_000  # OpenAI's limit per batch


def not_found(kind: str, ident: str) -> ProxyError:
    return ProxyError(404, f"{kind}_not_found", f"no {kind} {ident!r}")


class OpenAIBatches:
    def __init__(
        self,
        store: Callable[[], Awaitable[BatchStore]],
        clock: Callable[[], float],
        *,
        max_file_bytes: int,
        max_body_bytes: int,
        receive_timeout_s: float,
    ):
        self.store = store  # opens the job store on first use
        self.clock = clock
        self.max_file_bytes = max_file_bytes
        self.max_body_bytes = max_body_bytes  # of a request other than an upload
        self.receive_timeout_s = receive_timeout_s  # an upload may take longer: this is the longest stall

    @staticmethod
    def serves(path: str) -> bool:
        return path == FILES or path.startswith(FILES + "/") or path == BATCHES or path.startswith(BATCHES + "/")

    async def handle(
        self, request: web.BaseRequest, owner: Owner, credentials: list[tuple[str, str]]
    ) -> web.StreamResponse:
        parts = request.rel_url.path.strip("/").split("/")[1:]  # ["files", id?, "content"?]
        kind, rest, method = parts[0], parts[1:], request.method
        if kind == "files":
            if not rest and method == "POST" and isinstance(owner, str):  # the admin's view stores nothing
                return _json(await self._upload(request, owner))
            if not rest and method == "GET":
                return _json(await self._list("files", request, owner))
            if len(rest) == 1 and method in ("GET", "DELETE"):
                return _json(await self._file(rest[0], owner, delete=method == "DELETE"))
            if rest[1:] == ["content"] and method == "GET":
                return await self._content(request, rest[0], owner)
        else:
            if not rest and method == "POST" and isinstance(owner, str):
                return _json(await self._create(request, owner, credentials))
            if not rest and method == "GET":
                return _json(await self._list("batches", request, owner))
            if len(rest) == 1 and method == "GET":
                return _json(await self._batch(rest[0], owner))
            if rest[1:] == ["cancel"] and method == "POST":
                return _json(await self._cancel(rest[0], owner))
        raise ProxyError(404, "not_found", f"no such operation: {method} {request.rel_url.path}")

    # Files.

    async def _upload(self, request: web.BaseRequest, owner: str) -> dict[str, Any]:
        if not request.content_type.startswith("multipart/"):
            raise bad_request("upload a file as multipart/form-data with the fields 'file' and 'purpose'")
        store = await self.store()
        files = store.files
        file_id = f"file-{secrets.token_hex(12)}"
        purpose, filename, size = None, None, None
        # The reader's own limit is for the small fields; the file streams to disk under max_file_bytes.
        reader = MultipartReader(
            request.headers, request.content, client_max_size=_MAX_FIELD_BYTES, max_size_error_cls=_FieldTooLarge
        )
        try:
            while (field := await reader.next()) is not None:
                if not isinstance(field, BodyPartReader):
                    raise bad_request("a file upload is one flat multipart/form-data body, not nested parts")
                if field.name == "purpose":
                    purpose = (await field.read()).decode(errors="replace")
                elif field.name == "file" and size is None:
                    filename = field.filename or "upload.jsonl"
                    size = await files.receive(
                        file_id,
                        _chunks(field),
                        limit=self.max_file_bytes,
                        stall_s=self.receive_timeout_s,
                        on_stall=lambda: request_timeout(self.receive_timeout_s),
                    )
                else:
                    await field.release()
        except TooLarge:
            raise file_too_large(self.max_file_bytes) from None
        except (ValueError, HttpProcessingError) as exc:  # a malformed body: boundaries, part headers
            await files.remove(file_id)
            raise bad_request(f"the multipart body could not be read: {exc}") from None
        except BaseException:
            await asyncio.shield(files.remove(file_id))
            raise
        if size is None or purpose is None or purpose != "batch":
            await files.remove(file_id)
            if size is None or purpose is None:
                raise bad_request("a file upload needs the multipart fields 'file' and 'purpose'")
            raise bad_request(f"purpose must be 'batch' (the only kind of file this router keeps), got {purpose!r}")
        record = FileRecord(file_id, int(self.clock()), filename or "upload.jsonl", purpose, size, owner)
        return _file_object(await store.put_file(record), owner)

    async def _file(self, file_id: str, owner: Owner, *, delete: bool) -> dict[str, Any]:
        store = await self.store()
        if delete:
            if not await store.delete_file(file_id, owner):
                raise not_found("file", file_id)
            await store.files.remove(file_id)
            return {"id": file_id, "object": "file", "deleted": True}
        found = await store.file(file_id, owner)
        if found is None:
            raise not_found("file", file_id)
        return _file_object(found, owner)

    async def _content(self, request: web.BaseRequest, file_id: str, owner: Owner) -> web.StreamResponse:
        """The file's bytes, streamed as they are read (a directory's file or the database's chunks)."""
        store = await self.store()
        found = await store.file(file_id, owner)
        if found is None:
            raise not_found("file", file_id)
        chunks = store.files.chunks(file_id)
        try:
            first = await anext(chunks, b"")
        except FileNotFoundError:  # deleted since
            raise not_found("file", file_id) from None
        response = web.StreamResponse(headers={"Content-Type": "application/jsonl"})
        response.content_length = found.bytes
        await response.prepare(request)
        await response.write(first)
        async for chunk in chunks:
            await response.write(chunk)
        await response.write_eof()
        return response

    async def _list(self, kind: str, request: web.BaseRequest, owner: Owner) -> dict[str, Any]:
        try:
            limit = min(max(int(request.query.get("limit", "20")), 1), 100)
        except ValueError:
            raise bad_request("limit must be a whole number from 1 to 100") from None
        store = await self.store()
        if kind == "files":
            data = [_file_object(found, owner) for found in await store.files_of(owner, limit)]
        else:
            data = [_batch_object(found, owner) for found in await store.batches(owner, limit)]
        return {"object": "list", "data": data, "has_more": len(data) == limit}

    # Batches.

    async def _create(self, request: web.BaseRequest, owner: str, credentials: list[tuple[str, str]]) -> dict[str, Any]:
        body = await read_body(request, limit=self.max_body_bytes, timeout_s=self.receive_timeout_s)
        try:
            asked = json.loads(body or b"{}")
        except ValueError as exc:
            raise bad_request(f"the body must be JSON: {exc}") from None
        if not isinstance(asked, dict):
            raise bad_request("the body must be a JSON object")
        endpoint, window = asked.get("endpoint"), asked.get("completion_window", "24h")
        if endpoint not in ENDPOINTS:
            raise bad_request(f"endpoint must be one of {', '.join(ENDPOINTS)}, got {endpoint!r}")
        if window not in WINDOWS:
            raise bad_request(f"completion_window must be one of {', '.join(WINDOWS)}, got {window!r}")
        store = await self.store()
        input_file_id = str(asked.get("input_file_id"))
        if await store.file(input_file_id, owner) is None:  # nobody runs lines from another tenant's file
            raise not_found("file", input_file_id)
        try:
            content = await store.files.read(input_file_id)
            lines, problems = await asyncio.to_thread(_read_lines, content, endpoint)
        except FileNotFoundError:  # deleted since
            raise not_found("file", input_file_id) from None
        now = self.clock()
        fields = {
            "endpoint": endpoint,
            "input_file_id": input_file_id,
            "completion_window": window,
            "metadata": asked.get("metadata"),
            "created_at": int(now),
            "expires_at": int(now + WINDOWS[window]),
            "in_progress_at": None if problems else int(now),
            "finalizing_at": None,
            "completed_at": None,
            "failed_at": int(now) if problems else None,
            "expired_at": None,
            "cancelling_at": None,
            "cancelled_at": None,
            "output_file_id": None,
            "error_file_id": None,
            "errors": {"object": "list", "data": problems} if problems else None,
        }
        created = await store.create_batch(
            f"batch_{secrets.token_hex(12)}",
            now,
            fields,
            owner,
            endpoint=endpoint,
            lines=[] if problems else lines,
            credentials=credentials,
            failed=bool(problems),
        )
        return _batch_object(created, owner)

    async def _batch(self, batch_id: str, owner: Owner) -> dict[str, Any]:
        found = await (await self.store()).batch(batch_id, owner)
        if found is None:
            raise not_found("batch", batch_id)
        return _batch_object(found, owner)

    async def _cancel(self, batch_id: str, owner: Owner) -> dict[str, Any]:
        try:
            found = await (await self.store()).cancel_batch(batch_id, owner, self.clock())
        except NotCancellable as exc:
            raise ProxyError(409, "batch_not_cancellable", f"batch {batch_id} is {exc.status}") from None
        if found is None:
            raise not_found("batch", batch_id)
        return _batch_object(found, owner)

    async def sweep(self) -> None:
        """Expire batches past their window; finish those with no line left to run."""
        await (await self.store()).sweep(self.clock(), _render)


_MAX_FIELD_BYTES = 64 * 2**10  # a form field other than the file (purpose)
_LINE_HEADERS = json.dumps([("Content-Type", "application/json")])


def file_too_large(limit: int) -> ProxyError:
    return ProxyError(
        413, "file_too_large", f"the file is larger than the limit of {limit} bytes (jobs.max_file_bytes)"
    )


class _FieldTooLarge(ProxyError):
    """What the multipart reader raises for a small field past its limit (it is given the class)."""

    def __init__(self, limit: int):
        super().__init__(413, "field_too_large", f"a form field other than 'file' is larger than {limit} bytes")


async def _chunks(field: BodyPartReader) -> AsyncIterator[bytes]:
    while chunk := await field.read_chunk(_CHUNK_BYTES):
        yield chunk


_CHUNK_BYTES = 256 * 2**10


def _json(body: dict[str, Any]) -> web.Response:
    return web.json_response(body)


def _file_object(found: FileRecord, viewer: Owner) -> dict[str, Any]:
    """A file as OpenAI shows it; the admin API also sees its owner."""
    out = {
        "id": found.id,
        "object": "file",
        "bytes": found.bytes,
        "created_at": int(found.created_at),
        "filename": found.filename,
        "purpose": found.purpose,
        "status": "processed",
    }
    if viewer is EVERY_OWNER:
        out["owner"] = found.owner
    return out


def _batch_object(found: BatchRecord, viewer: Owner) -> dict[str, Any]:
    """A batch as OpenAI shows it; the admin API also sees its owner."""
    counts = {"total": found.counts.total, "completed": found.counts.completed, "failed": found.counts.failed}
    out = {"id": found.id, "object": "batch", "status": found.status, **found.fields, "request_counts": counts}
    if viewer is EVERY_OWNER:
        out["owner"] = found.owner
    return out


def _read_lines(content: bytes, endpoint: str) -> tuple[list[NewLine], list[dict[str, Any]]]:
    """Each line's request, or the problems, each naming its line."""
    lines, problems, seen = [], [], set()

    def problem(number: int, code: str, message: str) -> None:
        problems.append({"code": code, "message": f"line {number}: {message}", "line": number, "param": None})

    for number, raw in enumerate(content.decode("utf-8", errors="replace").splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            line = json.loads(raw)
        except ValueError as exc:
            problem(number, "invalid_json_line", f"not JSON ({exc})")
            continue
        if not isinstance(line, dict) or not isinstance(line.get("custom_id"), str) or not line["custom_id"]:
            problem(number, "missing_custom_id", "each line needs a non-empty string custom_id")
            continue
        if line["custom_id"] in seen:
            problem(number, "duplicate_custom_id", f"custom_id {line['custom_id']!r} is used on an earlier line")
        elif line.get("method", "POST") != "POST":
            problem(number, "invalid_method", f"method must be POST, got {line.get('method')!r}")
        elif line.get("url") != endpoint:
            problem(number, "mismatched_url", f"url must be the batch's endpoint {endpoint}, got {line.get('url')!r}")
        elif not isinstance(line.get("body"), dict):
            problem(number, "missing_body", "each line needs a JSON object body")
        else:
            lines.append(NewLine(number, line["custom_id"], json.dumps(line["body"]).encode()))
        seen.add(line["custom_id"])
    if not lines and not problems:
        problem(0, "empty_file", "the input file has no requests")
    if len(lines) > MAX_LINES:
        problem(0, "too_many_lines", f"a batch holds at most {MAX_LINES} requests, this file has {len(lines)}")
    return lines, problems


def _render(batch: BatchRecord, outcomes: list[LineOutcome]) -> dict[str, bytes]:
    """A finished batch's output file (lines that succeeded) and error file (the others), OpenAI's line shape."""
    output, errors = [], []
    for line in outcomes:
        response = None
        if line.status_code is not None:
            body = line.response_body or b""
            try:
                parsed = json.loads(body or b"null")
            except ValueError:
                parsed = body.decode(errors="replace")
            response = {"status_code": line.status_code, "request_id": line.job_id, "body": parsed}
        if line.state == "succeeded":
            output.append({"id": line.job_id, "custom_id": line.custom_id, "response": response, "error": None})
            continue
        try:
            reason = json.loads(line.error) if line.error and line.error.startswith("{") else None
        except ValueError:
            reason = None
        reason = reason or {"code": "request_failed", "message": line.error or line.state}
        errors.append({"id": line.job_id, "custom_id": line.custom_id, "response": response, "error": reason})
    return {
        kind: "".join(json.dumps(line) + "\n" for line in lines).encode()
        for kind, lines in (("output", output), ("error", errors))
        if lines
    }
