"""Initialise the generator's SID code embeddings from the item embeddings the SIDs came from.

Why: the generator represents an item as the *sum* of its codes' embeddings
(:meth:`models.generator.model.GenerativeRecommender.item_vectors`), and the same
table scores codes at the output (weight tying). Randomly initialised, the
codes carry no meaning until training has seen each item many times; on small
data (MovieLens-100K: ~100 engagements per item on average, far fewer for most)
that is most of a CPU training budget. The tokenizer was fitted on item
embeddings (co-occurrence PPMI-SVD, MiniLM text, or both), so we already know
what each item should look like: choose code vectors ``C`` whose per-item sums
reproduce those embeddings as closely as possible,

    minimise_C  || A C - Z ||^2 + ridge * || C ||^2

where ``A`` [I, V] has a one in the column of each of item ``i``'s codes (one
per level, ``V = sum(level_sizes)``) and ``Z`` [I, d_model] are the item
embeddings reduced (PCA) or zero-padded to ``d_model`` — a linear
least-squares problem of size ``V``, solved in closed form. This is the same
idea as warm-starting item embeddings from a pretrained model (e.g. the
content/collaborative initialisation in LC-Rec and LIGER), made exact for a
sum-of-codes representation. Codes no item uses stay small (the ridge pulls
them to zero). The result is rescaled to ``target_std`` so that it sits at the
scale the rest of the network was initialised for.
"""

from __future__ import annotations

import numpy as np


def code_embeddings_from_items(item_emb: np.ndarray, item_sids: np.ndarray, level_sizes: tuple[int, ...],
                               d_model: int, target_std: float = 0.05, ridge: float = 1e-2) -> np.ndarray:
    """Code table [sum(level_sizes), d_model] (float32) whose per-item code sums fit ``item_emb``.

    ``item_emb`` [I, E]: the embeddings the tokenizer quantised (rows of all zeros — items with no
    signal — are left out of the fit). ``item_sids`` [I, D]: each item's codes, one per level.
    """
    emb = np.asarray(item_emb, dtype=np.float64)
    sids = np.asarray(item_sids, dtype=np.int64)
    sizes = np.asarray(level_sizes, dtype=np.int64)
    if emb.ndim != 2 or sids.ndim != 2 or len(emb) != len(sids):
        raise ValueError(f"item_emb {emb.shape} and item_sids {sids.shape} must be [I, E] and [I, D] "
                         "with the same I")
    if sids.shape[1] != len(sizes) or ((sids < 0) | (sids >= sizes[None, :])).any():
        raise ValueError(f"item_sids must hold, per level, codes below level_sizes={tuple(sizes)}")
    if d_model < 1 or target_std <= 0 or ridge < 0:
        raise ValueError(f"d_model={d_model}, target_std={target_std}, ridge={ridge}: need d_model >= 1, "
                         "target_std > 0, ridge >= 0")
    offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    V = int(sizes.sum())
    keep = np.abs(emb).sum(1) > 0
    if keep.sum() < 2:
        raise ValueError("need at least two items with non-zero embeddings to initialise code embeddings")
    z = emb[keep] - emb[keep].mean(0, keepdims=True)
    if z.shape[1] >= d_model:                        # PCA down to d_model
        _, _, vt = np.linalg.svd(z, full_matrices=False)
        z = z @ vt[:d_model].T                       # [I', d_model]
    else:                                            # fewer dims than the model: pad with zeros
        z = np.pad(z, ((0, 0), (0, d_model - z.shape[1])))
    cols = sids[keep] + offsets[None, :]             # [I', D] column of each code
    gram = np.zeros((V, V))
    np.add.at(gram, (np.repeat(cols, cols.shape[1], axis=1).ravel(), np.tile(cols, (1, cols.shape[1])).ravel()), 1.0)
    rhs = np.zeros((V, d_model))
    for lvl in range(cols.shape[1]):
        np.add.at(rhs, cols[:, lvl], z)
    table = np.linalg.solve(gram + ridge * np.eye(V), rhs)      # [V, d_model]
    std = table.std()
    if not np.isfinite(std) or std == 0:
        raise ValueError("degenerate item embeddings: the fitted code table is constant")
    return (table * (target_std / std)).astype(np.float32)
