"""The router's side of access: whose credential a request carries, and its claims screened against the grant.

A credential is the value of a secret header (`Authorization: Bearer <key>`,
`api-key`, `x-api-key`); the config lists a credential by the SHA-256 of
that value (policies.path.access), so a config file never holds a key. The hash
is taken only for a request that claims something, and only when the config
lists credentials: a request that claims nothing costs one comparison.

What must not live here: the rule of what a grant allows (policies.path.access),
reading the claims from headers and bodies (router.routing, router.service_tier).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Mapping

from policies.control.objectives import Objectives
from policies.path.access import NO_CLAIMS, AccessParams, Claims, Grant, Screened, screen
from router.errors import claim_denied
from router.headers import SECRET_HEADERS


class Gatekeeper:
    """One config's grants, by the hash of each credential's key."""

    def __init__(self, params: AccessParams, objectives: Objectives):
        self.objectives = objectives
        self.refuse = params.denied == "refuse"
        self.everyone = Grant.of(params.everyone)
        self.by_key_hash = {
            credential.key_sha256: Grant.of(params.everyone, credential) for credential in params.credentials.values()
        }

    def grant_for(self, headers: Mapping[str, str]) -> Grant:
        for secret in _secrets(headers):
            grant = self.by_key_hash.get(hashlib.sha256(secret.encode()).hexdigest())
            if grant is not None:
                return grant
        return self.everyone

    def screen(self, headers: Mapping[str, str], claims: Claims) -> Screened:
        """The claims the request's credential may make; 403 for the rest when the config refuses them."""
        if claims == NO_CLAIMS:
            return Screened(claims, ())
        grant = self.grant_for(headers) if self.by_key_hash else self.everyone
        screened = screen(claims, grant, self.objectives)
        if screened.denied and self.refuse:
            raise claim_denied(screened.denied)
        return screened


def _secrets(headers: Mapping[str, str]) -> Iterator[str]:
    for name in SECRET_HEADERS:
        value = headers.get(name)
        if value is None:
            continue
        scheme, _, token = value.strip().partition(" ")
        yield token.strip() if name == "authorization" and scheme.lower() == "bearer" else value.strip()
