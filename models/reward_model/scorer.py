"""What the aligner calls: predicted values of many candidate sessions per user (batched, no grad).

``RewardModelScorer(model).score(histories, sessions)`` takes a
:class:`~models.evaluation.ranker.Histories` of ``U`` users and an int64 array
``[U, N, K]`` of catalog item indices (``-1`` = empty slot) — ``N`` candidate
sessions of ``K`` slots per user — and returns float32 ``[U, N]``: each session's
value under the model's configured head weights. A user's history is encoded
once and shared by its ``N`` candidates. Invariant: a session's score does not
depend on the other sessions in the call (no batch statistics; eval mode).
"""

from __future__ import annotations

import numpy as np
import torch

from models.evaluation.ranker import Histories, as_histories
from models.reward_model.features import history_batch
from models.reward_model.model import RewardModel


class RewardModelScorer:
    """Scores candidate sessions with a trained :class:`RewardModel` on its own device."""

    def __init__(self, model: RewardModel, batch_rows: int = 4096) -> None:
        if batch_rows < 1:
            raise ValueError(f"batch_rows={batch_rows} must be >= 1 (sessions scored per forward pass)")
        self.model = model.eval()
        self.batch_rows = int(batch_rows)

    @classmethod
    def from_bytes(cls, weights: bytes, config: bytes, device: str | torch.device = "cpu",
                   batch_rows: int = 4096) -> "RewardModelScorer":
        from models.reward_model.checkpoint import decode

        return cls(decode(weights, config, device)[0], batch_rows)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @torch.no_grad()
    def score(self, histories: Histories, sessions: np.ndarray) -> np.ndarray:
        """Predicted session values ``[U, N]`` (float32) of ``sessions`` ``[U, N, K]`` for ``histories``."""
        return self._run(histories, sessions, heads=False)

    @torch.no_grad()
    def score_heads(self, histories: Histories, sessions: np.ndarray) -> np.ndarray:
        """Per-head predictions ``[U, N, 4]`` (``HEADS`` order: click, like, watch fraction, skip rates)."""
        return self._run(histories, sessions, heads=True)

    def _run(self, histories: Histories, sessions: np.ndarray, heads: bool) -> np.ndarray:
        histories = as_histories(histories)
        sessions = np.asarray(sessions, dtype=np.int64)
        if sessions.ndim != 3 or sessions.shape[0] != len(histories):
            raise ValueError(f"sessions must be [U={len(histories)}, N, K] item indices (-1 = empty slot), "
                             f"got shape {sessions.shape}")
        u_all, n, k = sessions.shape
        width = 4 if heads else 0
        out = np.zeros((u_all, n, width) if heads else (u_all, n), dtype=np.float32)
        if u_all == 0 or n == 0:
            return out
        model, dev = self.model.eval(), self.device
        cfg = model.cfg
        users_per = max(1, self.batch_rows // n)
        for u0 in range(0, u_all, users_per):
            u1 = min(u_all, u0 + users_per)
            hist = history_batch(histories.subset(range(u0, u1)), cfg.max_history, cfg.n_time_buckets).to(dev)
            mem = model.encode_history(hist)                                          # [c, 1+S, d]
            rep = torch.arange(u1 - u0, device=dev).repeat_interleave(n)              # [c*N]
            sess = torch.as_tensor(sessions[u0:u1].reshape(-1, k), device=dev)        # [c*N, K]
            res = model.score(mem.index_select(rep), sess)
            vals = res.rates if heads else res.value
            out[u0:u1] = vals.float().cpu().numpy().reshape(out[u0:u1].shape)
        return out
