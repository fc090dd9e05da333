"""Collaborative item embeddings from sequence co-occurrence (for data sets without item text).

Semantic IDs need an item embedding. MovieLens has only titles, and ID-only
files have nothing, so items are embedded by *how they are consumed*: count
pairs of items that occur within ``window`` steps of each other in the same
user's sequence (weighted 1/distance), turn counts into positive pointwise
mutual information, and factorise the PPMI matrix with a truncated SVD —
the classic word-embedding construction (Levy & Goldberg, NeurIPS 2014,
"Neural word embedding as implicit matrix factorization") applied to item
sequences (item2vec, Barkan & Koenigstein 2016). Items that are watched in
similar contexts get nearby vectors, so residual quantisation gives them
shared SID prefixes — what a generator over SIDs needs to generalise.

Pure NumPy/SciPy; only training sequences go in (no test leakage).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import scipy.sparse as sp
from scipy.sparse.linalg import svds


@dataclass(frozen=True)
class CooccurrenceConfig:
    """dim: output size; window: steps apart that still count as co-occurring;
    shift: PPMI shift (log k, k = negative samples in SGNS terms; 1 = plain PPMI);
    power: singular-value weighting (0.5 = symmetric split, Levy et al. 2015)."""

    dim: int = 64
    window: int = 5
    shift: float = 1.0
    power: float = 0.5
    seed: int = 0

    def __post_init__(self) -> None:
        if self.dim < 1:
            raise ValueError(f"CooccurrenceConfig.dim={self.dim} must be >= 1")
        if self.window < 1:
            raise ValueError(f"CooccurrenceConfig.window={self.window} must be >= 1")
        if self.shift < 1:
            raise ValueError(f"CooccurrenceConfig.shift={self.shift} must be >= 1 (1 = plain PPMI)")


def cooccurrence_matrix(seqs: Sequence[np.ndarray], n_items: int, window: int) -> sp.csr_matrix:
    """Symmetric [n_items, n_items] matrix of 1/distance-weighted co-occurrence counts."""
    rows, cols, vals = [], [], []
    for s in seqs:
        s = np.asarray(s, dtype=np.int64)
        s = s[(s >= 0) & (s < n_items)]
        for d in range(1, min(window, len(s) - 1) + 1):
            a, b = s[:-d], s[d:]
            rows += [a, b]
            cols += [b, a]
            w = np.full(len(a), 1.0 / d)
            vals += [w, w]
    if not rows:
        return sp.csr_matrix((n_items, n_items))
    return sp.csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
                         shape=(n_items, n_items))


def cooccurrence_embeddings(seqs: Sequence[np.ndarray], n_items: int,
                            cfg: CooccurrenceConfig = CooccurrenceConfig()) -> np.ndarray:
    """L2-normalised float32 [n_items, dim] item embeddings (rows of never-seen items are
    small random vectors, so they still quantise somewhere)."""
    if n_items < 2:
        raise ValueError(f"need at least 2 items for co-occurrence embeddings, got {n_items}")
    C = cooccurrence_matrix(seqs, n_items, cfg.window).tocoo()
    total = C.sum()
    rng = np.random.default_rng(cfg.seed)
    out = rng.normal(scale=1e-3, size=(n_items, cfg.dim)).astype(np.float32)
    if total > 0:
        row = np.asarray(C.sum(axis=1)).ravel()
        pmi = np.log(C.data * total / (row[C.row] * row[C.col])) - np.log(cfg.shift)
        keep = pmi > 0
        P = sp.csr_matrix((pmi[keep], (C.row[keep], C.col[keep])), shape=(n_items, n_items))
        k = min(cfg.dim, n_items - 1)
        if P.nnz:
            v0 = rng.uniform(-1, 1, n_items)
            u, s, _ = svds(P.astype(np.float64), k=k, v0=v0)
            emb = (u * (s ** cfg.power)).astype(np.float32)  # [N, k]
            used = np.asarray(abs(P).sum(axis=1)).ravel() > 0
            out[used, :k] = emb[used]
    return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
