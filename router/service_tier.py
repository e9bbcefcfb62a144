"""OpenAI's `service_tier`: what a chat request asks for, what a lane sends, what the answer says served it.

    priority, fast      pin the request to the priority lane (a lane with
                        `service_tier: priority`, else the lane named
                        "realtime", else the first live lane)
    flex                switchable, like default and auto
    default, auto       switchable as usual

A lane with `service_tier:` sets the field on every chat request it sends
upstream. A flex request that comes back `429` with the error code
`resource_unavailable` (the provider has no flex capacity now) is spilled
to the next lane rather than answered. The tier that served is the
answer's own `service_tier` when the upstream says (OpenAI does), else the
tier that was sent, else "default"; it goes back in `X-Modeshift-Service-Tier`
and decides the price: a flex lane's discount is booked only for answers the
provider says it ran as flex.

The field is read only on bodies that mention it (one byte scan for the
rest). Nothing here does I/O.
"""

from __future__ import annotations

import json

from configs.schema import ModeshiftConfig, live_lanes

_MARK = b'"service_tier"'
FLEX = "flex"
DEFAULT = "default"


def requested_tier(body: bytes) -> str | None:
    """The `service_tier` a JSON request body asks for, or None."""
    if _MARK not in body:
        return None
    try:
        tier = json.loads(body).get("service_tier")
    except (ValueError, AttributeError):
        return None
    return tier if isinstance(tier, str) else None


def priority_lane(config: ModeshiftConfig) -> str:
    """The lane a priority request is pinned to."""
    live = live_lanes(config)
    tiered = [name for name in live if config.lanes[name].service_tier == "priority"]
    if tiered:
        return tiered[0]
    return "realtime" if "realtime" in live else live[0]


def with_tier(body: bytes, tier: str) -> bytes:
    """The request body with its `service_tier` set to `tier` (unchanged when it is not a JSON object)."""
    try:
        payload = json.loads(body)
    except ValueError:
        return body
    if not isinstance(payload, dict) or payload.get("service_tier") == tier:
        return body
    payload["service_tier"] = tier
    return json.dumps(payload, separators=(",", ":")).encode()


def served_tier(body: bytes | None, sent: str | None) -> str:
    """The tier an answer was served at: its own `service_tier`, else the one sent, else default."""
    if body is not None and _MARK in body:
        try:
            tier = json.loads(body).get("service_tier")
        except (ValueError, AttributeError):
            tier = None
        if isinstance(tier, str):
            return tier
    return sent or DEFAULT


def flex_unavailable(status: int, body: bytes) -> bool:
    """Whether an answer is a flex upstream's "no capacity now": 429 with the code resource_unavailable."""
    if status != 429 or b"resource_unavailable" not in body:
        return False
    try:
        error = json.loads(body).get("error")
    except (ValueError, AttributeError):
        return False
    return isinstance(error, dict) and error.get("code") == "resource_unavailable"
