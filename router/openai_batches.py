"""OpenAI's Files and Batches API, served by the router for self-hosted models.

    POST /v1/files                 multipart: file (JSONL), purpose=batch      -> file object
    GET  /v1/files, /v1/files/{id}, /v1/files/{id}/content; DELETE /v1/files/{id}
    POST /v1/batches               {input_file_id, endpoint, completion_window, metadata} -> batch object
    GET  /v1/batches, /v1/batches/{id}; POST /v1/batches/{id}/cancel

Each line of the input file is a request `{"custom_id", "method": "POST",
"url": <the batch's endpoint>, "body": {...}}`. Creating a batch validates
every line first (a malformed file fails the batch with an error per line,
naming it); then each line becomes a job (router.job_store) with the
batch's id, its custom_id and its line number, run by the job runner like
any other job, with the credentials of the request that created the batch.

Statuses: validating -> in_progress -> finalizing -> completed; failed (the
file did not validate); expired (the completion window ran out: lines not yet
started are dropped, the finished ones are kept); cancelling -> cancelled.
A sweep (every SWEEP_S) moves batches on: once no line is queued or running,
it writes the output file (lines that succeeded) and the error file (the
rest) and completes the batch. One bad line never fails the batch.

What must not live here: storage and leases (router.job_store), running
lines (router.job_runner).
"""

from __future__ import annotations

import json
import secrets
import sqlite3
from collections.abc import Callable
from typing import Any

from aiohttp import web

from router.errors import ProxyError, bad_request
from router.job_store import JobStore

FILES = "/v1/files"
BATCHES = "/v1/batches"
SWEEP_S = 0.5
ENDPOINTS = ("/v1/embeddings", "/v1/chat/completions", "/v1/completions")
WINDOWS = {"24h": 86400.0}
MAX_LINES = 50_000  # OpenAI's limit per batch


def not_found(kind: str, ident: str) -> ProxyError:
    return ProxyError(404, f"{kind}_not_found", f"no {kind} {ident!r}")


