"""One visit to one upstream: send the request, relay its answer, record what it cost.

`Visit` is a request on its way through the lanes (router.proxy walks the
lanes and upstreams; this module makes one call). An answer up to
WHOLE_RESPONSE_BYTES with a known length is read whole and sent in one
write; anything larger, or of unknown length (chunked, SSE), streams chunk by
chunk as the upstream sends it.

What a call raises tells the proxy what may happen next:
- `NothingSent` (a refused or timed-out connect): nothing reached the
  upstream, so another upstream or lane may take the request;
- `FlexUnavailable`: a flex upstream had no capacity (429
  `resource_unavailable`); the request may spill to the next lane, and its
  answer is kept for the client when no lane is left;
- a `ProxyError` (504, 502): the upstream may have acted; not retried.

Chat requests carry OpenAI's `service_tier` as the lane asks
(router.service_tier); the tier that served is on the answer and sets the
price. What must not live here: the lane walk, admission, failover
(router.proxy).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field

from aiohttp import web
from multidict import CIMultiDict

from backends.codecs import Codec
from policies.path.upstream_pool import Upstream
from router.errors import NothingSent, upstream_failed, upstream_timeout
from router.headers import COST_HEADER, SERVICE_TIER_HEADER, Headers, client_response_headers
from router.lanes import Lane
from router.routing import LaneChoice
from router.service_tier import FLEX, flex_unavailable, served_tier, with_tier
from router.state import RouterState
from router.trail import Trail
from router.upstream_client import ConnectFailed, UpstreamBrokeOff, UpstreamResponse

WHOLE_RESPONSE_BYTES = 64 * 1024
_TIERED = "openai-chat"  # the protocol whose requests carry service_tier


@dataclass(slots=True)
class Visit:
    """One request on its way through the lanes: what every step of the forward path reads."""

    request: web.BaseRequest | None  # where the answer streams to; None (a job): the answer is read whole
    method: str
    target: str  # path and query, as the client sent them
    client_headers: Headers
    state: RouterState  # the state the request started on (a reload does not move it)
    choice: LaneChoice
    codec: Codec
    body: bytes
    headers: CIMultiDict[str]  # to send upstream
    trail: Trail
    traffic_class: str  # the objectives it is judged by, and its place in lane queues
    tier: str | None = None  # the service_tier the request asked for
    lanes: list[str] = field(default_factory=list)  # lanes visited, in order (failover and spill skip them)


class FlexUnavailable(NothingSent):
    """A flex upstream had no capacity for the request; `response` is its answer, for when no lane is left."""

    def __init__(self, response: web.Response):
        super().__init__("429 resource_unavailable from a flex upstream")
        self.response = response


def response_started(request: web.BaseRequest) -> bool:
    return request.writer is not None and request.writer.output_size > 0


class Forwarder:
    def __init__(self, now_s: Callable[[], float]):
        self.now_s = now_s

    async def forward(self, visit: Visit, lane: Lane, upstream: Upstream, started_s: float) -> web.StreamResponse:
        visit.trail.upstream = upstream.base
        sent_tier, body = visit.tier, visit.body
        if lane.config.service_tier is not None and visit.codec.name == _TIERED:
            sent_tier, body = lane.config.service_tier, with_tier(body, lane.config.service_tier)
        upstream.in_flight += 1
        try:
            try:
                answer = await lane.client.request(upstream.base, visit.method, visit.target, visit.headers, body)
            except ConnectFailed as exc:  # nothing was sent: the caller's replica walk goes on (ReplicaWalk)
                raise NothingSent(str(exc)) from None
            except TimeoutError:
                self._upstream_error(lane, upstream, started_s)
                raise upstream_timeout(lane.name, lane.config.timeout_s) from None
            except UpstreamBrokeOff as exc:
                self._upstream_error(lane, upstream, started_s)
                raise upstream_failed(lane.name, str(exc)) from None
            except asyncio.CancelledError:
                lane.window.abandoned(self.now_s())
                raise
            try:
                read = None  # the answer's body, when it had to be read to tell what it is
                if sent_tier == FLEX and answer.status == 429:
                    read = await self._unless_flex_unavailable(visit, lane, upstream, answer, started_s)
                return await self._relay(visit, lane, upstream, answer, started_s, sent_tier, read)
            finally:
                answer.release()
        finally:
            upstream.in_flight -= 1

    async def _unless_flex_unavailable(
        self, visit: Visit, lane: Lane, upstream: Upstream, answer: UpstreamResponse, started_s: float
    ) -> bytes:
        """FlexUnavailable for a flex upstream's 429 resource_unavailable; else the answer's body, read whole."""
        try:
            body = await answer.read()
        except (UpstreamBrokeOff, TimeoutError) as exc:
            self._upstream_error(lane, upstream, started_s)
            raise upstream_failed(lane.name, str(exc)) from None
        if flex_unavailable(answer.status, body):
            now = self.now_s()
            lane.window.completed(now, now - started_s, ok=False)  # the lane failed to serve: the controller sees it
            headers = client_response_headers(
                answer.headers,
                lane=lane.name,
                request_id=visit.trail.request_id,
                claims_denied=visit.trail.claims_denied,
            )
            raise FlexUnavailable(web.Response(status=answer.status, reason=answer.reason, body=body, headers=headers))
        return body

    async def _relay(
        self,
        visit: Visit,
        lane: Lane,
        upstream: Upstream,
        answer: UpstreamResponse,
        started_s: float,
        sent_tier: str | None,
        read: bytes | None,
    ) -> web.StreamResponse:
        request, codec, trail = visit.request, visit.codec, visit.trail
        ok = answer.status < 500
        headers = client_response_headers(
            answer.headers, lane=lane.name, request_id=trail.request_id, claims_denied=trail.claims_denied
        )
        length = answer.content_length
        tokens = None  # (input, output) when the protocol reports them, for per-token prices
        body: bytes | None = None  # when read whole
        try:
            if read is not None or request is None or (length is not None and length <= WHOLE_RESPONSE_BYTES):
                body = read if read is not None else await answer.read()
                tokens = codec.usage(body) if answer.status < 300 else None
                response: web.StreamResponse = web.Response(
                    status=answer.status, reason=answer.reason, body=body, headers=headers
                )
            else:
                response = web.StreamResponse(status=answer.status, reason=answer.reason, headers=headers)
                if length is not None:
                    response.content_length = length
                if codec.name == _TIERED:
                    response.headers[SERVICE_TIER_HEADER] = sent_tier or "default"
                await response.prepare(request)
                reader = codec.stream_usage()
                async for chunk in answer.chunks():
                    if reader is not None:
                        reader.feed(chunk)
                    await response.write(chunk)
                await response.write_eof()
                tokens = reader.usage if reader is not None else None
        except (asyncio.CancelledError, ConnectionError):  # the client went away
            lane.window.abandoned(self.now_s())
            raise
        except (UpstreamBrokeOff, TimeoutError) as exc:
            self._upstream_error(lane, upstream, started_s)
            detail = f"{upstream.base}: {exc}"
            if request is None or not response_started(request):
                raise upstream_failed(lane.name, detail) from None
            # The status line is gone. Cut the connection, so the client sees
            # a broken response rather than a complete-looking short one.
            trail.error, trail.detail = "upstream_broke_off", detail
            if request.transport is not None:
                request.transport.abort()
            return response
        tier = served_tier(body, sent_tier)
        if body is not None and codec.name == _TIERED:
            response.headers[SERVICE_TIER_HEADER] = tier
        now = self.now_s()
        if ok:
            lane.pool.succeeded(upstream, now)
        else:
            lane.pool.failed(upstream, now)
        latency_s = now - started_s
        input_tokens, output_tokens = tokens or (0, 0)
        monitor = visit.state.control.monitor
        cost_usd = monitor.attributed_cost_usd(
            lane.name,
            input_tokens,
            output_tokens,
            busy_s=latency_s,
            discounted=lane.config.service_tier != FLEX or tier == FLEX,
        )
        trail.cost_usd = cost_usd
        if not response.prepared:  # read whole: the headers are not sent yet
            response.headers[COST_HEADER] = f"{cost_usd:.9g}"
        lane.window.completed(
            now,
            latency_s,
            ok=ok,
            cost_usd=cost_usd,
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            busy_s=latency_s,
        )
        return response

    def _upstream_error(self, lane: Lane, upstream: Upstream, started_s: float) -> None:
        now = self.now_s()
        lane.pool.failed(upstream, now)
        lane.window.completed(now, now - started_s, ok=False)
