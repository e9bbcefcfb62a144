"""Protocol codecs by route protocol: how requests merge and answers split.

`http` is opaque passthrough; `openai-chat` passes through too (LLM servers
batch for themselves) but reads token usage for cost; `openai-embeddings`
and `kserve-v2` merge in the router's micro-batcher. Codecs do no I/O and never import router.
"""

from __future__ import annotations

from backends.codecs.base import Codec, CodecError, Part, Reply
from backends.codecs.kserve_v2 import KServeV2Codec
from backends.codecs.openai_chat import OpenAIChatCodec
from backends.codecs.openai_embeddings import OpenAIEmbeddingsCodec

_PASSTHROUGH = Codec()

CODECS: dict[str, Codec] = {
    "http": _PASSTHROUGH,
    "openai-chat": OpenAIChatCodec(),
    "openai-embeddings": OpenAIEmbeddingsCodec(),
    "kserve-v2": KServeV2Codec(),
}


def codec_for(protocol: str) -> Codec:
    return CODECS[protocol]


__all__ = ["CODECS", "Codec", "CodecError", "Part", "Reply", "codec_for"]
