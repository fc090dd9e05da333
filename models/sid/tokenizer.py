"""What RQ-KMeans and RQ-VAE share: default sizes, the tokenizer protocol, quality report, (de)serialisation.

A *tokenizer* turns item embeddings [N, E] into L residual codes [N, L]
(TIGER, Rajput et al. 2023; OneRec, Deng et al. 2025); the de-duplication
level (models/sid/dedup.py) then makes them unique SIDs [N, L+1]. Both
tokenizers expose ``fit / encode / encode_candidates / decode``,
``level_sizes`` (codes per level, without dedup), ``dedup_size``,
``sid_level_sizes`` (with it), ``version`` and ``state_dict()`` — a dict of
plain values and numpy arrays, turned into bytes here (in memory: files are
the caller's business).
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from models.sid.dedup import collision_rate, unique_fraction, utilization, assign_unique

#: Largest codebook: one byte per code, the size TIGER and OneRec use for big catalogs.
MAX_CODEBOOK = 256
MIN_CODEBOOK = 16


def auto_codebook_size(n_items: int) -> int:
    """Codes per level for a catalog of ``n_items``: next power of two >= sqrt(N), in [16, 256].

    Why: faiss warns below ~39 training points per centroid; with K ≈ sqrt(N)
    the first level has ≈ sqrt(N) items per code (≥ 39 from N ≈ 1.5k), so the
    codebooks stay *used* on small catalogs (K=256 on MovieLens' 1.7k items
    leaves most level-2/3 codes empty), while K^3 ≫ N keeps collisions rare.
    From N = 65k on, K = 256 (one byte per code), the published default.
    """
    if n_items < 1:
        raise ValueError(f"n_items={n_items}: need at least one item to size a codebook")
    k = 1 << max(0, int(np.ceil(np.log2(np.sqrt(n_items)))))
    return int(min(MAX_CODEBOOK, max(MIN_CODEBOOK, k)))


def l2_normalize(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def check_embeddings(emb: np.ndarray, dim: int | None = None) -> np.ndarray:
    """float32 [N, E], finite, with the expected E; clear errors otherwise."""
    emb = np.asarray(emb, dtype=np.float32)
    if emb.ndim != 2:
        raise ValueError(f"embeddings shape {emb.shape}: expected [N, E]")
    if dim is not None and emb.shape[1] != dim:
        raise ValueError(f"embedding dimension {emb.shape[1]} != the tokenizer's {dim}; "
                         "encode with the same encoder the tokenizer was fitted on")
    if not np.isfinite(emb).all():
        raise ValueError("embeddings contain NaN or inf; drop or repair those items first")
    return emb


def codebooks_version(kind: str, arrays: list[np.ndarray]) -> str:
    """A content hash, so two processes agree on which codebooks produced a SID."""
    h = hashlib.sha1()
    for a in arrays:
        h.update(np.ascontiguousarray(a).tobytes())
    return f"{kind}-{h.hexdigest()[:12]}"


class Tokenizer(Protocol):
    level_sizes: tuple[int, ...]
    dedup_size: int
    dim: int
    version: str

    def fit(self, emb: np.ndarray) -> "Tokenizer": ...
    def encode(self, emb: np.ndarray) -> np.ndarray: ...
    def encode_candidates(self, emb: np.ndarray, n: int) -> np.ndarray: ...
    def decode(self, codes: np.ndarray) -> np.ndarray: ...
    def state_dict(self) -> dict: ...


@dataclass(frozen=True)
class TokenizerReport:
    """Quality of a fitted tokenizer on a set of items."""

    n_items: int
    level_sizes: tuple[int, ...]
    utilization: tuple[float, ...]      # per level, fraction of codes used
    collision_rate: float               # before de-duplication
    unique_sid_fraction: float          # after (1.0)
    recon_mse: float                    # mean squared error of decode(encode(x)) vs x (normalised space)
    recon_cosine: float                 # mean cosine(decode(encode(x)), x)
    max_dedup: int                      # largest collision group

    def as_metrics(self) -> dict[str, float]:
        out = {f"utilization_l{i + 1}": u for i, u in enumerate(self.utilization)}
        out.update(collision_rate=self.collision_rate, unique_sid_fraction=self.unique_sid_fraction,
                   recon_mse=self.recon_mse, recon_cosine=self.recon_cosine, max_dedup=self.max_dedup)
        return out


def report(tok: Tokenizer, emb: np.ndarray) -> TokenizerReport:
    x = l2_normalize(check_embeddings(emb, tok.dim))
    codes = tok.encode(x)
    sids = assign_unique(codes)
    rec = tok.decode(codes)
    cos = np.sum(l2_normalize(rec) * x, axis=1)
    return TokenizerReport(
        n_items=int(x.shape[0]), level_sizes=tuple(tok.level_sizes),
        utilization=tuple(utilization(codes, tok.level_sizes)),
        collision_rate=collision_rate(codes), unique_sid_fraction=unique_fraction(sids),
        recon_mse=float(np.mean(np.sum((rec - x) ** 2, axis=1))), recon_cosine=float(cos.mean()),
        max_dedup=int(sids[:, -1].max() + 1) if len(sids) else 0)


# ---- bytes ---------------------------------------------------------------------------------

def state_to_bytes(state: dict) -> bytes:
    """Serialise a state dict (JSON-able values + numpy arrays) to bytes (npz in memory)."""
    arrays = {k: v for k, v in state.items() if isinstance(v, np.ndarray)}
    meta = {k: v for k, v in state.items() if not isinstance(v, np.ndarray)}
    buf = io.BytesIO()
    np.savez(buf, __meta__=np.frombuffer(json.dumps(meta).encode("utf-8"), dtype=np.uint8), **arrays)
    return buf.getvalue()


def state_from_bytes(blob: bytes) -> dict:
    with np.load(io.BytesIO(blob), allow_pickle=False) as z:
        state = json.loads(bytes(z["__meta__"]).decode("utf-8"))
        state.update({k: z[k] for k in z.files if k != "__meta__"})
    return state


def tokenizer_to_bytes(tok: Tokenizer) -> bytes:
    return state_to_bytes(tok.state_dict())


def tokenizer_from_bytes(blob: bytes) -> Tokenizer:
    """Rebuild an RQ-KMeans or RQ-VAE tokenizer from :func:`tokenizer_to_bytes` output."""
    state = state_from_bytes(blob)
    kind = state.get("kind")
    if kind == "rq_kmeans":
        from models.sid.rq_kmeans import RQKMeans
        return RQKMeans.from_state(state)
    if kind == "rq_vae":
        from models.sid.rq_vae import RQVAE
        return RQVAE.from_state(state)
    raise ValueError(f"unknown tokenizer kind {kind!r} in state; expected 'rq_kmeans' or 'rq_vae'")
