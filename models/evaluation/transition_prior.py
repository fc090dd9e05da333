"""A first-order transition prior for ranking: how often each item appeared near the user's last item.

On sparse data the most recent item carries most of the signal for the next one (first-order Markov
transitions: FPMC, Rendle et al. 2010; item-to-item neighbourhoods, Sarwar et al. 2001). A semantic-ID
model shares each item's vector with its SID cluster and draws less from that one item than a free-embedding
SASRec does (decision 043), so the generator's ranking adds, for every candidate ``j`` of a history ending in
item ``i``::

    weight · log(1 + c(i, j))

where ``c`` are the 1/distance-weighted co-occurrence counts within ``window`` positions of the training
sequences (:func:`models.sid.embeddings.cooccurrence`, the counts the collaborative SID embeddings are
built from). ``weight`` is chosen on validation users (:func:`models.evaluation.generator_ranker`'s
``rank_by_weights``); 0 turns the prior off. Pure: no I/O, no learned parameters.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import scipy.sparse as sp
import torch

#: Transition weights the validation users choose from (0 = no prior).
WEIGHT_GRID = (0.0, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0)


@dataclass(frozen=True)
class TransitionPrior:
    """``log1p`` co-occurrence counts [n_items, n_items] (sparse) of the training sequences."""

    log_counts: sp.csr_matrix

    @classmethod
    def fit(cls, sequences: Sequence[np.ndarray], n_items: int, window: int = 5) -> "TransitionPrior":
        """Counts from ``sequences`` (item indices in time order, training events only: never a
        validation or test target)."""
        from models.sid.embeddings import cooccurrence

        if n_items < 1:
            raise ValueError(f"n_items={n_items} must be >= 1")
        if window < 1:
            raise ValueError(f"window={window} must be >= 1, e.g. 5")
        c = cooccurrence(list(sequences), n_items, window).astype(np.float32)
        c.data = np.log1p(c.data)
        return cls(c.tocsr())

    @property
    def n_items(self) -> int:
        return self.log_counts.shape[0]

    def scores(self, last_items: np.ndarray, device: torch.device | str = "cpu") -> torch.Tensor:
        """``last_items`` [B] (the item each history ends in; -1 or out of range = none) ->
        [B, n_items] float32 ``log(1 + c(last, j))``, zeros for a row without a known last item."""
        last = np.asarray(last_items, dtype=np.int64)
        ok = (last >= 0) & (last < self.n_items)
        rows = self.log_counts[np.where(ok, last, 0)].toarray()                 # [B, I]
        rows[~ok] = 0.0
        return torch.from_numpy(rows).to(device)


def last_items(histories) -> np.ndarray:
    """[B] the most recent item of each history (``Histories``), -1 for an empty one."""
    return np.array([int(h[-1]) if len(h) else -1 for h in histories.items], dtype=np.int64)
