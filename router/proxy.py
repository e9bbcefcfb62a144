"""The data plane: one request in, one lane chosen, the answer streamed back.

The handler reads the request within its limits (router.intake), matches a
route, chooses a lane (router.routing), enters the lane's gate (router.admission:
a slot, a place in the queue, a spill to another lane, or 503), and forwards
to the lane's least-loaded upstream. The response streams back chunk by chunk
as the upstream sends it.

A failure before anything reached the upstream (a refused or timed-out
connect) is retried on another upstream of the lane, then on another lane
unless the request is pinned, within the retry budget (policies.path.retry_budget).
Anything later is not retried: the upstream may have acted on the request.

Every visit to a lane is recorded in that lane's window: an arrival when the
request enters the lane (so queueing counts in its latency) and a completion
with its latency, status, and attributed cost when it leaves, or an
abandonment when the client went away. A failed visit counts as an error of
the lane that failed, even when another lane then served the request, so the
controller sees a lane that breaks.

What the request went through (route, lane, upstream, batch, queue wait,
cost, status) goes on its `Trail` (router.trail), which router.telemetry.reporter
turns into its span and log lines once the answer is done.

What must not live here: limits parsing (router.intake), the lane choice
rules (router.routing), the control tick (router.runtime).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any

from aiohttp import web
from multidict import CIMultiDict

from backends.codecs import Part, codec_for
from configs.schema import RouteConfig
from policies.path.access import NO_CLAIMS, PRIORITY_TIERS, TIER, Claims
from policies.path.admission import Outlook, Placed, place
from policies.path.arrival import arrive
from policies.path.lane_choice import lanes_in, next_lane
from policies.path.upstream_pool import ReplicaWalk
from router.admission import LaneFull, QueueTimedOut
from router.errors import (
    NothingSent,
    ProxyError,
    batch_queue_full,
    lane_full,
    predicted_miss,
    queue_timeout,
    upstream_refused,
)
from router.forward import FlexUnavailable, Forwarder, Visit
from router.headers import (
    BATCH_HEADER,
    CLAIM_DENIED_HEADER,
    COST_HEADER,
    DEADLINE_HEADER,
    LANE_HEADER,
    MODE_HEADER,
    PRIORITY_HEADER,
    REQUEST_ID_HEADER,
    REQUEST_ID_KEY,
    Headers,
    request_id_from,
    upstream_request_headers,
)
from router.intake import check_header_size, read_body
from router.jobs.api import JOBS_PREFIX, prefers_async
from router.lanes import Lane
from router.routing import deadline_s, requested_class, requested_lane
from router.service_tier import DEFAULT as DEFAULT_TIER
from router.service_tier import priority_lane, requested_tier, with_tier
from router.state import RouterState
from router.trail import Trail

if TYPE_CHECKING:
    from router.runtime import Runtime


class Proxy:
    def __init__(self, runtime: Runtime):
        self.runtime = runtime
        self.forwarder = Forwarder(runtime.now_s)

    async def __call__(self, request: web.BaseRequest) -> web.StreamResponse:
        runtime = self.runtime
        state = runtime.state  # a reload swaps runtime.state; this request keeps its own
        trail = Trail(request_id_from(request.headers), request.method, request.rel_url.path, runtime.now_s())
        request[REQUEST_ID_KEY] = trail.request_id
        span = runtime.telemetry.begin(trail, request.headers)
        return await self._answered(state, trail, span, self._handle(request, state, trail, span))

    async def run_job(self, method: str, target: str, headers: CIMultiDict[str], body: bytes) -> web.Response:
        """A stored job's request, on the path a live request takes (routing, admission, the micro-batcher,
        failover, cost, metrics, spans), in process; its answer read whole. The router's own answers are
        raised (ProxyError), so the runner can tell its back-pressure from an upstream's answer.
        """
        runtime = self.runtime
        state = runtime.state
        trail = Trail(request_id_from(headers), method, target.partition("?")[0], runtime.now_s())
        span = runtime.telemetry.begin(trail, headers)

        async def work() -> web.StreamResponse:
            route = state.routes.match(trail.path)
            trail.route = route.path
            asked = _asked(headers, state)
            return await self._route(
                None, method, target, headers, body, route, asked, state, trail, span, peer=None, scheme="http"
            )

        response = await self._answered(state, trail, span, work(), raise_errors=True)
        assert isinstance(response, web.Response)  # with no client to stream to, an answer is read whole
        return response

    async def _answered(
        self,
        state: RouterState,
        trail: Trail,
        span: Any,
        work: Awaitable[web.StreamResponse],
        *,
        raise_errors: bool = False,
    ) -> web.StreamResponse:
        """The answer `work` makes, or the router's own; recorded once (trail, span, route stats, objectives)."""
        runtime = self.runtime
        try:
            response = await work
        except ProxyError as error:
            trail.error, trail.detail = error.kind, error.message
            if raise_errors:
                self._finish(span, trail, error.status)
                raise
            response = error.response(trail.request_id)
            if trail.claims_denied is not None:
                response.headers[CLAIM_DENIED_HEADER] = trail.claims_denied
        except (asyncio.CancelledError, ConnectionError):  # the client went away: nginx's 499
            self._finish(span, trail, 499, "client_closed_request")
            raise
        except Exception as exc:  # a bug: logged with its traceback, answered 500 by router.dataplane
            self._finish(span, trail, 500, "internal_error", repr(exc))
            raise
        trail.lane = response.headers.get(LANE_HEADER)
        self._finish(span, trail, response.status)
        runtime.route_stats.record(trail.route, trail.lane or "none", trail.status, trail.duration_s)
        if trail.traffic_class is not None and trail.lane in state.lanes:
            ok = trail.status < 500 and trail.error != "upstream_broke_off"
            state.control.monitor.served(runtime.now_s(), trail.traffic_class, trail.lane, trail.duration_s, ok)
        return response

    def _finish(
        self, span: Any, trail: Trail, status: int, error: str | None = None, detail: str | None = None
    ) -> None:
        trail.status = status
        trail.duration_s = self.runtime.now_s() - trail.started_s
        if error is not None:
            trail.error, trail.detail = error, detail
        self.runtime.telemetry.finish(span, trail)

    async def _handle(
        self, request: web.BaseRequest, state: RouterState, trail: Trail, span: object | None
    ) -> web.StreamResponse:
        server = state.config.server
        check_header_size(request, server.max_header_bytes)
        jobs = self.runtime.jobs
        if jobs is not None:
            path = request.rel_url.path
            if path.startswith(JOBS_PREFIX):
                trail.route = JOBS_PREFIX
                return await jobs.handle(request)
            if jobs.batches is not None and jobs.batches.serves(path):
                trail.route = path.split("/", 3)[2]  # "files" or "batches"
                return await jobs.handle_openai(request)
        route = state.routes.match(request.rel_url.path)
        trail.route = route.path
        asked = _asked(request.headers, state)  # before the body: a bad header is answered without waiting for it
        body = await read_body(request, limit=server.max_body_bytes, timeout_s=server.receive_timeout_s)
        if jobs is not None and "Prefer" in request.headers and prefers_async(request.headers):
            return await jobs.accept(request, body, trail.request_id)
        return await self._route(
            request,
            request.method,
            request.rel_url.raw_path_qs,
            request.headers,
            body,
            route,
            asked,
            state,
            trail,
            span,
            peer=request.remote,
            scheme=request.scheme,
        )

    async def _route(
        self,
        request: web.BaseRequest | None,
        method: str,
        target: str,
        client_headers: Headers,
        body: bytes,
        route: RouteConfig,
        asked: Claims,
        state: RouterState,
        trail: Trail,
        span: Any,
        *,
        peer: str | None,
        scheme: str,
    ) -> web.StreamResponse:
        """From a request read whole to its answer: its claims screened, the lane choice, its class, then the lanes."""
        tier = requested_tier(body) if route.protocol == "openai-chat" else None
        if tier in PRIORITY_TIERS:
            asked = asked._replace(priority_tier=True)
        (header_pin, header_class, deadline, priority_tier), denied = state.gatekeeper.screen(client_headers, asked)
        if denied:
            trail.claims_denied = ", ".join(denied)
            if TIER in denied:  # the upstream must not be asked for the tier either: it bills it
                tier, body = DEFAULT_TIER, with_tier(body, DEFAULT_TIER)
        if priority_tier and header_pin is None and route.pin is None:
            header_pin = priority_lane(state.config)  # a priority request is the real-time lane's, like a pinned one
        now = self.runtime.now_s()
        choice, traffic_class = arrive(
            route_pin=route.pin,
            route_class=route.traffic_class,
            header_pin=header_pin,
            header_class=header_class,
            deadline_s=deadline,
            snapshot=state.control.last_snapshot,
            weights=state.control.weights,
            available=lanes_in(state.lanes, now),
            objectives=state.control.monitor.objectives,
            u=state.draw.random(),
        )
        trail.pinned, trail.traffic_class = choice.pinned, traffic_class
        headers = upstream_request_headers(client_headers, peer=peer, scheme=scheme, request_id=trail.request_id)
        if span is not None:
            self.runtime.telemetry.inject(span, headers)
        codec = codec_for(route.protocol)
        visit = Visit(
            request,
            method,
            target,
            client_headers,
            state,
            choice,
            codec,
            body,
            headers,
            trail,
            traffic_class,
            tier,
        )
        state.retries.active += 1
        try:
            return await self._dispatch(visit)
        finally:
            state.retries.active -= 1

    async def _dispatch(self, visit: Visit) -> web.StreamResponse:
        state, choice, codec = visit.state, visit.choice, visit.codec
        lane: Lane | None = state.lanes[choice.lane]
        retrying = False
        failure = ""
        part: Part | None = None  # read only when a micro-batching lane needs it; None after: not mergeable
        unread = True
        unavailable: FlexUnavailable | None = None  # a flex upstream's 429, the answer when no lane is left
        try:
            while lane is not None:
                lane = self._place(visit, lane)
                if lane.batching is not None and codec.batchable:
                    if unread:
                        part, unread = codec.read(visit.body), False
                    if part is not None:
                        try:
                            return await self._batched(visit, lane, part)
                        except NothingSent as exc:
                            failure = str(exc)
                            if not retrying and not (retrying := state.retries.try_acquire()):
                                break
                        except ProxyError as error:
                            spill_to = _next_lane(state, visit, spills=lane.config.spill)
                            if error.kind != "lane_full" or spill_to is None:
                                raise
                            lane = spill_to
                            continue
                        lane = _next_lane(state, visit)
                        continue
                lane = await self._admit(visit, lane)
                started_s = self.runtime.now_s()
                lane.window.arrived(started_s, choice.pinned)
                walk = ReplicaWalk(lane.pool)
                try:
                    while (upstream := walk.next(self.runtime.now_s())) is not None:
                        try:
                            return await self.forwarder.forward(visit, lane, upstream, started_s)
                        except FlexUnavailable as exc:  # no flex capacity: spill, without the retry budget
                            unavailable = exc
                            break
                        except NothingSent as exc:
                            failure = str(exc)
                            walk.refused(upstream, self.runtime.now_s())
                            if not retrying and not (retrying := state.retries.try_acquire()):
                                break
                    if unavailable is None:  # a flex 429 was recorded where it was answered
                        lane.window.completed(self.runtime.now_s(), None, ok=False)
                finally:
                    lane.gate.leave()
                if unavailable is not None:
                    lane = _next_lane(state, visit)
                    if lane is None:
                        return unavailable.response
                    unavailable = None
                    continue
                if not retrying:
                    break
                lane = _next_lane(state, visit)
            tried_lanes = ", ".join(dict.fromkeys(visit.lanes))
            raise upstream_refused(
                visit.lanes[-1], f"{failure or 'no upstream left to try'} (lanes tried: {tried_lanes})"
            )
        finally:
            if retrying:
                state.retries.release()

    async def _batched(self, visit: Visit, lane: Lane, part: Part) -> web.Response:
        """Ride in the lane's next merged call; the answer is this request's share."""
        trail = visit.trail
        visit.lanes.append(lane.name)
        monitor, name = visit.state.control.monitor, lane.name

        def cost(input_tokens: int, busy_s: float) -> float:
            return monitor.attributed_cost_usd(name, input_tokens=input_tokens, busy_s=busy_s)

        batching = lane.batching
        assert batching is not None  # only a micro-batching lane is asked to merge
        started_s = self.runtime.now_s()
        lane.window.arrived(started_s, visit.choice.pinned)
        try:
            result = await batching.submit(visit.codec, visit.target, part, visit.client_headers, cost)
        except NothingSent:
            lane.window.completed(self.runtime.now_s(), None, ok=False)
            raise
        except ProxyError:
            now = self.runtime.now_s()
            lane.window.completed(now, now - started_s, ok=False)
            raise
        except asyncio.CancelledError:
            lane.window.abandoned(self.runtime.now_s())
            raise
        now = self.runtime.now_s()
        reply = result.reply
        trail.batch, trail.cost_usd, trail.queue_wait_s = result.batch, result.cost_usd, result.wait_s
        lane.window.completed(
            now,
            now - started_s,
            ok=reply.status < 500,
            cost_usd=result.cost_usd,
            items=part.items,
            input_tokens=reply.input_tokens,
            busy_s=result.busy_s,
        )
        headers = {
            "Content-Type": reply.content_type,
            LANE_HEADER: lane.name,
            REQUEST_ID_HEADER: trail.request_id,
            BATCH_HEADER: result.batch,
            COST_HEADER: f"{result.cost_usd:.9g}",
        }
        if trail.claims_denied is not None:
            headers[CLAIM_DENIED_HEADER] = trail.claims_denied
        return web.Response(status=reply.status, body=reply.body, headers=headers)

    def _place(self, visit: Visit, lane: Lane) -> Lane:
        """Where the request should wait (policies.path.admission.place), or its 503 at once."""
        state, choice, codec, trail = visit.state, visit.choice, visit.codec, visit.trail
        objective = state.control.monitor.objectives[visit.traffic_class]
        snapshot = state.control.last_snapshot
        now = self.runtime.now_s()
        batched = codec.batchable

        def outlook_of(name: str) -> Outlook:
            return state.lanes[name].outlook(
                snapshot, objective.priority, batched and state.lanes[name].batching is not None
            )

        placed = place(
            lane.name,
            lanes_in(state.lanes, now, drawn=lane),
            outlook_of,
            movable=not choice.pinned,
            latency_s=objective.latency_s,
            visited=visit.lanes,
            weights=state.control.weights,
        )
        if isinstance(placed, Placed):
            if placed.how != "drawn":
                trail.placement = placed.how
            return state.lanes[placed.lane]
        lane.window.refused(now, choice.pinned)
        if lane.batching is not None and codec.batchable:
            raise batch_queue_full(lane.name, lane.batching.waiting)
        if placed.kind == "lane_full":
            raise lane_full(lane.name, placed.retry_after_s, lane.gate.waiting, lane.config.spill)
        raise predicted_miss(
            lane.name, objective.traffic_class, objective.latency_s, placed.wait_s, placed.retry_after_s
        )

    async def _admit(self, visit: Visit, lane: Lane) -> Lane:
        """Enter `lane`'s gate, or spill to the next lane that has room; 503 when none does."""
        state, choice, trail = visit.state, visit.choice, visit.trail
        first = lane
        priority = state.control.monitor.objectives[visit.traffic_class].priority
        snapshot = state.control.last_snapshot
        while True:
            visit.lanes.append(lane.name)
            if lane.gate.try_enter():
                return lane
            queued_s = self.runtime.now_s()
            try:
                await lane.gate.enter(priority)
                return lane
            except LaneFull:
                error = lane_full(lane.name, lane.retry_after_s(snapshot), lane.gate.waiting, lane.config.spill)
            except QueueTimedOut:
                error = queue_timeout(lane.name, lane.gate.queue_timeout_s, lane.retry_after_s(snapshot))
            finally:
                trail.queue_wait_s += self.runtime.now_s() - queued_s
            spill_to = _next_lane(state, visit, spills=lane.config.spill)
            if spill_to is None:
                first.window.refused(self.runtime.now_s(), choice.pinned)
                raise error
            lane = spill_to


def _asked(headers: Headers, state: RouterState) -> Claims:
    """What the request's own headers claim (a lane pin, a traffic class, a deadline in seconds); 400 if wrong.
    The service tier is in the body, read later."""
    if MODE_HEADER not in headers and PRIORITY_HEADER not in headers and DEADLINE_HEADER not in headers:
        return NO_CLAIMS
    return Claims(
        requested_lane(headers.get(MODE_HEADER), state.live_lanes),
        requested_class(headers.get(PRIORITY_HEADER), state.control.monitor.objectives),
        deadline_s(headers.get(DEADLINE_HEADER)),
        False,
    )


def _next_lane(state: RouterState, visit: Visit, *, spills: bool = True) -> Lane | None:
    """The lane the visit goes on to (policies.path.lane_choice.next_lane), if any."""
    name = next_lane(state.control.weights, state.live_lanes, visit.lanes, pinned=visit.choice.pinned, spills=spills)
    return state.lanes[name] if name is not None else None
