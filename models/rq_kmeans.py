"""RQ-KMeans tokenizer: k-means on the residuals, level by level (OneRec, Deng et al. 2025).

Level 1 clusters the (L2-normalised) item embeddings; level l+1 clusters what
level l's centroid left over. An item's codes are its nearest centroid at each
level; decoding sums the chosen centroids. Compared with RQ-VAE (TIGER) it
needs no training loop and — OneRec reports — uses its codebooks more evenly,
so it is the default tokenizer. k-means is faiss's (``faiss.Kmeans``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import faiss
import numpy as np

from models.sid_dedup import default_dedup_size
from models.tokenizer import auto_codebook_size, check_embeddings, codebooks_version, l2_normalize

KIND = "rq_kmeans"


@dataclass(frozen=True)
class RQKMeansConfig:
    """``codebook_size=0`` picks K from the catalog size (models.tokenizer.auto_codebook_size).

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

    def __post_init__(self) -> None:
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
            _, a = km.index.search(resid, 1)
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
