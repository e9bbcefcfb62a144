"""Every header name the router gives a meaning to; which headers cross the proxy, each way, and what it adds.

RFC 9110 section 7.6.1: a proxy removes the hop-by-hop headers and every
header that `Connection` names, then adds its own. The order matters: the
forwarding headers are set after the stripping, so a client that lists
`X-Forwarded-For` in `Connection` cannot make the proxy drop the address it
adds. `Host` and the body framing (`Content-Length`, `Transfer-Encoding`) are
never copied; the upstream connection sets its own.

`parent_trace` reads a W3C `traceparent` (it passes through like any
end-to-end header; router.telemetry.tracing replaces it for a traced request).

What must not live here: choosing lanes or upstreams (router.routing).
"""

from __future__ import annotations

import itertools
import re
import secrets
from collections.abc import Mapping

from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy

# A request's or an answer's headers: as aiohttp hands them over (a proxy), or as the router builds them.
Headers = CIMultiDictProxy[str] | CIMultiDict[str]

HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
# Expect is answered by the router (router.intake): the upstream gets the body whole.
_NOT_FORWARDED = HOP_BY_HOP | {"host", "content-length", "expect"}
_FORWARDING = ("x-forwarded-for", "x-forwarded-proto", "x-forwarded-host")

# Every header name the router gives a meaning to lives here.
REQUEST_ID_HEADER = "X-Request-Id"  # kept from the client when it is a reasonable token, else made up
LANE_HEADER = "X-Modeshift-Lane"  # on every answer: the lane that served it
MODE_HEADER = "X-Modeshift-Mode"  # a lane name pins the request to it; auto or none: drawn from the weights
DEADLINE_HEADER = "X-Modeshift-Deadline-Ms"  # rules out lanes whose p95 is over it
PRIORITY_HEADER = "X-Modeshift-Priority"  # the request's traffic class (objectives)
# On an answer whose request made claims its credential was not granted (policies.path.access, `denied: ignore`):
# the kinds of the claims dropped, e.g. "class, lane".
CLAIM_DENIED_HEADER = "X-Modeshift-Claim-Denied"
SERVICE_TIER_HEADER = "X-Modeshift-Service-Tier"  # on a chat answer: the OpenAI service tier that served it
BATCH_HEADER = "X-Modeshift-Batch"  # on a micro-batched answer: "<batch id>/<requests in the call>"
# On an answer the router read whole: the dollars it attributed to this request (its share of a merged call).
# A streamed answer's cost is known only at its end, after its headers: it is in the metrics.
COST_HEADER = "X-Modeshift-Cost-Usd"
# On the router's own 503s (back-pressure: nothing reached an upstream), never on an upstream's: a client,
# and the job runner, can tell "come back later" from an upstream that failed.
REFUSED_HEADER = "X-Modeshift-Refused"
IDEMPOTENCY_HEADER = "Idempotency-Key"  # IETF httpapi draft: a job's, and on every run of a job its id
TRACEPARENT = "traceparent"  # W3C Trace Context

# The headers that say who the caller is to an upstream: requests merged into
# one call must agree on them, and a stored job keeps them to run later. The
# first three are secrets; a stored object's owner is a keyed hash of them
# (router.jobs.tenants).
SECRET_HEADERS = ("authorization", "api-key", "x-api-key")
# Set by the job runner on a job's request: its id (router.jobs.api); the
# micro-batcher keeps jobs to their share of a lane's merged calls.
JOB_HEADER = "X-Modeshift-Job"
CREDENTIAL_HEADERS = (*SECRET_HEADERS, "openai-organization", "openai-project")

# A client's request id is kept when it is a reasonable token: it ends up in
# logs and headers, so no spaces, control characters or novels.
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:/+=-]{1,128}$")


# Made-up ids: a random prefix per process and a counter, unique without
# reading the system's entropy pool on every request (uuid4 does).
_ID_PREFIX = secrets.token_hex(6)
_id_counter = itertools.count(1)


# A request's id, where the data-plane server finds it to answer a failure in the proxy itself (router.dataplane).
REQUEST_ID_KEY = web.RequestKey("request_id", str)


def request_id_from(headers: Mapping[str, str]) -> str:
    given = headers.get(REQUEST_ID_HEADER)
    if given is not None and _REQUEST_ID.match(given):
        return given
    return f"{_ID_PREFIX}{next(_id_counter):012x}"


def parent_trace(value: str) -> tuple[str, bool] | None:
    """(trace id, sampled) from a traceparent header; None when it is not valid W3C trace context."""
    parts = value.strip().split("-")
    if len(parts) < 4 or len(parts[0]) != 2 or parts[0] == "ff" or len(parts[1]) != 32 or len(parts[3]) != 2:
        return None
    version, trace_id, parent_id, flags = parts[:4]
    if version == "00" and len(parts) != 4:
        return None
    try:
        if int(trace_id, 16) == 0 or len(parent_id) != 16 or int(parent_id, 16) == 0:
            return None
        return trace_id.lower(), bool(int(flags, 16) & 1)
    except ValueError:
        return None


def _connection_named(headers: Headers) -> set[str]:
    named: set[str] = set()
    for value in headers.getall("Connection", ()):
        named.update(token.strip().lower() for token in value.split(",") if token.strip())
    return named


def end_to_end(headers: Headers) -> CIMultiDict[str]:
    """A copy without the hop-by-hop headers, those `Connection` names, Host and framing."""
    out = CIMultiDict(headers)  # copied in C; then the few that must go are removed
    drop = _NOT_FORWARDED | _connection_named(headers) if "Connection" in headers else _NOT_FORWARDED
    for name in drop:
        if name in out:
            del out[name]
    return out


def upstream_request_headers(headers: Headers, *, peer: str | None, scheme: str, request_id: str) -> CIMultiDict[str]:
    """The headers to send upstream for a client request with `headers`."""
    out = end_to_end(headers)
    prior = out.getall("X-Forwarded-For", ())
    for name in _FORWARDING:
        out.popall(name, None)
    chain = [*prior, peer] if peer else prior
    if chain:
        out["X-Forwarded-For"] = ", ".join(chain)
    out["X-Forwarded-Proto"] = scheme
    host = headers.get("Host")
    if host:
        out["X-Forwarded-Host"] = host
    out[REQUEST_ID_HEADER] = request_id
    return out


def client_response_headers(
    headers: Headers, *, lane: str, request_id: str, claims_denied: str | None = None
) -> CIMultiDict[str]:
    """The headers to send the client for an upstream response with `headers`."""
    out = end_to_end(headers)
    out.popall(REFUSED_HEADER, None)  # only the router's own refusals carry it
    out.popall(CLAIM_DENIED_HEADER, None)
    out[LANE_HEADER] = lane
    out[REQUEST_ID_HEADER] = request_id
    if claims_denied is not None:
        out[CLAIM_DENIED_HEADER] = claims_denied
    return out
