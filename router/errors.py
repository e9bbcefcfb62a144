"""The router's own error answers: one JSON shape for every limit and failure.

Every response the router makes up itself (as opposed to relaying an
upstream's) is a `ProxyError` turned into

    {"error": {"type": "...", "message": "...", "lane": "..." | null, "request_id": "..."}}

with a status code that says what kind of problem it is, and a message that
says what was wrong and what to do about it. Nothing here does I/O beyond
building the aiohttp response object.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from http import HTTPStatus
from typing import Any

from aiohttp import web

from router.headers import LANE_HEADER, REFUSED_HEADER, REQUEST_ID_HEADER


class ProxyError(Exception):
    """A request the router answers itself, with `status` and a JSON body."""

    def __init__(
        self,
        status: int,
        kind: str,
        message: str,
        *,
        lane: str | None = None,
        headers: Mapping[str, str] | None = None,
        close: bool = False,
    ):
        super().__init__(message)
        self.status = status
        self.kind = kind
        self.message = message
        self.lane = lane
        self.headers = dict(headers or {})
        # A request whose body was not read to the end leaves the connection
        # in an unknown state: answer and close it.
        self.close = close

    def body(self, request_id: str | None) -> dict[str, Any]:
        return {"error": {"type": self.kind, "message": self.message, "lane": self.lane, "request_id": request_id}}

    def response(self, request_id: str | None) -> web.Response:
        headers = dict(self.headers)
        if request_id is not None:
            headers[REQUEST_ID_HEADER] = request_id
        if self.lane is not None:
            headers[LANE_HEADER] = self.lane
        response = web.Response(
            status=self.status,
            body=json.dumps(self.body(request_id)).encode(),
            content_type="application/json",
            headers=headers,
        )
        if self.close:
            response.force_close()
        return response

    def raw(self, request_id: str) -> bytes:
        """The answer as bytes, for a connection that has no request to answer through; it closes."""
        body = json.dumps(self.body(request_id)).encode()
        head = [
            f"HTTP/1.1 {self.status} {HTTPStatus(self.status).phrase}",
            "Content-Type: application/json",
            f"Content-Length: {len(body)}",
            "Connection: close",
            f"{REQUEST_ID_HEADER}: {request_id}",
            *(f"{name}: {value}" for name, value in self.headers.items()),
        ]
        return ("\r\n".join(head) + "\r\n\r\n").encode() + body


def body_too_large(limit: int) -> ProxyError:
    return ProxyError(
        413,
        "body_too_large",
        f"the request body is larger than the limit of {limit} bytes (server.max_body_bytes); "
        "send a smaller body or raise the limit",
        close=True,
    )


def headers_too_large(limit: int, size: int | None = None) -> ProxyError:
    got = f" ({size} bytes)" if size is not None else ""
    return ProxyError(
        431,
        "headers_too_large",
        f"the request headers{got} exceed the limit of {limit} bytes (server.max_header_bytes); "
        "send fewer or shorter headers, or raise the limit",
        close=True,
    )


def request_timeout(timeout_s: float) -> ProxyError:
    return ProxyError(
        408,
        "request_timeout",
        f"the request was not fully received within {timeout_s:g}s (server.receive_timeout); "
        "send the body faster or raise the limit",
        close=True,
    )


def headers_timeout(timeout_s: float) -> ProxyError:
    return ProxyError(
        408,
        "request_timeout",
        f"the request headers did not arrive within {timeout_s:g}s of its first byte (server.header_timeout)",
        close=True,
    )


def head_evicted(limit: int) -> ProxyError:
    return ProxyError(
        408,
        "request_timeout",
        f"the request headers were still arriving when the router, at its limit of {limit} open connections "
        "(server.max_connections), needed this connection for a client that was ready; send headers at once",
        close=True,
    )


def too_many_connections(limit: int) -> ProxyError:
    return ProxyError(
        503,
        "too_many_connections",
        f"all of the router's {limit} open connections (server.max_connections) have a request in progress; "
        "retry after 1s, and reuse connections (keep-alive) rather than opening many",
        headers={"Retry-After": "1", REFUSED_HEADER: "too_many_connections"},
        close=True,
    )


def method_not_allowed(method: str) -> ProxyError:
    return ProxyError(
        405,
        "method_not_allowed",
        f"{method} is not forwarded: the router is a reverse proxy, not a tunnel, and does not echo requests",
        close=True,
    )


def version_not_supported(version: str) -> ProxyError:
    return ProxyError(
        505,
        "http_version_not_supported",
        f"HTTP/{version} is not served on this port; send HTTP/1.1 (or HTTP/1.0)",
        close=True,
    )


def internal_error() -> ProxyError:
    return ProxyError(
        500,
        "internal_error",
        "the router failed on this request; the failure is logged with this request id",
        close=True,
    )


def bad_request(message: str) -> ProxyError:
    return ProxyError(400, "bad_request", message)


class CommandFailed(Exception):
    """An operator command sent to a cluster's leader that was not carried out, or whose outcome is unknown,
    and why (the admin API answers 503 with it)."""


def claim_denied(denied: tuple[str, ...]) -> ProxyError:
    return ProxyError(
        403,
        "claim_denied",
        f"this credential may not claim: {', '.join(denied)} (the config's access section grants claims)",
    )


def no_route(path: str, prefixes: list[str]) -> ProxyError:
    return ProxyError(404, "no_route", f"no route matches {path!r}; routes: {', '.join(prefixes)}")


class NothingSent(Exception):
    """The upstream could not be reached: the request may go elsewhere."""


def batch_queue_full(lane: str, waiting: int) -> ProxyError:
    message = (
        f"the {lane} lane's micro-batch queue is full ({waiting} requests wait); retry after 1s "
        f"(or raise lanes.{lane}.batching.queue_capacity)"
    )
    return _come_back(lane, "lane_full", message, 1)


def unsplittable_answer(lane: str, detail: str) -> ProxyError:
    message = f"the {lane} lane's merged answer could not be split: {detail}"
    return ProxyError(502, "upstream_failed", message, lane=lane)


def upstream_refused(lane: str, detail: str) -> ProxyError:
    message = f"the {lane} lane's upstream could not be reached: {detail}"
    return ProxyError(502, "upstream_unavailable", message, lane=lane)


def upstream_failed(lane: str, detail: str) -> ProxyError:
    return ProxyError(502, "upstream_failed", f"the {lane} lane's upstream broke off the response: {detail}", lane=lane)


def upstream_timeout(lane: str, timeout_s: float) -> ProxyError:
    return ProxyError(
        504,
        "upstream_timeout",
        f"the {lane} lane's upstream did not answer within {timeout_s:g}s (lanes.{lane}.timeout)",
        lane=lane,
    )


def lane_full(lane: str, retry_after_s: int, waiting: int, spill: bool) -> ProxyError:
    advice = f"lanes.{lane}.max_in_flight or queue_depth" + ("" if spill else f", or set lanes.{lane}.spill: true")
    message = (
        f"the {lane} lane is at max_in_flight and its queue is full ({waiting} requests wait); "
        f"retry after {retry_after_s}s (or raise {advice})"
    )
    return _come_back(lane, "lane_full", message, retry_after_s)


def predicted_miss(lane: str, traffic_class: str, latency_s: float, wait_s: float, retry_after_s: int) -> ProxyError:
    if math.isinf(latency_s):
        promise = f"within lanes.{lane}.queue_timeout"
    else:
        promise = f"within the {traffic_class} objective's {latency_s:g}s"
    message = (
        f"the {lane} lane cannot answer {promise}: the predicted wait for a slot is {wait_s:.2g}s, and no other "
        f"lane can take it in time; refused at once rather than after the wait. Retry after {retry_after_s}s"
    )
    return _come_back(lane, "lane_full", message, retry_after_s)


def queue_timeout(lane: str, timeout_s: float, retry_after_s: int) -> ProxyError:
    message = (
        f"the request waited {timeout_s:g}s (lanes.{lane}.queue_timeout) in the {lane} lane's queue without a slot; "
        f"retry after {retry_after_s}s"
    )
    return _come_back(lane, "queue_timeout", message, retry_after_s)


def _come_back(lane: str, kind: str, message: str, retry_after_s: int) -> ProxyError:
    """A 503 that says when to come back."""
    return ProxyError(503, kind, message, lane=lane, headers={"Retry-After": str(retry_after_s), REFUSED_HEADER: kind})
