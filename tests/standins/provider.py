"""A loopback stand-in for OpenAI's and Anthropic's APIs, written from their published request and result shapes.

OpenAI:
    POST /v1/chat/completions           sync; echoes `service_tier` (flex answers 429 resource_unavailable
                                        while `flex_capacity` is False)
    POST /v1/files                      multipart file + purpose=batch; GET /v1/files?purpose=; GET .../content
    POST /v1/batches                    {input_file_id, endpoint, completion_window, metadata}
    GET  /v1/batches, /v1/batches/{id}; POST /v1/batches/{id}/cancel
Anthropic:
    POST /v1/messages/batches           {requests: [{custom_id, params}]}
    GET  /v1/messages/batches/{id}, .../results; POST .../cancel

A batch stays in progress for `polls_to_end` reads of it (or until `hold` is
cleared), then ends as `outcome` says: "completed" (every line answered),
or "expired" (the first `answered_before_expiry` lines answered, the rest
expired). A line whose body mentions POISON is answered 400 on its own.
`failing_creates` makes the next batch creations fail with 500.
`listing_status` answers GET /v1/batches and GET /v1/files with that status
(a server that cannot list: 404 or 405). `stray_output_lines` are raw lines
added to every output file (lines for unknown custom_ids, duplicates,
lines that are not JSON). While `tail_held` is set, a file's content is
streamed up to its last 64 KiB and the rest waits until the event is set.
Every call is recorded (`uploads`, `created`, `cancelled`, `chat_tiers`), so a test can
count what the router sent. Calls without a credential get 401.

A test fixture only: nothing in the product imports it.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from dataclasses import dataclass, field

from aiohttp import web

POISON = "POISON"


@dataclass
class StoredBatch:
    id: str
    api: str
    lines: list[dict]  # OpenAI: the input file's lines; Anthropic: the requests
    credential: str
    metadata: dict | None = None
    endpoint: str = "/v1/messages"
    input_file_id: str | None = None
    status: str = "in_progress"
    reads: int = 0
    output_file_id: str | None = None
    error_file_id: str | None = None
    results: list[dict] = field(default_factory=list)  # Anthropic's result lines


class ProviderStandIn:
    def __init__(self) -> None:
        self.polls_to_end = 2
        self.hold = False  # True: batches stay in progress whatever the reads
        self.outcome = "completed"
        self.answered_before_expiry = 0
        self.flex_capacity = True
        self.flex_runs_as = "flex"  # the tier a flex request's answer says it was served at
        self.failing_creates = 0  # batch creations to answer 500 before the next one succeeds
        self.listing_status: int | None = None  # answer listings with this status (a server that cannot list)
        self.stray_output_lines: list[bytes] = []  # raw lines added to every output file
        self.tail_held: asyncio.Event | None = None  # while unset, a file's last 64 KiB waits
        self.streamed_heads = 0  # file contents whose head was sent while the tail waited
        self.files: dict[str, tuple[str, bytes, str]] = {}  # id -> (filename, content, credential)
        self.batches: dict[str, StoredBatch] = {}
        self.uploads: list[str] = []  # filenames, in upload order
        self.created: list[str] = []  # batch ids, in creation order
        self.cancelled: list[str] = []
        self.chat_tiers: list[str | None] = []  # service_tier of each sync chat request
        self._ids = itertools.count(1)
        self.app = web.Application(client_max_size=300 * 2**20)
        self.app.router.add_post("/v1/chat/completions", self.chat)
        self.app.router.add_post("/v1/files", self.upload)
        self.app.router.add_get("/v1/files", self.list_files)
        self.app.router.add_get("/v1/files/{id}/content", self.file_content)
        self.app.router.add_post("/v1/batches", self.create_openai)
        self.app.router.add_get("/v1/batches", self.list_batches)
        self.app.router.add_get("/v1/batches/{id}", self.get_openai)
        self.app.router.add_post("/v1/batches/{id}/cancel", self.cancel)
        self.app.router.add_post("/v1/messages/batches", self.create_anthropic)
        self.app.router.add_get("/v1/messages/batches/{id}", self.get_anthropic)
        self.app.router.add_get("/v1/messages/batches/{id}/results", self.anthropic_results)
        self.app.router.add_post("/v1/messages/batches/{id}/cancel", self.cancel)
        self.runner: web.AppRunner | None = None
        self.url = ""

    async def start(self) -> None:
        self.runner = web.AppRunner(self.app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()

    def _id(self, prefix: str) -> str:
        return f"{prefix}{next(self._ids):06d}"

    # Sync chat -------------------------------------------------------------

    async def chat(self, request: web.Request) -> web.Response:
        credential = _credential(request)
        body = await request.json()
        tier = body.get("service_tier")
        self.chat_tiers.append(tier)
        if tier == "flex" and not self.flex_capacity:
            error = {
                "message": "Flex capacity is not available now.",
                "type": "rate_limit_error",
                "code": "resource_unavailable",
            }
            return web.json_response({"error": error}, status=429)
        served = self.flex_runs_as if tier == "flex" else ("priority" if tier in ("priority", "fast") else "default")
        return web.json_response({**_completion(body, credential), "service_tier": served})

    # Files -----------------------------------------------------------------

    async def upload(self, request: web.Request) -> web.Response:
        credential = _credential(request)
        form = await request.post()
        if form.get("purpose") != "batch":
            return _error(400, "purpose must be batch")
        file = form["file"]
        content = file.file.read()
        file_id = self._id("file-")
        self.files[file_id] = (file.filename, content, credential)
        self.uploads.append(file.filename)
        return web.json_response(_file_object(file_id, file.filename, content))

    async def list_files(self, request: web.Request) -> web.Response:
        credential = _credential(request)
        if self.listing_status is not None:
            return _error(self.listing_status, "listing is not supported here")
        data = [_file_object(i, name, data) for i, (name, data, owner) in self.files.items() if owner == credential]
        return web.json_response({"object": "list", "data": data})

    async def file_content(self, request: web.Request) -> web.Response:
        credential = _credential(request)
        found = self.files.get(request.match_info["id"])
        if found is None or found[2] != credential:
            return _error(404, "no such file")
        if self.tail_held is None:
            return web.Response(body=found[1], content_type="application/jsonl")
        response = web.StreamResponse(headers={"Content-Type": "application/jsonl"})
        await response.prepare(request)
        head, tail = found[1][:-65536], found[1][-65536:]
        await response.write(head)
        self.streamed_heads += 1
        await self.tail_held.wait()
        await response.write(tail)
        await response.write_eof()
        return response

    # OpenAI batches ----------------------------------------------------------

    async def create_openai(self, request: web.Request) -> web.Response:
        credential = _credential(request)
        if self.failing_creates > 0:
            self.failing_creates -= 1
            return web.json_response({"error": {"message": "try again", "type": "server_error"}}, status=500)
        body = await request.json()
        found = self.files.get(body.get("input_file_id"))
        if found is None or found[2] != credential:
            return _error(400, "no such input file")
        lines = [json.loads(line) for line in found[1].splitlines() if line.strip()]
        batch = StoredBatch(
            self._id("batch_"),
            "openai",
            lines,
            credential,
            body.get("metadata"),
            body["endpoint"],
            body["input_file_id"],
        )
        self.batches[batch.id] = batch
        self.created.append(batch.id)
        return web.json_response(self._openai_object(batch))

    async def list_batches(self, request: web.Request) -> web.Response:
        credential = _credential(request)
        if self.listing_status is not None:
            return _error(self.listing_status, "listing is not supported here")
        batches = [b for b in self.batches.values() if b.api == "openai" and b.credential == credential]
        mine = [self._openai_object(b) for b in batches]
        return web.json_response({"object": "list", "data": mine[::-1][: int(request.query.get("limit", 20))]})

    async def get_openai(self, request: web.Request) -> web.Response:
        batch = self._mine(request)
        if batch is None:
            return _error(404, "no such batch")
        self._progress(batch)
        return web.json_response(self._openai_object(batch))

    async def cancel(self, request: web.Request) -> web.Response:
        batch = self._mine(request)
        if batch is None:
            return _error(404, "no such batch")
        self.cancelled.append(batch.id)
        if batch.status == "in_progress":
            self._end(batch, "cancelled", answered=0)
        return web.json_response(self._openai_object(batch) if batch.api == "openai" else self._anthropic_object(batch))

    # Anthropic message batches -------------------------------------------------

    async def create_anthropic(self, request: web.Request) -> web.Response:
        credential = _credential(request)
        if request.headers.get("anthropic-version") is None:
            return _error(400, "anthropic-version is required")
        body = await request.json()
        batch = StoredBatch(self._id("msgbatch_"), "anthropic", body["requests"], credential)
        self.batches[batch.id] = batch
        self.created.append(batch.id)
        return web.json_response(self._anthropic_object(batch))

    async def get_anthropic(self, request: web.Request) -> web.Response:
        batch = self._mine(request)
        if batch is None:
            return _error(404, "no such batch")
        self._progress(batch)
        return web.json_response(self._anthropic_object(batch))

    async def anthropic_results(self, request: web.Request) -> web.Response:
        batch = self._mine(request)
        if batch is None or batch.status != "ended":
            return _error(404, "no results yet")
        content = b"".join(json.dumps(line).encode() + b"\n" for line in batch.results)
        return web.Response(body=content, content_type="application/binary")

    # The batch's life ----------------------------------------------------------

    def _mine(self, request: web.Request) -> StoredBatch | None:
        credential = _credential(request)
        batch = self.batches.get(request.match_info["id"])
        return batch if batch is not None and batch.credential == credential else None

    def _progress(self, batch: StoredBatch) -> None:
        batch.reads += 1
        if batch.status == "in_progress" and not self.hold and batch.reads >= self.polls_to_end:
            answered = len(batch.lines) if self.outcome == "completed" else self.answered_before_expiry
            self._end(batch, self.outcome, answered)

    def _end(self, batch: StoredBatch, outcome: str, answered: int) -> None:
        if batch.api == "anthropic":
            batch.status = "ended"
            for i, request in enumerate(batch.lines):
                batch.results.append(
                    {
                        "custom_id": request["custom_id"],
                        "result": _anthropic_result(
                            request["params"], batch.credential, answered=i < answered, outcome=outcome
                        ),
                    }
                )
            return
        batch.status = outcome
        output, errors = [], []
        for i, line in enumerate(batch.lines):
            record = {"id": f"batch_req_{i}", "custom_id": line["custom_id"], "response": None, "error": None}
            if i >= answered:
                code = "batch_expired" if outcome == "expired" else "batch_cancelled"
                record["error"] = {"code": code, "message": f"this request was not run: the batch {outcome}"}
                errors.append(record)
            elif POISON in json.dumps(line["body"]):
                body = {
                    "error": {"message": "the request is poisoned", "type": "invalid_request_error", "code": "poisoned"}
                }
                record["response"] = {"status_code": 400, "request_id": f"req_{i}", "body": body}
                errors.append(record)
            else:
                body = _completion(line["body"], batch.credential)
                record["response"] = {"status_code": 200, "request_id": f"req_{i}", "body": body}
                output.append(record)
        for kind, records in (("output", output), ("error", errors)):
            if records:
                file_id = self._id("file-")
                content = b"".join(json.dumps(r).encode() + b"\n" for r in records)
                if kind == "output":
                    content += b"".join(line + b"\n" for line in self.stray_output_lines)
                self.files[file_id] = (f"{batch.id}_{kind}.jsonl", content, batch.credential)
                setattr(batch, f"{kind}_file_id", file_id)

    def _openai_object(self, batch: StoredBatch) -> dict:
        done = sum(1 for _ in batch.lines) if batch.status == "completed" else 0
        return {
            "id": batch.id,
            "object": "batch",
            "endpoint": batch.endpoint,
            "input_file_id": batch.input_file_id,
            "completion_window": "24h",
            "status": batch.status,
            "output_file_id": batch.output_file_id,
            "error_file_id": batch.error_file_id,
            "created_at": int(time.time()),
            "metadata": batch.metadata,
            "request_counts": {"total": len(batch.lines), "completed": done, "failed": 0},
        }

    def _anthropic_object(self, batch: StoredBatch) -> dict:
        ended = batch.status == "ended"
        return {
            "id": batch.id,
            "type": "message_batch",
            "processing_status": "ended" if ended else "in_progress",
            "request_counts": {
                "processing": 0 if ended else len(batch.lines),
                "succeeded": 0,
                "errored": 0,
                "canceled": 0,
                "expired": 0,
            },
            "results_url": f"{self.url}/v1/messages/batches/{batch.id}/results" if ended else None,
        }


def _credential(request: web.Request) -> str:
    credential = request.headers.get("Authorization") or request.headers.get("x-api-key")
    if not credential:
        error = json.dumps({"error": {"message": "no API key"}})
        raise web.HTTPUnauthorized(text=error, content_type="application/json")
    return credential


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": {"message": message, "type": "invalid_request_error"}}, status=status)


def _file_object(file_id: str, name: str, content: bytes) -> dict:
    return {
        "id": file_id,
        "object": "file",
        "bytes": len(content),
        "filename": name,
        "purpose": "batch",
        "created_at": int(time.time()),
    }


def _completion(body: dict, credential: str) -> dict:
    """A chat completion answering `body`: its last message echoed, with the key's last 4 characters."""
    last = (body.get("messages") or [{}])[-1].get("content", "")
    return {
        "id": "chatcmpl-standin",
        "object": "chat.completion",
        "model": body.get("model"),
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": f"echo: {last}"}, "finish_reason": "stop"}
        ],
        "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15},
        "key_tail": credential[-4:],
    }


def _anthropic_result(params: dict, credential: str, *, answered: bool, outcome: str) -> dict:
    if not answered:
        return {"type": "expired" if outcome == "expired" else "canceled"}
    if POISON in json.dumps(params):
        return {
            "type": "errored",
            "error": {
                "type": "error",
                "error": {"type": "invalid_request_error", "message": "the request is poisoned"},
            },
        }
    last = (params.get("messages") or [{}])[-1].get("content", "")
    return {
        "type": "succeeded",
        "message": {
            "id": "msg_standin",
            "type": "message",
            "role": "assistant",
            "model": params.get("model"),
            "content": [{"type": "text", "text": f"echo: {last}"}],
            "stop_reason": "end_turn",
            "usage": {"input_tokens": 10, "output_tokens": 5},
            "key_tail": credential[-4:],
        },
    }
