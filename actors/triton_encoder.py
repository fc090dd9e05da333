"""Item-text embeddings from a Triton Inference Server (``tritonclient``, HTTP or gRPC).

When ``ItemIndexerConfig.triton_url`` is set, the indexer sends its batches of
item text here instead of running MiniLM in process: the encoder then scales
(and sits on GPUs) independently of the indexer. The server side is
``infra/triton_server.py`` (PyTriton, which bundles a real Triton server that
also runs on CPU). The model contract, shared by both sides:

* model ``minilm`` (name configurable), input ``TEXT``: BYTES ``[N, 1]`` (UTF-8),
* output ``EMBEDDING``: FP32 ``[N, 384]``, L2-normalised all-MiniLM-L6-v2.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

INPUT, OUTPUT, DIM = "TEXT", "EMBEDDING", 384


@dataclass(frozen=True)
class TritonEncoderConfig:
    """``url`` is ``host:port`` (HTTP: Triton's 8000, gRPC: 8001); ``protocol`` 'http' or 'grpc'."""

    url: str
    model: str = "minilm"
    protocol: str = "http"
    batch_size: int = 64
    timeout_s: float = 30.0
    max_chars: int = 2000

    def __post_init__(self) -> None:
        if not self.url or ":" not in self.url or "://" in self.url:
            raise ValueError(f"TritonEncoderConfig.url={self.url!r} must be host:port (no scheme), e.g. 127.0.0.1:8000")
        if self.protocol not in ("http", "grpc"):
            raise ValueError(f"TritonEncoderConfig.protocol={self.protocol!r} must be 'http' or 'grpc'")
        if self.batch_size < 1 or self.timeout_s <= 0:
            raise ValueError(f"TritonEncoderConfig batch_size={self.batch_size}, timeout_s={self.timeout_s} "
                             "must be positive")


class TritonEncoder:
    """Same interface as :class:`actors.text_encoder.TextEncoder`: ``encode(texts) -> [N, 384]``."""

    dim = DIM

    def __init__(self, config: TritonEncoderConfig):
        self.config = config
        if config.protocol == "http":
            import tritonclient.http as client
            self._client = client.InferenceServerClient(config.url, network_timeout=config.timeout_s,
                                                        connection_timeout=config.timeout_s)
        else:
            import tritonclient.grpc as client
            self._client = client.InferenceServerClient(config.url)
        self._mod = client
        self.device = f"triton:{config.url}"

    def ready(self) -> bool:
        try:
            return bool(self._client.is_server_ready() and self._client.is_model_ready(self.config.model))
        except Exception:  # noqa: BLE001 - any transport error means "not ready"
            return False

    def encode(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, DIM), dtype=np.float32)
        out = []
        for s in range(0, len(texts), self.config.batch_size):
            chunk = [t[: self.config.max_chars].encode("utf-8") for t in texts[s:s + self.config.batch_size]]
            arr = np.array(chunk, dtype=np.object_).reshape(-1, 1)            # [n, 1] BYTES
            inp = self._mod.InferInput(INPUT, list(arr.shape), "BYTES")
            inp.set_data_from_numpy(arr)
            req = [self._mod.InferRequestedOutput(OUTPUT)]
            kw = {"timeout": int(self.config.timeout_s * 1e6)} if self.config.protocol == "grpc" else {}
            res = self._client.infer(self.config.model, [inp], outputs=req, **kw)
            out.append(np.asarray(res.as_numpy(OUTPUT), dtype=np.float32).reshape(len(chunk), -1))
        return np.concatenate(out, axis=0)

    def close(self) -> None:
        try:
            self._client.close()
        except Exception:  # noqa: BLE001
            pass