class OpenAIBatches:
    def __init__(self, store: Callable[[], JobStore], clock: Callable[[], float], max_file_bytes: int):
        self.store = store  # opens the job store on first use
        self.clock = clock
        self.max_file_bytes = max_file_bytes

    @staticmethod
    def serves(path: str) -> bool:
        return path == FILES or path.startswith(FILES + "/") or path == BATCHES or path.startswith(BATCHES + "/")

    async def handle(self, request: web.BaseRequest, credentials: list[tuple[str, str]]) -> web.Response:
        parts = request.rel_url.path.strip("/").split("/")[1:]  # ["files", id?, "content"?]
        kind, rest, method = parts[0], parts[1:], request.method
        if kind == "files":
            if not rest and method == "POST":
                return _json(await self._upload(request))
            if not rest and method == "GET":
                return _json(await self._list("files", request))
            if len(rest) == 1 and method in ("GET", "DELETE"):
                return _json(await self._file(rest[0], delete=method == "DELETE"))
            if rest[1:] == ["content"] and method == "GET":
                return await self._content(rest[0])
        else:
            if not rest and method == "POST":
                return _json(await self._create(request, credentials))
            if not rest and method == "GET":
                return _json(await self._list("batches", request))
            if len(rest) == 1 and method == "GET":
                return _json(await self._batch(rest[0]))
            if rest[1:] == ["cancel"] and method == "POST":
                return _json(await self._cancel(rest[0]))
        raise ProxyError(404, "not_found", f"no such operation: {method} {request.rel_url.path}")

    # Files.

    async def _upload(self, request: web.BaseRequest) -> dict:
        if not request.content_type.startswith("multipart/"):
            raise bad_request("upload a file as multipart/form-data with the fields 'file' and 'purpose'")
        purpose, filename, content = None, None, None
        reader = await request.multipart()
        while (field := await reader.next()) is not None:
            if field.name == "purpose":
                purpose = (await field.read()).decode()
            elif field.name == "file":
                filename = field.filename or "upload.jsonl"
                content = await field.read(decode=False)
                if len(content) > self.max_file_bytes:
                    raise ProxyError(413, "file_too_large", f"files are limited to {self.max_file_bytes} bytes")
        if content is None or purpose is None:
            raise bad_request("a file upload needs the multipart fields 'file' and 'purpose'")
        if purpose != "batch":
            raise bad_request(f"purpose must be 'batch' (the only kind of file this router keeps), got {purpose!r}")
        record = {"id": f"file-{secrets.token_hex(12)}", "created_at": int(self.clock()), "filename": filename}
        return await self.store()._do(lambda db: _put_file(db, record, purpose, content))

    async def _file(self, file_id: str, *, delete: bool) -> dict:
        def read(db: sqlite3.Connection) -> dict:
            row = db.execute(_FILE_ROW + " WHERE id = ?", (file_id,)).fetchone()
            if row is None:
                raise not_found("file", file_id)
            if delete:
                db.execute("DELETE FROM files WHERE id = ?", (file_id,))
                return {"id": file_id, "object": "file", "deleted": True}
            return _file_object(row)

        return await self.store()._do(read)

    async def _content(self, file_id: str) -> web.Response:
        row = await self.store()._do(
            lambda db: db.execute("SELECT content FROM files WHERE id = ?", (file_id,)).fetchone()
        )
        if row is None:
            raise not_found("file", file_id)
        return web.Response(body=row[0], content_type="application/jsonl")

    async def _list(self, table: str, request: web.BaseRequest) -> dict:
        try:
            limit = min(max(int(request.query.get("limit", "20")), 1), 100)
        except ValueError:
            raise bad_request("limit must be a whole number from 1 to 100") from None

        def rows(db: sqlite3.Connection) -> list[dict]:
            if table == "files":
                found = db.execute(_FILE_ROW + " ORDER BY created_at DESC LIMIT ?", (limit,)).fetchall()
                return [_file_object(row) for row in found]
            found = db.execute("SELECT id FROM batches ORDER BY created_at DESC LIMIT ?", (limit,)).fetchall()
            return [_batch_object(db, row[0]) for row in found]

        data = await self.store()._do(rows)
        return {"object": "list", "data": data, "has_more": len(data) == limit}

    # Batches.

    async def _create(self, request: web.BaseRequest, credentials: list[tuple[str, str]]) -> dict:
        try:
            asked = json.loads(await request.read() or b"{}")
        except ValueError as exc:
            raise bad_request(f"the body must be JSON: {exc}") from None
        endpoint, window = asked.get("endpoint"), asked.get("completion_window", "24h")
        if endpoint not in ENDPOINTS:
            raise bad_request(f"endpoint must be one of {', '.join(ENDPOINTS)}, got {endpoint!r}")
        if window not in WINDOWS:
            raise bad_request(f"completion_window must be one of {', '.join(WINDOWS)}, got {window!r}")
        now = self.clock()
        batch_id = f"batch_{secrets.token_hex(12)}"
        headers = [("Content-Type", "application/json"), *credentials]

        def create(db: sqlite3.Connection) -> dict:
            row = db.execute("SELECT content FROM files WHERE id = ?", (asked.get("input_file_id"),)).fetchone()
            if row is None:
                raise not_found("file", str(asked.get("input_file_id")))
            record = {
                "endpoint": endpoint, "input_file_id": asked["input_file_id"], "completion_window": window,
                "metadata": asked.get("metadata"), "created_at": int(now), "expires_at": int(now + WINDOWS[window]),
                "in_progress_at": None, "finalizing_at": None, "completed_at": None, "failed_at": None,
                "expired_at": None, "cancelling_at": None, "cancelled_at": None,
                "output_file_id": None, "error_file_id": None, "errors": None,
            }  # fmt: skip
            lines, problems = _read_lines(row[0], endpoint)
            if problems:
                record.update(failed_at=int(now), errors={"object": "list", "data": problems})
                _put_batch(db, batch_id, now, "failed", record)
                return _batch_object(db, batch_id)
            record["in_progress_at"] = int(now)
            _put_batch(db, batch_id, now, "in_progress", record)
            db.executemany(
                "INSERT INTO jobs (id, created_at, state, method, target, headers, body, payload_hash, batch_id,"
                " custom_id, line) VALUES (?, ?, 'queued', 'POST', ?, ?, ?, '', ?, ?, ?)",
                [(f"batch_req_{secrets.token_hex(12)}", now, endpoint, json.dumps(headers),
                  json.dumps(line["body"]).encode(), batch_id, line["custom_id"], number)
                 for number, line in lines],
            )  # fmt: skip
            return _batch_object(db, batch_id)

        return await self.store()._do(create)

    async def _batch(self, batch_id: str) -> dict:
        return await self.store()._do(lambda db: _batch_object(db, batch_id))

    async def _cancel(self, batch_id: str) -> dict:
        now = self.clock()

        def cancel(db: sqlite3.Connection) -> dict:
            status, record = _get_batch(db, batch_id)
            if status not in ("validating", "in_progress"):
                raise ProxyError(409, "batch_not_cancellable", f"batch {batch_id} is {status}")
            _drop_queued(db, batch_id, now, "batch_cancelled", "the batch was cancelled before this line ran")
            record["cancelling_at"] = int(now)
            _put_batch(db, batch_id, now, "cancelling", record)
            return _batch_object(db, batch_id)

        return await self.store()._do(cancel)

    async def sweep(self) -> None:
        """Expire batches past their window; finish those with no line left to run."""
        now = self.clock()

        def sweep(db: sqlite3.Connection) -> None:
            open_ = db.execute("SELECT id FROM batches WHERE status IN ('in_progress', 'cancelling')").fetchall()
            for (batch_id,) in open_:
                status, record = _get_batch(db, batch_id)
                if status == "in_progress" and now >= record["expires_at"]:
                    _drop_queued(
                        db, batch_id, now, "batch_expired", "the completion window ran out before this line ran"
                    )
                pending = db.execute(
                    "SELECT COUNT(*) FROM jobs WHERE batch_id = ? AND state IN ('queued', 'running')", (batch_id,)
                ).fetchone()[0]
                if pending == 0:
                    _finish_batch(db, batch_id, status, record, now)

        await self.store()._do(sweep)


