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

What must not live here: storage and leases (router.jobs.store), running
lines (router.jobs.runner).
"""

from __future__ import annotations

import asyncio
import json
import secrets
import sqlite3
from collections.abc import AsyncIterator, Callable
from typing import Any

from aiohttp import BodyPartReader, MultipartReader, web
from aiohttp.http_exceptions import HttpProcessingError

from router.errors import ProxyError, bad_request, request_timeout
from router.intake import read_body
from router.jobs.files import FileDirectory, TooLarge
from router.jobs.store import EVERY_OWNER, JobStore, Owner, owned_by

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
        self, store: Callable[[], JobStore], clock: Callable[[], float], *, max_file_bytes: int, max_body_bytes: int,
        receive_timeout_s: float,
    ):  # fmt: skip
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
            if not rest and method == "POST" and owner is not EVERY_OWNER:
                return _json(await self._upload(request, owner))
            if not rest and method == "GET":
                return _json(await self._list("files", request, owner))
            if len(rest) == 1 and method in ("GET", "DELETE"):
                return _json(await self._file(rest[0], owner, delete=method == "DELETE"))
            if rest[1:] == ["content"] and method == "GET":
                return await self._content(rest[0], owner)
        else:
            if not rest and method == "POST" and owner is not EVERY_OWNER:
                return _json(await self._create(request, owner, credentials))
            if not rest and method == "GET":
                return _json(await self._list("batches", request, owner))
            if len(rest) == 1 and method == "GET":
                return _json(await self._batch(rest[0], owner))
            if rest[1:] == ["cancel"] and method == "POST":
                return _json(await self._cancel(rest[0], owner))
        raise ProxyError(404, "not_found", f"no such operation: {method} {request.rel_url.path}")

    # Files.

    async def _upload(self, request: web.BaseRequest, owner: str) -> dict:
        if not request.content_type.startswith("multipart/"):
            raise bad_request("upload a file as multipart/form-data with the fields 'file' and 'purpose'")
        store = self.store()
        file_id = f"file-{secrets.token_hex(12)}"
        purpose, filename, size = None, None, None
        # The reader's own limit is for the small fields; the file streams to disk under max_file_bytes.
        reader = MultipartReader(
            request.headers, request.content, client_max_size=_MAX_FIELD_BYTES, max_size_error_cls=_field_too_large
        )
        try:
            while (field := await reader.next()) is not None:
                if not isinstance(field, BodyPartReader):
                    raise bad_request("a file upload is one flat multipart/form-data body, not nested parts")
                if field.name == "purpose":
                    purpose = (await field.read()).decode(errors="replace")
                elif field.name == "file" and size is None:
                    filename = field.filename or "upload.jsonl"
                    size = await store.files.receive(
                        file_id, _chunks(field), limit=self.max_file_bytes, stall_s=self.receive_timeout_s,
                        on_stall=lambda: request_timeout(self.receive_timeout_s),
                    )  # fmt: skip
                else:
                    await field.release()
        except TooLarge:
            raise file_too_large(self.max_file_bytes) from None
        except (ValueError, HttpProcessingError) as exc:  # a malformed body: boundaries, part headers
            store.files.remove(file_id)
            raise bad_request(f"the multipart body could not be read: {exc}") from None
        except BaseException:
            store.files.remove(file_id)
            raise
        if size is None or purpose is None or purpose != "batch":
            store.files.remove(file_id)
            if size is None or purpose is None:
                raise bad_request("a file upload needs the multipart fields 'file' and 'purpose'")
            raise bad_request(f"purpose must be 'batch' (the only kind of file this router keeps), got {purpose!r}")
        record = {"id": file_id, "created_at": int(self.clock()), "filename": filename}
        return await store._do(lambda db: _put_file(db, record, purpose, size, owner))

    async def _file(self, file_id: str, owner: Owner, *, delete: bool) -> dict:
        mine, mine_args = owned_by(owner)
        store = self.store()

        def read(db: sqlite3.Connection) -> dict:
            row = db.execute(_FILE_ROW + f" WHERE id = ? AND {mine}", (file_id, *mine_args)).fetchone()
            if row is None:
                raise not_found("file", file_id)
            if delete:
                db.execute("DELETE FROM files WHERE id = ?", (file_id,))
                return {"id": file_id, "object": "file", "deleted": True}
            return _file_object(row, owner)

        answer = await store._do(read)
        if delete:
            await asyncio.to_thread(store.files.remove, file_id)
        return answer

    async def _content(self, file_id: str, owner: Owner) -> web.StreamResponse:
        mine, mine_args = owned_by(owner)
        store = self.store()
        found = await store._do(
            lambda db: db.execute(f"SELECT 1 FROM files WHERE id = ? AND {mine}", (file_id, *mine_args)).fetchone()
        )
        if found is None:
            raise not_found("file", file_id)
        return web.FileResponse(store.files.path_of(file_id), headers={"Content-Type": "application/jsonl"})

    async def _list(self, table: str, request: web.BaseRequest, owner: Owner) -> dict:
        try:
            limit = min(max(int(request.query.get("limit", "20")), 1), 100)
        except ValueError:
            raise bad_request("limit must be a whole number from 1 to 100") from None
        mine, mine_args = owned_by(owner)

        def rows(db: sqlite3.Connection) -> list[dict]:
            if table == "files":
                found = db.execute(
                    _FILE_ROW + f" WHERE {mine} ORDER BY created_at DESC LIMIT ?", (*mine_args, limit)
                ).fetchall()
                return [_file_object(row, owner) for row in found]
            found = db.execute(
                f"SELECT id FROM batches WHERE {mine} ORDER BY created_at DESC LIMIT ?", (*mine_args, limit)
            ).fetchall()
            return [_batch_object(db, row["id"], owner) for row in found]

        data = await self.store()._do(rows)
        return {"object": "list", "data": data, "has_more": len(data) == limit}

    # Batches.

    async def _create(self, request: web.BaseRequest, owner: str, credentials: list[tuple[str, str]]) -> dict:
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
        store = self.store()
        input_file_id = str(asked.get("input_file_id"))
        found = await store._do(
            lambda db: db.execute("SELECT 1 FROM files WHERE id = ? AND owner = ?", (input_file_id, owner)).fetchone()
        )
        if found is None:
            raise not_found("file", input_file_id)
        try:
            lines, problems = await asyncio.to_thread(lambda: _read_lines(store.files.read(input_file_id), endpoint))
        except FileNotFoundError:  # deleted since
            raise not_found("file", input_file_id) from None
        now = self.clock()
        batch_id = f"batch_{secrets.token_hex(12)}"
        stored_credentials = json.dumps(credentials)

        def create(db: sqlite3.Connection) -> dict:
            record = {
                "endpoint": endpoint, "input_file_id": input_file_id, "completion_window": window,
                "metadata": asked.get("metadata"), "created_at": int(now), "expires_at": int(now + WINDOWS[window]),
                "in_progress_at": None, "finalizing_at": None, "completed_at": None, "failed_at": None,
                "expired_at": None, "cancelling_at": None, "cancelled_at": None,
                "output_file_id": None, "error_file_id": None, "errors": None,
            }  # fmt: skip
            if problems:
                record.update(failed_at=int(now), errors={"object": "list", "data": problems})
                _put_batch(db, batch_id, now, "failed", record, owner)
                return _batch_object(db, batch_id, owner)
            record["in_progress_at"] = int(now)
            _put_batch(db, batch_id, now, "in_progress", record, owner)
            db.executemany(
                "INSERT INTO jobs (id, created_at, state, method, target, headers, body, payload_hash, batch_id,"
                " custom_id, line, owner, credentials) VALUES (?, ?, 'queued', 'POST', ?, ?, ?, '', ?, ?, ?, ?, ?)",
                [(f"batch_req_{secrets.token_hex(12)}", now, endpoint, _LINE_HEADERS,
                  json.dumps(line["body"]).encode(), batch_id, line["custom_id"], number, owner, stored_credentials)
                 for number, line in lines],
            )  # fmt: skip
            return _batch_object(db, batch_id, owner)

        return await store._do(create)

    async def _batch(self, batch_id: str, owner: Owner) -> dict:
        return await self.store()._do(lambda db: _batch_object(db, batch_id, owner))

    async def _cancel(self, batch_id: str, owner: Owner) -> dict:
        now = self.clock()

        def cancel(db: sqlite3.Connection) -> dict:
            status, record, _ = _get_batch(db, batch_id, owner)
            if status not in ("validating", "in_progress"):
                raise ProxyError(409, "batch_not_cancellable", f"batch {batch_id} is {status}")
            _drop_queued(db, batch_id, now, "batch_cancelled", "the batch was cancelled before this line ran")
            record["cancelling_at"] = int(now)
            _put_batch(db, batch_id, now, "cancelling", record, owner)
            return _batch_object(db, batch_id, owner)

        return await self.store()._do(cancel)

    async def sweep(self) -> None:
        """Expire batches past their window; finish those with no line left to run."""
        now = self.clock()
        store = self.store()

        def sweep(db: sqlite3.Connection) -> None:
            open_ = db.execute("SELECT id FROM batches WHERE status IN ('in_progress', 'cancelling')").fetchall()
            for (batch_id,) in open_:
                status, record, owner = _get_batch(db, batch_id, EVERY_OWNER)
                if status == "in_progress" and now >= record["expires_at"]:
                    _drop_queued(
                        db, batch_id, now, "batch_expired", "the completion window ran out before this line ran"
                    )
                pending = db.execute(
                    "SELECT COUNT(*) FROM jobs WHERE batch_id = ? AND state IN ('queued', 'running')", (batch_id,)
                ).fetchone()[0]
                if pending == 0:
                    _finish_batch(db, store.files, batch_id, status, record, owner, now)

        await store._do(sweep)


_FILE_ROW = "SELECT id, created_at, filename, purpose, bytes, owner FROM files"
_MAX_FIELD_BYTES = 64 * 2**10  # a form field other than the file (purpose)
_LINE_HEADERS = json.dumps([("Content-Type", "application/json")])


def file_too_large(limit: int) -> ProxyError:
    return ProxyError(
        413, "file_too_large", f"the file is larger than the limit of {limit} bytes (jobs.max_file_bytes)"
    )


def _field_too_large(limit: int) -> ProxyError:
    return ProxyError(413, "field_too_large", f"a form field other than 'file' is larger than {limit} bytes")


async def _chunks(field: BodyPartReader) -> AsyncIterator[bytes]:
    while chunk := await field.read_chunk(_CHUNK_BYTES):
        yield chunk


_CHUNK_BYTES = 256 * 2**10


def _json(body: dict) -> web.Response:
    return web.json_response(body)


def _put_file(db: sqlite3.Connection, record: dict, purpose: str, size: int, owner: str | None) -> dict:
    db.execute(
        "INSERT INTO files (id, created_at, filename, purpose, bytes, owner) VALUES (?, ?, ?, ?, ?, ?)",
        (record["id"], record["created_at"], record["filename"], purpose, size, owner),
    )
    return _file_object(db.execute(_FILE_ROW + " WHERE id = ?", (record["id"],)).fetchone(), owner)


def _file_object(row: sqlite3.Row, viewer: Owner) -> dict:
    """A file as OpenAI shows it; the admin API also sees its owner."""
    out = {"id": row["id"], "object": "file", "bytes": row["bytes"], "created_at": int(row["created_at"]),
           "filename": row["filename"], "purpose": row["purpose"], "status": "processed"}  # fmt: skip
    if viewer is EVERY_OWNER:
        out["owner"] = row["owner"]
    return out


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


def _put_batch(db: sqlite3.Connection, batch_id: str, now: float, status: str, record: dict, owner: str | None) -> None:
    db.execute(
        "INSERT INTO batches (id, created_at, status, record, owner) VALUES (?, ?, ?, ?, ?)"
        " ON CONFLICT (id) DO UPDATE SET status = excluded.status, record = excluded.record",
        (batch_id, now, status, json.dumps(record), owner),
    )


def _get_batch(db: sqlite3.Connection, batch_id: str, viewer: Owner) -> tuple[str, dict, str | None]:
    """(status, record, owner) of a batch `viewer` may see; 404 otherwise."""
    mine, mine_args = owned_by(viewer)
    row = db.execute(
        f"SELECT status, record, owner FROM batches WHERE id = ? AND {mine}", (batch_id, *mine_args)
    ).fetchone()
    if row is None:
        raise not_found("batch", batch_id)
    return row["status"], json.loads(row["record"]), row["owner"]


def _batch_object(db: sqlite3.Connection, batch_id: str, viewer: Owner) -> dict[str, Any]:
    status, record, owner = _get_batch(db, batch_id, viewer)
    counts = dict(db.execute("SELECT state, COUNT(*) FROM jobs WHERE batch_id = ? GROUP BY state", (batch_id,)))
    total = sum(counts.values())
    out = {"id": batch_id, "object": "batch", "status": status, **record,
           "request_counts": {"total": total, "completed": counts.get("succeeded", 0),
                              "failed": total - counts.get("succeeded", 0) - counts.get("queued", 0)
                              - counts.get("running", 0)}}  # fmt: skip
    if viewer is EVERY_OWNER:
        out["owner"] = owner
    return out


def _drop_queued(db: sqlite3.Connection, batch_id: str, now: float, code: str, message: str) -> None:
    db.execute(
        "UPDATE jobs SET state = 'cancelled', finished_at = ?, error = ?, credentials = NULL"
        " WHERE batch_id = ? AND state = 'queued'",
        (now, json.dumps({"code": code, "message": message}), batch_id),
    )


def _finish_batch(
    db: sqlite3.Connection, files: FileDirectory, batch_id: str, status: str, record: dict, owner: str | None,
    now: float,
) -> None:  # fmt: skip
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
            files.write(file_id, content)  # before the commit: at worst an orphan file, never a dangling record
            _put_file(db, {"id": file_id, "created_at": stamp, "filename": f"{batch_id}_{key[:-8]}.jsonl"},
                      "batch_output", len(content), owner)  # fmt: skip
            record[key] = file_id
    record["finalizing_at"] = record["finalizing_at"] or stamp
    if status == "cancelling":
        final = "cancelled"
    elif now >= record["expires_at"]:
        final = "expired"
    else:
        final = "completed"
    record[f"{final}_at"] = stamp
    _put_batch(db, batch_id, now, final, record, owner)
