"""Who owns a stored object: a keyed hash of the credential that made it.

A job, a file or a batch belongs to the caller whose secret headers
(`Authorization`, `api-key`, `x-api-key`) made it; any other caller gets 404
for it, as if it did not exist, and only the admin API sees every object.
The owner is HMAC-SHA256 over those headers with a key kept in the job
store, so the store never holds a secret as a lookup key, and a leaked
owner column cannot be checked against guessed keys without the store's
key. A caller without any secret header is one tenant of its own
(anonymous): it sees what other anonymous callers stored, nothing else.

What must not live here: storage (router.jobs.store), HTTP (router.jobs.api).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping

from multidict import CIMultiDict, CIMultiDictProxy

from router.headers import CREDENTIAL_HEADERS, SECRET_HEADERS

KEY_BYTES = 32


class Owners:
    """Turns a request's headers into its owner, under one store's key."""

    def __init__(self, key: bytes):
        if len(key) < KEY_BYTES:
            raise ValueError(f"an owner key needs at least {KEY_BYTES} bytes")
        self._key = key

    def of(self, headers: Mapping[str, str]) -> str:
        headers = _case_blind(headers)
        message = b"".join(
            name.encode() + b"\0" + headers[name].encode() + b"\n" for name in SECRET_HEADERS if name in headers
        )
        return hmac.new(self._key, message, hashlib.sha256).hexdigest()


def credentials_of(headers: Mapping[str, str]) -> list[tuple[str, str]]:
    """The credential headers present, to send again when a stored request runs."""
    headers = _case_blind(headers)
    return [(name, headers[name]) for name in CREDENTIAL_HEADERS if name in headers]


def _case_blind(headers: Mapping[str, str]) -> Mapping[str, str]:
    return headers if isinstance(headers, (CIMultiDict, CIMultiDictProxy)) else CIMultiDict(headers)
