"""Async jobs on the data plane: `Prefer: respond-async` (RFC 7240) and /v1/jobs.

    POST /v1/embeddings  + Prefer: respond-async    202, Location: /v1/jobs/{id}, Preference-Applied
    GET    /v1/jobs/{id}          the job: status, attempts, and once done the upstream's answer or the error
    GET    /v1/jobs/{id}/result   once done, the upstream's answer itself (status, headers, body); 202 before
    DELETE /v1/jobs/{id}          cancel a job that has not started; 409 once it has

A job is acknowledged (202) only after it is stored durably. Any route
takes `Prefer: respond-async`; the request is checked like any other (route,
size limits) before it is stored, with its end-to-end headers; its
credentials are stored apart and erased when the job ends (router.jobs.store).

A job belongs to the credential that made it (router.jobs.tenants): any other
credential gets 404 for it, on every path here.

`Idempotency-Key` (IETF httpapi draft), per owner: the same key with the
same method, path and body gives the job stored first; the same key with a
different request is 422. Requests with one key are stored one after the
other, so a resend that arrives while the first is being stored waits a
commit and gets the stored job.

The store is made when the first job arrives, so a router whose clients
never ask for async jobs writes no file. What must not live here: storage
(router.jobs.store), running jobs (router.jobs.runner).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy

from backends.codecs import codec_for
from configs.schema import ModeshiftConfig, RouteConfig, fallback_lane
from policies.control.objectives import JOBS
from policies.control.snapshot import JobsBacklog
from router.errors import ProxyError, bad_request
from router.headers import (
    CREDENTIAL_HEADERS,
    DEADLINE_HEADER,
    HOP_BY_HOP,
    IDEMPOTENCY_HEADER,
    JOB_HEADER,
    MODE_HEADER,
    PRIORITY_HEADER,
    REQUEST_ID_HEADER,
    end_to_end,
)
from router.jobs.batch_store import BatchStore
from router.jobs.batches import SWEEP_S, OpenAIBatches
from router.jobs.database import EVERY_OWNER, Database, StoreUnavailable
from router.jobs.engines import is_postgres, open_database
from router.jobs.provider.bridge import ProviderBridge
from router.jobs.runner import Answer, JobRunner, share_of
from router.jobs.store import FINAL, IdempotencyConflict, Job, JobStore, NewJob
from router.jobs.tenants import Owners, credentials_of
from router.lanes import Lane
from router.routing import deadline_s

JOBS_PREFIX = "/v1/jobs/"
PROVIDER_BATCHES = "/v1/provider_batches"  # admin API only
_NOT_STORED = frozenset(
    (
        "prefer",
        "idempotency-key",
        MODE_HEADER.lower(),
        REQUEST_ID_HEADER.lower(),
        JOB_HEADER.lower(),
        DEADLINE_HEADER.lower(),
    )  # stored as the job's own deadline, in wall-clock time
).union(CREDENTIAL_HEADERS)
# The data plane's entry for a job (router.proxy.Proxy.run_job): method, target, headers, body -> its answer.
RunJob = Callable[[str, str, CIMultiDict[str], bytes], Awaitable[web.Response]]
# A line a provider batch answered: (lane, latency_s, ok, input tokens, output tokens), for the lane's figures.
RecordLine = Callable[[str, float, bool, int, int], None]
PROVIDER_CALL_TIMEOUT_S = 300.0  # one call to a provider's batch API (an upload of a large file included)
_NOT_KEPT = HOP_BY_HOP | {"content-length"}  # of an answer: the framing is made again when it is served
_MAX_KEY = 255
REOPEN_S = 2  # between tries to open a job database that was out of reach
logger = logging.getLogger("modeshift.jobs")


def prefers_async(headers: CIMultiDictProxy[str]) -> bool:
    """True when a `Prefer` header holds the preference respond-async (RFC 7240: tokens, case-insensitive)."""
    for value in headers.getall("Prefer", ()):
        for preference in value.split(","):
            if preference.split(";", 1)[0].split("=", 1)[0].strip().lower() == "respond-async":
                return True
    return False


def job_not_found(job_id: str) -> ProxyError:
    return ProxyError(404, "job_not_found", f"no job {job_id!r}: job ids come from the Location of a 202 answer")


class Jobs:
    def __init__(
        self,
        config: ModeshiftConfig,
        lanes: Callable[[], dict[str, Lane]],
        route_of: Callable[[str], RouteConfig | None],
        clock: Callable[[], float] = time.time,
        record: RecordLine | None = None,
    ):
        self.config = config.jobs
        self.lane_name = config.jobs.lane or ("batch" if "batch" in config.lanes else next(iter(config.lanes)))
        self.lane_config = config.lanes[self.lane_name]
        # A provider batch lane's jobs go through its bridge; the runner runs those it gives back, on the fallback.
        self.run_lane = fallback_lane(config, self.lane_name) if self.lane_config.batch_api else self.lane_name
        self.lanes = lanes  # the lanes as they are now (a reload may replace them)
        self.route_of = route_of  # the route a path takes now
        self.clock = clock
        self.record = record
        self.bridge: ProviderBridge | None = None
        self.database: Database | None = None
        self.store: JobStore | None = None
        self.batch_store: BatchStore | None = None
        self.runner: JobRunner | None = None
        self._run: RunJob | None = None
        self._storing: dict[tuple[str, str], _KeyInUse] = {}
        self._sweeper: asyncio.Task[Any] | None = None
        self._opening = asyncio.Lock()
        self._reopener: asyncio.Task[Any] | None = None
        self.batches = (
            OpenAIBatches(
                self._open_batches,
                clock,
                max_file_bytes=config.jobs.max_file_bytes,
                max_body_bytes=config.server.max_body_bytes,
                receive_timeout_s=config.server.receive_timeout_s,
            )
            if config.jobs.openai_api
            else None
        )

    async def start(self, run: RunJob) -> None:
        """Take the data plane's entry for jobs; resume the jobs of an earlier run, if its database exists."""
        self._run = run
        if self._stored_yet():
            try:
                await self._open()
            except StoreUnavailable as exc:  # Postgres is down: the router serves, and the jobs wait for it
                logger.warning("the job store is out of reach (%s); trying again until it answers", exc)
                self._reopener = asyncio.get_running_loop().create_task(self._open_when_reachable())

    async def _open_when_reachable(self) -> None:
        while self.store is None:
            await asyncio.sleep(REOPEN_S)
            with contextlib.suppress(StoreUnavailable):
                await self._open()

    def _stored_yet(self) -> bool:
        """Whether any job was ever stored: the store is open, its file exists (no file is made to answer 404),
        or it is a shared Postgres database (other replicas may have stored jobs this one must run)."""
        database = self.config.database
        return self.store is not None or is_postgres(database) or Path(database).exists()

    async def _open_batches(self) -> BatchStore:
        await self._open()
        assert self.batch_store is not None  # made with the store
        return self.batch_store

    async def _open(self) -> JobStore:
        if self.store is None:  # the first job request: open it once, whoever else is waiting for it
            async with self._opening:
                if self.store is None:
                    self._open_with(await open_database(self.config.database, self.config.files))
        assert self.store is not None
        return self.store

    @property
    def _owners(self) -> Owners:
        """Whose stored objects a request's credentials are (once the database is open)."""
        assert self.database is not None, "the job database is opened before any request is read against it"
        return self.database.owners

    def _open_with(self, database: Database) -> None:
        """Start the runner (and the bridge, the sweeper) on the opened database."""
        self.database = database
        self.store = JobStore(self.database)
        self.batch_store = BatchStore(self.database)
        self.runner = JobRunner(
            self.store,
            self.config,
            self._send,
            slots=lambda: share_of(self.lane_of().config, self.config.max_share),
            cost_of=self._cost_of,
            lane_queued=lambda: self.lane_of().gate.waiting,
            lease_s=self.config.lease_s,
            clock=self.clock,
            rerouted_only=self.lane_config.batch_api is not None,
        )
        self.runner.start()
        if self.lane_config.batch_api is not None:
            self.bridge = self._bridge(self.database)
            self.bridge.start()
        if self.batches is not None:
            self._sweeper = asyncio.get_running_loop().create_task(self._sweep_forever())
        database.on_jobs_ready(self._wake)  # another replica stored or gave back jobs

    def backlogs(self) -> dict[str, JobsBacklog]:
        """The queued jobs' deadlines by the lane that runs them, for the capacity rule (none before the store
        opens, and none for a provider batch lane: its bridge, not replicas, meets them)."""
        if self.runner is None or self.lane_config.batch_api is not None:
            return {}
        return {self.run_lane: self.runner.backlog}

    def lane_of(self) -> Lane:
        """The lane the runner's jobs run on, as it is now."""
        return self.lanes()[self.run_lane]

    def _bridge(self, database: Database) -> ProviderBridge:
        lane, params = self.lane_config, self.lane_config.batch_api
        assert params is not None  # only a provider batch lane has a bridge

        def record(latency_s: float, ok: bool, input_tokens: int, output_tokens: int) -> None:
            if self.record is not None:
                self.record(self.lane_name, latency_s, ok, input_tokens, output_tokens)

        return ProviderBridge(
            database,
            lane=self.lane_name,
            params=params,
            base_url=lane.upstreams[0],
            fallback=self.run_lane,
            record=record,
            connect_timeout_s=lane.connect_timeout_s,
            timeout_s=min(lane.timeout_s, PROVIDER_CALL_TIMEOUT_S),
            clock=self.clock,
        )

    def _wake(self) -> None:
        if self.runner is not None:
            self.runner.wake()
        if self.bridge is not None:
            self.bridge.wake()

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_S)
            try:
                if self.batches is not None:
                    await self.batches.sweep()
            except Exception:
                logger.exception("sweeping batches failed")

    async def handle_openai(self, request: web.BaseRequest) -> web.StreamResponse:
        """/v1/files and /v1/batches, for the caller's own; a new batch's lines run with the caller's credentials."""
        with store_reachable():
            await self._open()
            owner = self._owners.of(request.headers)
            assert self.batches is not None  # the dataplane routes here only when the Batches API is on
            response = await self.batches.handle(request, owner, credentials_of(request.headers))
        self._wake()
        return response

    async def _send(self, job: Job) -> Answer:
        """The job through the data plane, in process, as the jobs lane's request; its answer, or the router's own."""
        headers = CIMultiDict(job.headers)
        headers.extend(job.credentials)
        headers[MODE_HEADER] = job.lane or self.run_lane
        headers[PRIORITY_HEADER] = JOBS  # the jobs class: no latency promised, so admission lets it queue
        headers[REQUEST_ID_HEADER] = job.id
        headers[JOB_HEADER] = job.id
        headers[IDEMPOTENCY_HEADER] = job.id  # the same on every run of the job: an upstream may deduplicate
        assert self._run is not None, "the runner starts only after the data plane gave its entry (start)"
        try:
            response = await self._run(job.method, job.target, headers, job.body)
        except ProxyError as error:  # the router's own answer: a 503 is back-pressure, nothing reached an upstream
            body = json.dumps(error.body(job.id)).encode()
            kept = [*error.headers.items(), ("Content-Type", "application/json")]
            return Answer(error.status, kept, body, refused=error.status == 503)
        kept = [(k, v) for k, v in response.headers.items() if k.lower() not in _NOT_KEPT]
        answered = response.body
        return Answer(response.status, kept, bytes(answered) if isinstance(answered, bytes | bytearray) else b"")

    def _cost_of(self, job: Job) -> float:
        """Upstream slots `job` holds on the jobs lane: a share of a merged call when it rides the micro-batcher."""
        lane = self.lane_of()
        if lane.batching is None:
            return 1.0
        route = self.route_of(job.target.partition("?")[0])
        codec = codec_for(route.protocol) if route is not None else None
        if codec is None or not codec.batchable or not codec.read(job.body):
            return 1.0
        batching = lane.config.batching
        return 1.0 / batching.max_batch if batching is not None else 1.0

    async def accept(self, request: web.BaseRequest, body: bytes, request_id: str) -> web.Response:
        """Store the request as a job; 202 once it is on the disk."""
        key = request.headers.get(IDEMPOTENCY_HEADER)
        if key is not None and not 0 < len(key) <= _MAX_KEY:
            raise bad_request(f"{IDEMPOTENCY_HEADER} must be 1 to {_MAX_KEY} characters, got {len(key)}")
        with store_reachable():
            store = await self._open()
        owner = self._owners.of(request.headers)
        headers = [(k, v) for k, v in end_to_end(request.headers).items() if k.lower() not in _NOT_STORED]
        within_s = deadline_s(request.headers.get(DEADLINE_HEADER))
        job = NewJob(
            request.method,
            request.rel_url.raw_path_qs,
            headers,
            body,
            owner,
            credentials_of(request.headers),
            key,
            deadline_at=self.clock() + within_s if within_s is not None else None,
        )
        try:
            with store_reachable():
                if key is None:
                    stored, new = await store.submit(job, self.clock())
                else:
                    async with self._one_at_a_time((owner, key)):
                        stored, new = await store.submit(job, self.clock())
        except IdempotencyConflict:
            raise ProxyError(
                422,
                "idempotency_key_reused",
                f"{IDEMPOTENCY_HEADER} {key!r} was used for a different request; use a new key for a new request",
            ) from None
        if new:
            self._wake()
        answer_headers = {
            "Location": f"{JOBS_PREFIX}{stored.id}",
            "Preference-Applied": "respond-async",
            REQUEST_ID_HEADER: request_id,
        }
        if not new:
            answer_headers["Idempotent-Replayed"] = "true"
        return web.json_response(view(stored), status=202, headers=answer_headers)

    @contextlib.asynccontextmanager
    async def _one_at_a_time(self, slot: tuple[str, str]) -> AsyncIterator[None]:
        """Requests with one owner's idempotency key are stored in turn: the later ones find the first."""
        held = self._storing.get(slot)
        if held is None:
            held = self._storing[slot] = _KeyInUse()
        held.users += 1
        try:
            async with held.lock:
                yield
        finally:
            held.users -= 1
            if held.users == 0:
                del self._storing[slot]

    async def handle(self, request: web.BaseRequest) -> web.Response:
        """GET or DELETE /v1/jobs/{id}, GET /v1/jobs/{id}/result, for the job's owner only."""
        with store_reachable():
            return await self._handle(request)

    async def _handle(self, request: web.BaseRequest) -> web.Response:
        rest = request.rel_url.path[len(JOBS_PREFIX) :]
        job_id, _, tail = rest.partition("/")
        if tail not in ("", "result") or (tail == "result" and request.method != "GET"):
            raise ProxyError(
                404, "not_found", f"no such job path; see {JOBS_PREFIX}{{id}} and {JOBS_PREFIX}{{id}}/result"
            )
        if request.method not in ("GET", "DELETE"):
            raise ProxyError(405, "method_not_allowed", "jobs take GET (status, result) and DELETE (cancel)")
        if not self._stored_yet():
            raise job_not_found(job_id)
        store = await self._open()
        owner = self._owners.of(request.headers)
        if request.method == "DELETE":
            job = await store.cancel(job_id, owner, self.clock())
            if job is None:
                raise job_not_found(job_id)
            if job.state != "cancelled":
                raise ProxyError(409, "job_started", f"job {job_id} is {job.state}; only a queued job can be cancelled")
            self._wake()  # a provider batch nobody waits for any more is cancelled there
            return web.json_response(view(job))
        job = await store.get(job_id, owner)
        if job is None:
            raise job_not_found(job_id)
        if tail == "result":
            if job.state not in FINAL:
                return web.json_response(view(job), status=202, headers={"Retry-After": "1"})
            if job.status_code is None:
                why = (
                    f": {job.error}"
                    if job.error
                    else (" (cancelled before it ran)" if job.state == "cancelled" else "")
                )
                raise ProxyError(409, "no_result", f"job {job_id} is {job.state} without an answer{why}")
            return web.Response(
                status=job.status_code, body=job.response_body, headers=CIMultiDict(job.response_headers)
            )
        return web.json_response(view(job))

    async def handle_admin(self, request: web.BaseRequest) -> web.StreamResponse:
        """The admin API's read-only view of every job, file and batch, whoever owns it (GET only)."""
        with store_reachable():
            return await self._handle_admin(request)

    async def _handle_admin(self, request: web.BaseRequest) -> web.StreamResponse:
        path = request.rel_url.path
        if not self._stored_yet():
            raise ProxyError(404, "not_found", "no job has been stored yet")
        if path == PROVIDER_BATCHES:
            await self._open()
            if self.bridge is None:
                raise ProxyError(404, "not_found", f"the jobs lane {self.lane_name!r} is not a provider batch lane")
            return web.json_response({"object": "list", "data": [b.view() for b in await self.bridge.store.batches()]})
        if path.startswith(JOBS_PREFIX):
            job_id = path[len(JOBS_PREFIX) :]
            job = await (await self._open()).get(job_id, EVERY_OWNER)
            if job is None:
                raise job_not_found(job_id)
            return web.json_response({**view(job), "owner": job.owner})
        if self.batches is None:
            raise ProxyError(404, "not_found", "the Files and Batches API is off (jobs.openai_api)")
        await self._open()
        return await self.batches.handle(request, EVERY_OWNER, [])

    async def close(self) -> None:
        if self._reopener is not None:
            self._reopener.cancel()
            await asyncio.gather(self._reopener, return_exceptions=True)
        if self._sweeper is not None:
            self._sweeper.cancel()
            await asyncio.gather(self._sweeper, return_exceptions=True)
        if self.bridge is not None:
            await self.bridge.close()
        if self.runner is not None:
            await self.runner.close()
        if self.database is not None:
            await self.database.close()


