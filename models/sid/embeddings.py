"""Item representations without text, and the fusion of text and behaviour.

* **Collaborative embeddings** for ID-only data: item-item co-occurrence
  within a sliding window of each behaviour sequence, re-weighted by positive
  pointwise mutual information (PPMI; Levy & Goldberg 2014 show SGNS/word2vec
  implicitly factorises shifted PMI) and factorised by truncated SVD,
  ``E = U_d · sqrt(S_d)``. Deterministic, no training loop, seconds on
  MovieLens-sized data. Items never seen get zero rows (flagged by ``seen``).
* **Fusion** of content (sentence encoder) and collaborative vectors: each
  part is L2-normalised and weighted so that cosine similarity of fused
  vectors is ``w·cos_text + (1-w)·cos_collab`` when both parts exist; an item
  that lacks one part keeps only the other, at full weight.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
from scipy.sparse.linalg import svds


@dataclass(frozen=True)
class CooccurrenceConfig:
    """``window``: neighbours on each side counted as co-occurring; ``dim``: SVD rank."""

    dim: int = 64
    window: int = 5
    min_count: int = 1
    seed: int = 0

    def __post_init__(self) -> None:
        if self.dim < 1 or self.window < 1 or self.min_count < 1:
            raise ValueError(f"CooccurrenceConfig dim={self.dim}, window={self.window}, "
                             f"min_count={self.min_count} must all be >= 1")


def cooccurrence(sequences: list[np.ndarray], n_items: int, window: int) -> sp.csr_matrix:
    """Symmetric co-occurrence counts [I, I] of items within ``window`` positions, 1/distance weighted."""
    rows, cols, vals = [], [], []
    for seq in sequences:
        s = np.asarray(seq, dtype=np.int64)
        for d in range(1, window + 1):
            if s.size <= d:
                break
            a, b = s[:-d], s[d:]
            keep = a != b
            rows += [a[keep], b[keep]]
            cols += [b[keep], a[keep]]
            w = np.full(int(keep.sum()), 1.0 / d)
            vals += [w, w]
    if not rows:
        return sp.csr_matrix((n_items, n_items), dtype=np.float64)
    r, c, v = np.concatenate(rows), np.concatenate(cols), np.concatenate(vals)
    return sp.coo_matrix((v, (r, c)), shape=(n_items, n_items)).tocsr()


def collaborative_embeddings(sequences: list[np.ndarray], n_items: int,
                             config: CooccurrenceConfig = CooccurrenceConfig()) -> tuple[np.ndarray, np.ndarray]:
    """PPMI-SVD item vectors from behaviour sequences (lists of item indices in time order).

    Returns ``(emb [I, dim] float32, seen [I] bool)``; unseen items have zero rows.
    """
    if n_items < 2:
        raise ValueError(f"n_items={n_items}: need at least 2 items for co-occurrence embeddings")
    c = cooccurrence(sequences, n_items, config.window)
    counts = np.asarray(c.sum(axis=1)).ravel()
    seen = counts >= config.min_count
    total = counts.sum()
    if total == 0:
        return np.zeros((n_items, config.dim), dtype=np.float32), seen & False
    coo = c.tocoo()
    # PMI with context-distribution smoothing (alpha = 0.75, as in word2vec)
    ctx = counts ** 0.75
    ctx = ctx / ctx.sum()
    pmi = np.log(coo.data * 1.0 / total) - np.log(counts[coo.row] / total) - np.log(ctx[coo.col])
    keep = pmi > 0
    m = sp.csr_matrix((pmi[keep], (coo.row[keep], coo.col[keep])), shape=(n_items, n_items))
    k = int(min(config.dim, n_items - 1))
    rng = np.random.default_rng(config.seed)
    v0 = rng.normal(size=n_items)
    if m.nnz == 0:
        return np.zeros((n_items, config.dim), dtype=np.float32), seen
    u, s, _ = svds(m.astype(np.float64), k=k, v0=v0)
    order = np.argsort(-s)
    emb = u[:, order] * np.sqrt(s[order])[None, :]
    # deterministic sign: largest-magnitude entry of each component positive
    signs = np.sign(emb[np.abs(emb).argmax(axis=0), np.arange(k)])
    emb = emb * np.where(signs == 0, 1, signs)[None, :]
    out = np.zeros((n_items, config.dim), dtype=np.float32)
    out[:, :k] = emb
    out[~seen] = 0.0
    return out, seen


def fuse(text: np.ndarray | None, collab: np.ndarray | None, text_weight: float = 0.5,
         has_text: np.ndarray | None = None, has_collab: np.ndarray | None = None) -> np.ndarray:
    """Concatenate normalised parts: [I, Et] + [I, Ec] -> [I, Et + Ec], unit norm rows.

    Rows with both parts: ``sqrt(w)·t ⊕ sqrt(1-w)·c``; rows with one part keep it
    at full weight; ``has_*`` default to "row is non-zero".
    """
    if not 0.0 <= text_weight <= 1.0:
        raise ValueError(f"text_weight={text_weight} must be in [0, 1]")
    if text is None and collab is None:
        raise ValueError("fuse needs at least one of text or collab embeddings")
    n = (text if text is not None else collab).shape[0]
    t = np.zeros((n, 0), np.float32) if text is None else _unit(text)
    c = np.zeros((n, 0), np.float32) if collab is None else _unit(collab)
    if t.shape[0] != c.shape[0] and t.shape[1] and c.shape[1]:
        raise ValueError(f"text has {t.shape[0]} rows but collab has {c.shape[0]}")
    ht = (np.linalg.norm(t, axis=1) > 0) if has_text is None else np.asarray(has_text, bool)
    hc = (np.linalg.norm(c, axis=1) > 0) if has_collab is None else np.asarray(has_collab, bool)
    both = ht & hc
    wt = np.where(both, np.sqrt(text_weight), np.where(ht, 1.0, 0.0))[:, None]
    wc = np.where(both, np.sqrt(1.0 - text_weight), np.where(hc, 1.0, 0.0))[:, None]
    return np.concatenate([t * wt, c * wc], axis=1).astype(np.float32)


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    n = np.linalg.norm(x, axis=1, keepdims=True)
    return np.where(n > 0, x / np.maximum(n, 1e-12), 0.0).astype(np.float32)
