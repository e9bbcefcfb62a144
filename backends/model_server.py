"""The reference model server: a real embedding model behind OpenAI and KServe v2 APIs.

`modeshift backend --mode realtime|batch --port N` serves backends.embedder:

- POST /v1/embeddings (OpenAI), POST /v2/models/{name}/infer (KServe v2),
  GET /v1/models, GET /v2/models/{name}, GET /v2/health/live|ready, and
  GET /health with the mode, device and counters (requests, model calls,
  items).
- realtime: each request is its own forward pass, started at once on one of
  `workers` threads (more requests than threads wait their turn).
- batch: dynamic batching. Requests queue (policies.path.batching with a hybrid
  flush rule: `max_batch` items or `max_wait` after the oldest) and one pass
  at a time runs the merged batch, so requests that arrive during a pass
  share the next one. If a merged pass fails, each request of it is run
  alone, so one bad input fails only its own request. A full queue is 503.

Inference never runs on the event loop. What must not live here: the model
itself (backends.embedder), wire shapes (backends.openai_api,
backends.kserve_api).
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Literal

from aiohttp import web

from backends.batch_loop import BatchLoop
from backends.embedder import Embedder, Embeddings, ModelUnavailable
from backends.kserve_api import InferError, infer_response, model_metadata, parse_infer_texts
from backends.openai_api import ApiError, embeddings_response, parse_embeddings_request
from policies.path.batching import Batcher, BatchItem
from policies.path.flush import HybridRule

logger = logging.getLogger("modeshift.backend")

Mode = Literal["realtime", "batch"]


class QueueFull(Exception):
    pass


@dataclass
class Counters:
    requests: int = 0
    calls: int = 0  # embed() calls; each runs one or more forward passes
    items: int = 0

    def as_dict(self) -> dict[str, float]:
        return {
            "requests": self.requests,
            "model_calls": self.calls,
            "items": self.items,
            "mean_items_per_call": self.items / self.calls if self.calls else 0.0,
        }


class ModelService:
    """Runs the embedder off the event loop, one pass per request or in dynamic batches."""

    def __init__(
        self,
        embedder: Embedder,
        *,
        mode: Mode,
        workers: int = 1,
        max_batch: int = 64,
        max_wait_s: float = 0.005,
        queue_capacity: int = 4096,
    ):
        self.embedder = embedder
        self.mode = mode
        self.counters = Counters()
        # One pass at a time in batch mode: requests that come meanwhile wait
        # for the next pass, which is what makes the batches.
        self._pool = ThreadPoolExecutor(max_workers=workers if mode == "realtime" else 1, thread_name_prefix="infer")
        self._loop: BatchLoop | None = None
        if mode == "batch":
            rule = HybridRule(max_batch=max_batch, max_wait_s=max_wait_s).build()
            self._loop = BatchLoop(Batcher(rule, capacity=queue_capacity), self._run_batch)

    async def embed(self, texts: list[str]) -> Embeddings:
        self.counters.requests += 1
        if self._loop is None:
            return await self._pass(texts)
        done: asyncio.Future[Embeddings] = asyncio.get_running_loop().create_future()
        if not self._loop.offer(BatchItem(payload=(texts, done), items=len(texts))):
            raise QueueFull(f"{self._loop.waiting} requests are already waiting")
        return await done

    async def _pass(self, texts: list[str]) -> Embeddings:
        self.counters.calls += 1
        self.counters.items += len(texts)
        return await asyncio.get_running_loop().run_in_executor(self._pool, self.embedder.embed, texts)

    async def _run_batch(self, batch: list[BatchItem], waited: list[float]) -> None:
        waiting = [item.payload for item in batch if not item.payload[1].done()]  # a client may have left
        if not waiting:
            return
        try:
            merged = await self._pass([text for texts, _ in waiting for text in texts])
        except Exception:
            logger.warning("a merged pass of %d requests failed; running them one by one", len(waiting))
            await asyncio.gather(*(self._alone(texts, done) for texts, done in waiting))
            return
        start = 0
        for texts, done in waiting:
            end = start + len(texts)
            if not done.done():
                done.set_result(Embeddings(merged.vectors[start:end], merged.tokens[start:end]))
            start = end

    async def _alone(self, texts: list[str], done: asyncio.Future[Embeddings]) -> None:
        try:
            result = await self._pass(texts)
        except Exception as exc:
            if not done.done():
                done.set_exception(exc)
            return
        if not done.done():
            done.set_result(result)

    async def close(self) -> None:
        if self._loop is not None:
            for item in await self._loop.close():
                texts, done = item.payload
                if not done.done():
                    done.set_exception(QueueFull("the server is shutting down"))
        self._pool.shutdown(wait=False, cancel_futures=True)

    def describe(self) -> dict[str, Any]:
        return {
            "status": "ok",
            "mode": self.mode,
            "model": self.embedder.name,
            "device": self.embedder.device,
            "dimension": self.embedder.dimension,
            **self.counters.as_dict(),
        }


def _json(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        body=json.dumps(body, separators=(",", ":")).encode(),
        status=status,
        content_type="application/json",
        headers=headers,
    )


async def _json_body(request: web.Request) -> Any:
    try:
        return await request.json()
    except ValueError as exc:
        raise ApiError(400, f"the body is not valid JSON: {exc}") from None


def build_app(service: ModelService) -> web.Application:
    name = service.embedder.name

    async def embeddings(request: web.Request) -> web.Response:
        try:
            parsed = parse_embeddings_request(await _json_body(request))
            if parsed.model is not None and parsed.model != name:
                raise ApiError(
                    404, f"model {parsed.model!r} is not served here; this server has {name!r}", param="model"
                )
            result = await service.embed(parsed.texts)
        except ApiError as error:
            return _json(error.body(), error.status)
        except QueueFull as exc:
            full = ApiError(503, f"the batch queue is full ({exc}); retry shortly", kind="server_error")
            return _json(full.body(), 503, {"Retry-After": "1"})
        except Exception as exc:
            logger.exception("inference failed")
            return _json(ApiError(500, f"inference failed: {exc}", kind="server_error").body(), 500)
        return _json(embeddings_response(result.vectors, result.tokens, model=name, encoding=parsed.encoding_format))

    async def infer(request: web.Request) -> web.Response:
        if request.match_info["model"] != name:
            return _json(InferError(404, f"model {request.match_info['model']!r} not found").body(), 404)
        try:
            try:
                payload = await request.json()
            except ValueError as exc:
                raise InferError(400, f"the body is not valid JSON: {exc}") from None
            texts, request_id = parse_infer_texts(payload)
            result = await service.embed(texts)
        except InferError as error:
            return _json(error.body(), error.status)
        except QueueFull as exc:
            return _json({"error": f"the batch queue is full ({exc})"}, 503, {"Retry-After": "1"})
        except Exception as exc:
            logger.exception("inference failed")
            return _json({"error": f"inference failed: {exc}"}, 500)
        return _json(infer_response(name, result.vectors, request_id))

    async def metadata(request: web.Request) -> web.Response:
        if request.match_info["model"] != name:
            return _json({"error": f"model {request.match_info['model']!r} not found"}, 404)
        return _json(model_metadata(name, service.embedder.dimension))

    async def models(request: web.Request) -> web.Response:
        return _json({"object": "list", "data": [{"id": name, "object": "model", "owned_by": "modeshift"}]})

    async def health(request: web.Request) -> web.Response:
        return _json(service.describe())

    async def live(request: web.Request) -> web.Response:
        return _json({"live": True})

    async def ready(request: web.Request) -> web.Response:  # the model loads before the server listens
        return _json({"ready": True})

    async def close_service(app: web.Application) -> None:
        await service.close()

    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_post("/v1/embeddings", embeddings)
    app.router.add_post("/v2/models/{model}/infer", infer)
    app.router.add_get("/v2/models/{model}", metadata)
    app.router.add_get("/v1/models", models)
    app.router.add_get("/health", health)
    app.router.add_get("/v2/health/live", live)
    app.router.add_get("/v2/health/ready", ready)
    app.on_cleanup.append(close_service)
    return app


async def _serve(service: ModelService, host: str, port: int) -> int:
    runner = web.AppRunner(build_app(service), access_log=None, shutdown_timeout=10.0)
    await runner.setup()
    site = web.TCPSite(runner, host, port, backlog=2048, reuse_address=True)
    await site.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    bound = runner.addresses[0]
    # One JSON line on stdout says the server is up and where (the demo waits
    # for it); written after the signal handlers, so a SIGTERM sent on reading
    # it stops the server cleanly.
    print(json.dumps({"event": "listening", "url": f"http://{bound[0]}:{bound[1]}", **service.describe()}), flush=True)
    await stop.wait()
    await runner.cleanup()
    return 0


def serve_backend(
    *,
    mode: Mode,
    host: str,
    port: int,
    model_dir: str | None = None,
    device: str | None = None,
    workers: int = 1,
    max_batch: int = 64,
    max_wait_s: float = 0.005,
    threads: int | None = None,
) -> int:
    """Load the model, then serve it until SIGTERM or SIGINT."""
    try:
        embedder = Embedder(model_dir, device=device, threads=threads)
    except ModelUnavailable as exc:
        print(f"modeshift backend: {exc}", file=sys.stderr)
        return 2
    service = ModelService(embedder, mode=mode, workers=workers, max_batch=max_batch, max_wait_s=max_wait_s)
    return asyncio.run(_serve(service, host, port))
