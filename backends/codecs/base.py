"""What a protocol codec is: read a request for merging, merge many, split the answer.

A codec never does I/O. The router reads each client request with `read`;
`None` means "not mergeable, pass it through as it is" (an unknown shape, a
streaming request, a request the upstream should judge for itself). Requests
merge only when their `Part.key` agrees (same model, same encoding, same
tensor layout); the router adds the path and the credentials to that key, so
one client's request never rides on another's API key.

`split` maps one successful merged answer back to each part, in order. An
answer that does not fit the parts raises `CodecError`; every part then
fails with a 502, since the upstream's answer cannot be trusted.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Any

# Input tokens are estimated from bytes (about 4 bytes per token of English
# text; OpenAI's rule of thumb) where the request does not say: enough to
# tell an outsized input from a normal one.
BYTES_PER_TOKEN = 4


def estimated_tokens(size_bytes: int) -> int:
    return -(-size_bytes // BYTES_PER_TOKEN)


class CodecError(Exception):
    """A merged answer that cannot be split back."""


@dataclass(frozen=True, slots=True)
class Part:
    """One client request, read for merging."""

    key: Hashable  # parts merge only with parts of the same key
    items: int  # inputs it adds to a batch
    inputs: Any  # the codec's own view of the request
    weight: float  # its share of the batch's input tokens, when the answer only gives a total
    tokens: int = 0  # its input tokens, estimated (BYTES_PER_TOKEN): bounds the size of a merged call


@dataclass(frozen=True, slots=True)
class Reply:
    """One part's answer."""

    status: int
    body: bytes
    content_type: str = "application/json"
    input_tokens: int = 0


class Codec:
    name: str = ""
    batchable: bool = False

    def read(self, body: bytes) -> Part | None:
        return None

    def merge(self, parts: Sequence[Part]) -> bytes:
        raise NotImplementedError

    def split(self, body: bytes, parts: Sequence[Part]) -> list[Reply]:
        raise NotImplementedError

    def usage(self, body: bytes) -> tuple[int, int] | None:
        """(input, output) tokens of a whole answer, when the protocol reports them."""
        return None

    def stream_usage(self) -> Any:
        """A reader with `feed(chunk)` and `.usage` for streamed answers, or None."""
        return None


def apportion(total: int, weights: Sequence[float]) -> list[int]:
    """Split the integer `total` in proportion to `weights`; the shares sum to `total` (largest remainder)."""
    whole = sum(weights)
    if total <= 0 or whole <= 0:
        return [0] * len(weights)
    exact = [total * w / whole for w in weights]
    shares = [int(x) for x in exact]
    by_remainder = sorted(range(len(weights)), key=lambda i: exact[i] - shares[i], reverse=True)
    for i in by_remainder[: total - sum(shares)]:
        shares[i] += 1
    return shares