_FILE_ROW = "SELECT id, created_at, filename, purpose, bytes FROM files"


def _json(body: dict) -> web.Response:
    return web.json_response(body)


def _put_file(db: sqlite3.Connection, record: dict, purpose: str, content: bytes) -> dict:
    db.execute(
        "INSERT INTO files (id, created_at, filename, purpose, bytes, content) VALUES (?, ?, ?, ?, ?, ?)",
        (record["id"], record["created_at"], record["filename"], purpose, len(content), content),
    )
    return _file_object((record["id"], record["created_at"], record["filename"], purpose, len(content)))


def _file_object(row: tuple) -> dict:
    file_id, created_at, filename, purpose, size = row
    return {"id": file_id, "object": "file", "bytes": size, "created_at": int(created_at), "filename": filename,
            "purpose": purpose, "status": "processed"}  # fmt: skip


def _read_lines(content: bytes, endpoint: str) -> tuple[list[tuple[int, dict]], list[dict]]:
    """(line number, request) for each line, or the problems, each naming its line."""
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
            lines.append((number, line))
        seen.add(line["custom_id"])
    if not lines and not problems:
        problem(0, "empty_file", "the input file has no requests")
    if len(lines) > MAX_LINES:
        problem(0, "too_many_lines", f"a batch holds at most {MAX_LINES} requests, this file has {len(lines)}")
    return lines, problems


def _put_batch(db: sqlite3.Connection, batch_id: str, now: float, status: str, record: dict) -> None:
    db.execute(
        "INSERT INTO batches (id, created_at, status, record) VALUES (?, ?, ?, ?)"
        " ON CONFLICT (id) DO UPDATE SET status = excluded.status, record = excluded.record",
        (batch_id, now, status, json.dumps(record)),
    )


def _get_batch(db: sqlite3.Connection, batch_id: str) -> tuple[str, dict]:
    row = db.execute("SELECT status, record FROM batches WHERE id = ?", (batch_id,)).fetchone()
    if row is None:
        raise not_found("batch", batch_id)
    return row[0], json.loads(row[1])


def _batch_object(db: sqlite3.Connection, batch_id: str) -> dict[str, Any]:
    status, record = _get_batch(db, batch_id)
    counts = dict(db.execute("SELECT state, COUNT(*) FROM jobs WHERE batch_id = ? GROUP BY state", (batch_id,)))
    total = sum(counts.values())
    return {"id": batch_id, "object": "batch", "status": status, **record,
            "request_counts": {"total": total, "completed": counts.get("succeeded", 0),
                               "failed": total - counts.get("succeeded", 0) - counts.get("queued", 0)
                               - counts.get("running", 0)}}  # fmt: skip


def _drop_queued(db: sqlite3.Connection, batch_id: str, now: float, code: str, message: str) -> None:
    db.execute(
        "UPDATE jobs SET state = 'cancelled', finished_at = ?, error = ? WHERE batch_id = ? AND state = 'queued'",
        (now, json.dumps({"code": code, "message": message}), batch_id),
    )


def _finish_batch(db: sqlite3.Connection, batch_id: str, status: str, record: dict, now: float) -> None:
    rows = db.execute(
        "SELECT id, custom_id, state, status_code, response_body, error FROM jobs WHERE batch_id = ? ORDER BY line",
        (batch_id,),
    ).fetchall()
    output, errors = [], []
    for job_id, custom_id, state, status_code, body, error in rows:
        response = None
        if status_code is not None:
            try:
                parsed = json.loads(body or b"null")
            except ValueError:
                parsed = (body or b"").decode(errors="replace")
            response = {"status_code": status_code, "request_id": job_id, "body": parsed}
        if state == "succeeded":
            output.append({"id": job_id, "custom_id": custom_id, "response": response, "error": None})
            continue
        try:
            reason = json.loads(error) if error and error.startswith("{") else None
        except ValueError:
            reason = None
        reason = reason or {"code": "request_failed", "message": error or state}
        errors.append({"id": job_id, "custom_id": custom_id, "response": response, "error": reason})
    stamp = int(now)
    for key, lines in (("output_file_id", output), ("error_file_id", errors)):
        if lines:
            content = "".join(json.dumps(line) + "\n" for line in lines).encode()
            file_id = f"file-{secrets.token_hex(12)}"
            _put_file(db, {"id": file_id, "created_at": stamp, "filename": f"{batch_id}_{key[:-8]}.jsonl"},
                      "batch_output", content)  # fmt: skip
            record[key] = file_id
    record["finalizing_at"] = record["finalizing_at"] or stamp
    if status == "cancelling":
        final = "cancelled"
    elif now >= record["expires_at"]:
        final = "expired"
    else:
        final = "completed"
    record[f"{final}_at"] = stamp
    _put_batch(db, batch_id, now, final, record)