@contextlib.contextmanager
def store_reachable() -> Iterator[None]:
    """The job database out of reach (Postgres down) is the router's 503, at once, with nothing stored."""
    try:
        yield
    except StoreUnavailable as exc:
        raise ProxyError(
            503,
            "job_store_unavailable",
            f"{exc}; nothing was stored: send it again shortly",
            headers={"Retry-After": str(REOPEN_S)},
        ) from None


class _KeyInUse:
    __slots__ = ("lock", "users")

    def __init__(self) -> None:
        self.lock = asyncio.Lock()
        self.users = 0


def view(job: Job) -> dict[str, Any]:
    """A job as its owner sees it."""
    out: dict[str, Any] = {
        "id": job.id,
        "object": "job",
        "status": job.state,
        "method": job.method,
        "path": job.target,
        "created_at": job.created_at,
        "finished_at": job.finished_at,
        "attempts": job.attempts,
        "deadline_at": job.deadline_at,
        "provider_batch": job.provider_batch,  # the provider batch it went in, on a provider batch lane
        "error": job.error if job.state != "succeeded" else None,
        "response": None,
    }
    if job.status_code is not None:
        headers = dict(job.response_headers or [])
        response: dict[str, Any] = {"status_code": job.status_code, "headers": headers}
        content_type = next((v for k, v in headers.items() if k.lower() == "content-type"), "")
        body = job.response_body or b""
        try:
            response["body"] = json.loads(body) if "json" in content_type else body.decode()
        except ValueError:
            response["body_base64"] = base64.b64encode(body).decode()
        out["response"] = response
    return out
