"""Who may claim what: the `access:` section, and the rule that screens a request's claims.

A request may *claim* things that buy it precedence or a costlier lane:
a traffic class (`X-Modeshift-Priority`), a lane (`X-Modeshift-Mode`), a
deadline (`X-Modeshift-Deadline-Ms`, which rules slow lanes out) and a
service tier (`service_tier: priority` in an OpenAI chat body). None of them
is trusted by default. The config grants them per credential (a key, listed
by the SHA-256 of its value, never the value) or to everyone:

    access:
      denied: ignore            # or refuse: 403 with the router's JSON error
      everyone: {classes: [batchy]}
      credentials:
        checkout: {key_sha256: "9f86d0...", classes: [pinned], lanes: [realtime], tiers: [priority], deadline: true}

A credential gets its own grant and everyone's. `"*"` in a list grants
every class, lane or tier. What never needs a grant is what asks for less:
a class no more urgent than `switchable` (its priority number at least
switchable's), the tiers `default`, `auto` and `flex`, `X-Modeshift-Mode:
auto`. A fresh config grants nothing else, so no client may claim `pinned`,
a lane, a deadline or the priority tier until the operator says who may.

A claim that is denied is either dropped (`ignore`: the request is placed as
its route says; the router names the dropped claims in
`X-Modeshift-Claim-Denied`) or refused (`refuse`).

Pure: no headers, no hashing, no I/O. router.claims finds the credential
and carries the verdict out.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal, NamedTuple

from pydantic import BaseModel, ConfigDict, Field, field_validator

from policies.control.objectives import SWITCHABLE, Objectives

ANY = "*"
CLASS, LANE, DEADLINE, TIER = "class", "lane", "deadline", "tier"
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
PRIORITY_TIERS = frozenset(("priority", "fast"))  # OpenAI's priority processing; "fast" is its older name


class GrantParams(BaseModel):
    """What a credential (or everyone) may claim."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    classes: tuple[str, ...] = Field((), description='traffic classes it may claim ("*": any)')
    lanes: tuple[str, ...] = Field((), description='lanes it may pin with X-Modeshift-Mode ("*": any)')
    tiers: tuple[Literal["priority", "*"], ...] = Field((), description="service tiers it may ask for")
    deadline: bool = Field(False, description="whether its X-Modeshift-Deadline-Ms is honoured")


class CredentialParams(GrantParams):
    key_sha256: str = Field(
        description="SHA-256 (hex) of the credential's secret: the bearer token, api-key or x-api-key value"
    )

    @field_validator("key_sha256")
    @classmethod
    def _hex_digest(cls, value: str) -> str:
        if not _SHA256.match(value):
            # The value is not echoed: it may be the key itself, pasted by mistake.
            raise ValueError("expected the key's SHA-256 as 64 lowercase hex digits (printf %s KEY | sha256sum)")
        return value


class AccessParams(BaseModel):
    """The `access:` section."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    denied: Literal["ignore", "refuse"] = Field(
        "ignore", description="an ungranted claim: dropped (ignore) or answered 403 (refuse)"
    )
    everyone: GrantParams = Field(default_factory=GrantParams, description="what any client may claim")
    credentials: dict[str, CredentialParams] = Field(
        default_factory=dict, description="name -> the key's hash and what it may claim besides everyone's"
    )

    def names(self) -> Iterator[tuple[tuple[str | int, ...], str, str]]:
        """(path, "class" | "lane", name) of every class and lane named in a grant, for the config's cross-checks."""
        grants: list[tuple[tuple[str | int, ...], GrantParams]] = [(("everyone",), self.everyone)]
        grants += [(("credentials", name), grant) for name, grant in self.credentials.items()]
        for path, grant in grants:
            for i, name in enumerate(grant.classes):
                if name != ANY:
                    yield (*path, "classes", i), CLASS, name
            for i, name in enumerate(grant.lanes):
                if name != ANY:
                    yield (*path, "lanes", i), LANE, name


class Claims(NamedTuple):
    """What one request claims; None (False for the tier) where it claims nothing."""

    lane: str | None
    traffic_class: str | None
    deadline_s: float | None
    priority_tier: bool


NO_CLAIMS = Claims(None, None, None, False)


@dataclass(frozen=True, slots=True)
class Grant:
    """A credential's grant and everyone's, together."""

    classes: frozenset[str]
    lanes: frozenset[str]
    priority_tier: bool
    deadline: bool

    @classmethod
    def of(cls, *grants: GrantParams) -> Grant:
        return cls(
            frozenset(name for g in grants for name in g.classes),
            frozenset(name for g in grants for name in g.lanes),
            any(g.tiers for g in grants),
            any(g.deadline for g in grants),
        )

    def allows_class(self, traffic_class: str, objectives: Objectives) -> bool:
        if ANY in self.classes or traffic_class in self.classes:
            return True
        return objectives[traffic_class].priority >= objectives[SWITCHABLE].priority  # asks for no precedence

    def allows_lane(self, lane: str) -> bool:
        return ANY in self.lanes or lane in self.lanes


class Screened(NamedTuple):
    kept: Claims
    denied: tuple[str, ...]  # the kinds of the claims dropped: "class", "lane", "deadline", "tier"


def screen(claims: Claims, grant: Grant, objectives: Objectives) -> Screened:
    """The claims `grant` allows, and the kinds of those it does not."""
    if claims == NO_CLAIMS:
        return Screened(claims, ())
    denied: list[str] = []
    lane, traffic_class, deadline_s, tier = claims
    if traffic_class is not None and not grant.allows_class(traffic_class, objectives):
        traffic_class = None
        denied.append(CLASS)
    if lane is not None and not grant.allows_lane(lane):
        lane = None
        denied.append(LANE)
    if deadline_s is not None and not grant.deadline:
        deadline_s = None
        denied.append(DEADLINE)
    if tier and not grant.priority_tier:
        tier = False
        denied.append(TIER)
    return Screened(Claims(lane, traffic_class, deadline_s, tier), tuple(denied))
