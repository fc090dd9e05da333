"""RQ-KMeans tokenizer: k-means on the residuals, level by level (OneRec, Deng et al. 2025).

Level 1 clusters the (L2-normalised) item embeddings; level l+1 clusters what
level l's centroid left over. An item's codes are its nearest centroid at each
level; decoding sums the chosen centroids. Compared with RQ-VAE (TIGER) it
needs no training loop and — OneRec reports — uses its codebooks more evenly,
so it is the default tokenizer. k-means is faiss's (``faiss.Kmeans``).

**Balanced k-means** (``balanced=True``; OneRec fits its RQ-KMeans codebooks
with balanced k-means): after faiss' k-means, each level runs a few Lloyd
iterations whose assignment step is *capacity constrained* — every code
takes at most ``ceil(N / K · (1 + balance_slack))`` items — so dense regions
of the embedding space (near-identical texts: same genres, same template)
are split over more codes instead of piling into one, and the centroids
move to cover them. The assignment is a greedy proposal/acceptance auction
(:func:`capacity_assign`), vectorised per round. Encoding stays plain
nearest-centroid (a new item's code cannot depend on other items), so the
balance seen by ``encode`` is what the moved centroids give.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import faiss
import numpy as np

from models.sid.dedup import default_dedup_size
from models.sid.tokenizer import auto_codebook_size, check_embeddings, codebooks_version, l2_normalize

KIND = "rq_kmeans"


@dataclass(frozen=True)
class RQKMeansConfig:
    """``codebook_size=0`` picks K from the catalog size (models.sid.tokenizer.auto_codebook_size).

    ``levels=3``: TIGER and OneRec use 3 residual levels (+1 de-duplication);
    3 × 256 codes address 16.7M prefixes, plenty for any single catalog here.
    ``dedup_size=0`` sizes the de-duplication level from the fitted collisions.
    """

    levels: int = 3
    codebook_size: int = 0
    n_iter: int = 25
    seed: int = 0
    max_points_per_centroid: int = 256
    dedup_size: int = 0
    balanced: bool = True
    balance_iters: int = 10
    balance_slack: float = 0.0

    def __post_init__(self) -> None:
        if self.balance_iters < 1:
            raise ValueError(f"RQKMeansConfig.balance_iters={self.balance_iters} must be >= 1")
        if not 0.0 <= self.balance_slack <= 10.0:
            raise ValueError(f"RQKMeansConfig.balance_slack={self.balance_slack} must be in [0, 10] "
                             "(0 = exactly N/K items per code)")
        if not 1 <= self.levels <= 8:
            raise ValueError(f"RQKMeansConfig.levels={self.levels} must be in [1, 8] (3 is the usual choice)")
        if self.codebook_size < 0 or self.codebook_size == 1 or self.codebook_size > 65536:
            raise ValueError(f"RQKMeansConfig.codebook_size={self.codebook_size} must be 0 (auto) or in [2, 65536]")
        if self.n_iter < 1:
            raise ValueError(f"RQKMeansConfig.n_iter={self.n_iter} must be >= 1")
        if self.dedup_size < 0:
            raise ValueError(f"RQKMeansConfig.dedup_size={self.dedup_size} must be 0 (auto) or positive")


class RQKMeans:
    """Residual k-means tokenizer.  fit(emb [N, E]); encode -> codes [N, L]; decode -> [N, E]."""

    def __init__(self, config: RQKMeansConfig = RQKMeansConfig()):
        self.config = config
        self.codebooks: np.ndarray | None = None   # [L, K, E] float32
        self.dedup_size = 0
        self.version = ""
        self._indexes: list[faiss.Index] = []

    # -- properties ------------------------------------------------------------------------
    @property
    def fitted(self) -> bool:
        return self.codebooks is not None

    def _need_fit(self) -> np.ndarray:
        if self.codebooks is None:
            raise RuntimeError("RQKMeans is not fitted; call fit(embeddings) or load a state first")
        return self.codebooks

    @property
    def dim(self) -> int:
        return int(self._need_fit().shape[2])

    @property
    def level_sizes(self) -> tuple[int, ...]:
        cb = self._need_fit()
        return (int(cb.shape[1]),) * int(cb.shape[0])

    @property
    def sid_level_sizes(self) -> tuple[int, ...]:
        return self.level_sizes + (self.dedup_size,)

    # -- fit / encode / decode -------------------------------------------------------------
    def fit(self, emb: np.ndarray) -> "RQKMeans":
        x = l2_normalize(check_embeddings(emb))
        n, d = x.shape
        k = self.config.codebook_size or auto_codebook_size(n)
        if n < k:
            raise ValueError(f"{n} items cannot fit a codebook of {k} codes; "
                             "give more items or a smaller RQKMeansConfig.codebook_size")
        resid = x.copy()
        books = []
        for lvl in range(self.config.levels):
            km = faiss.Kmeans(d, k, niter=self.config.n_iter, seed=self.config.seed + lvl, verbose=False,
                              max_points_per_centroid=self.config.max_points_per_centroid, spherical=False)
            km.train(resid)
            cents = np.ascontiguousarray(km.centroids, dtype=np.float32)   # [K, E]
            if self.config.balanced:
                cents = balanced_refine(resid, cents, self.config.balance_iters, self.config.balance_slack)
            idx = faiss.IndexFlatL2(d)
            idx.add(cents)
            _, a = idx.search(resid, 1)
            resid -= cents[a[:, 0]]
            books.append(cents)
        self._set_codebooks(np.stack(books))
        codes = self.encode(x)
        self.dedup_size = self.config.dedup_size or default_dedup_size(codes)
        return self

    def _set_codebooks(self, books: np.ndarray) -> None:
        self.codebooks = np.ascontiguousarray(books, dtype=np.float32)
        self._indexes = []
        for cents in self.codebooks:
            idx = faiss.IndexFlatL2(cents.shape[1])
            idx.add(cents)
            self._indexes.append(idx)
        self.version = codebooks_version(KIND, [self.codebooks])

    def _encode(self, emb: np.ndarray, n_last: int) -> tuple[np.ndarray, np.ndarray]:
        books = self._need_fit()
        resid = l2_normalize(check_embeddings(emb, self.dim)).copy()
        n, levels = resid.shape[0], books.shape[0]
        codes = np.zeros((n, levels), dtype=np.int64)
        last = np.zeros((n, n_last), dtype=np.int64)
        for lvl, idx in enumerate(self._indexes):
            kk = n_last if lvl == levels - 1 else 1
            _, a = idx.search(resid, kk)
            codes[:, lvl] = a[:, 0]
            if lvl == levels - 1:
                last = a.astype(np.int64)
            resid -= books[lvl][a[:, 0]]
        return codes, last

    def encode(self, emb: np.ndarray) -> np.ndarray:
        """Nearest centroid per level.  emb [N, E] -> codes [N, L] int64."""
        return self._encode(emb, 1)[0]

    def encode_candidates(self, emb: np.ndarray, n: int) -> np.ndarray:
        """The ``n`` best codes [N, n, L]: greedy levels 1..L-1, then the n nearest last-level codes.

        Used when an item's preferred prefix has no free de-duplication slot left.
        """
        n = max(1, min(int(n), self.level_sizes[-1]))
        codes, last = self._encode(emb, n)
        out = np.repeat(codes[:, None, :], n, axis=1)
        out[:, :, -1] = last
        return out

    def decode(self, codes: np.ndarray) -> np.ndarray:
        """Sum of the chosen centroids.  codes [N, L] -> [N, E] (normalised embedding space)."""
        books = self._need_fit()
        codes = np.asarray(codes, dtype=np.int64)
        out = np.zeros((codes.shape[0], books.shape[2]), dtype=np.float32)
        for lvl in range(codes.shape[1]):
            out += books[lvl][codes[:, lvl]]
        return out

    # -- state -----------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"kind": KIND, "version": self.version, "config": asdict(self.config),
                "dedup_size": self.dedup_size, "codebooks": self._need_fit()}

    @classmethod
    def from_state(cls, state: dict) -> "RQKMeans":
        if state.get("kind") != KIND:
            raise ValueError(f"state of kind {state.get('kind')!r} is not an RQ-KMeans state")
        tok = cls(RQKMeansConfig(**state["config"]))
        tok._set_codebooks(np.asarray(state["codebooks"]))
        tok.dedup_size = int(state["dedup_size"])
        if state.get("version") and state["version"] != tok.version:
            raise ValueError(f"codebooks do not match their version {state['version']!r} "
                             f"(got {tok.version!r}); the state is corrupt")
        return tok

    def load_state_dict(self, state: dict) -> None:
        other = self.from_state(state)
        self.__dict__.update(other.__dict__)


# ---- balanced k-means ----------------------------------------------------------------------

def capacity_assign(dist: np.ndarray, cap: int) -> np.ndarray:
    """Assign N points to K codes, each code taking at most ``cap`` points, preferring near codes.

    dist [N, K] (squared distances) -> codes [N] int64. Rounds of proposals:
    every unassigned point proposes its nearest code not yet ruled out; each
    code accepts its closest proposers up to its remaining capacity; the
    rejected move on to their next choice. Needs ``cap * K >= N``.
    """
    n, k = dist.shape
    if cap * k < n:
        raise ValueError(f"capacity {cap} x {k} codes < {n} points; raise the capacity")
    pref = np.argsort(dist, axis=1, kind="stable")            # [N, K] codes, nearest first
    ptr = np.zeros(n, dtype=np.int64)
    out = np.full(n, -1, dtype=np.int64)
    load = np.zeros(k, dtype=np.int64)
    todo = np.arange(n)
    while todo.size:
        choice = pref[todo, ptr[todo]]                        # [U]
        d = dist[todo, choice]
        order = np.lexsort((todo, d, choice))                 # by code, then distance (ties: point index)
        c_sorted = choice[order]
        starts = np.r_[0, np.flatnonzero(np.diff(c_sorted)) + 1]
        rank = np.arange(c_sorted.size) - np.repeat(starts, np.diff(np.r_[starts, c_sorted.size]))
        ok = rank < (cap - load[c_sorted])
        won = todo[order[ok]]
        out[won] = c_sorted[ok]
        load += np.bincount(c_sorted[ok], minlength=k)
        lost = todo[order[~ok]]
        ptr[lost] += 1
        todo = np.sort(lost)
    return out


def _sq_dist(x: np.ndarray, c: np.ndarray) -> np.ndarray:
    """x [N, E], c [K, E] -> squared L2 distances [N, K]."""
    return (np.sum(x * x, axis=1)[:, None] - 2.0 * (x @ c.T) + np.sum(c * c, axis=1)[None, :]).astype(np.float32)


def balanced_refine(x: np.ndarray, cents: np.ndarray, iters: int, slack: float) -> np.ndarray:
    """Lloyd iterations with capacity-constrained assignment.  x [N, E], cents [K, E] -> [K, E].

    Memory is O(N·K) per iteration (distances and preference order), fine up to ~10^5 items × 256 codes.

    A code left with no points keeps its centroid (cannot happen at slack 0 with N >= K).
    """
    n, k = x.shape[0], cents.shape[0]
    cap = int(np.ceil(n / k * (1.0 + slack)))
    cents = cents.astype(np.float32).copy()
    prev = None
    for _ in range(iters):
        a = capacity_assign(_sq_dist(x, cents), cap)           # [N]
        if prev is not None and np.array_equal(a, prev):
            break
        prev = a
        order = np.argsort(a, kind="stable")
        counts = np.bincount(a, minlength=k)
        used = np.flatnonzero(counts)
        starts = np.r_[0, np.cumsum(counts[used])[:-1]]
        sums = np.add.reduceat(x[order], starts, axis=0)                 # [U, E] per used code
        cents[used] = sums / counts[used, None]
    return np.ascontiguousarray(cents, dtype=np.float32)
