"""Protocol codecs by route protocol: how requests merge and answers split.

`http` and `openai-chat` are passthrough here (LLM servers batch for
themselves); `openai-embeddings` and `kserve-v2` merge in the router's
micro-batcher. Codecs do no I/O and never import router.
"""

from __future__ import annotations

from backends.codecs.base import Codec, CodecError, Part, Reply
from backends.codecs.kserve_v2 import KServeV2Codec
from backends.codecs.openai_embeddings import OpenAIEmbeddingsCodec

_PASSTHROUGH = Codec()

CODECS: dict[str, Codec] = {
    "http": _PASSTHROUGH,
    "openai-chat": _PASSTHROUGH,
    "openai-embeddings": OpenAIEmbeddingsCodec(),
    "kserve-v2": KServeV2Codec(),
}


def codec_for(protocol: str) -> Codec:
    return CODECS[protocol]


__all__ = ["CODECS", "Codec", "CodecError", "Part", "Reply", "codec_for"]
