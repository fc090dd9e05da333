"""An HSTU encoder layer: pointwise aggregated attention with a relative position / time bias.

HSTU (Zhai et al., ICML 2024, "Actions Speak Louder than Words: Trillion-Parameter Sequential
Transducers for Generative Recommendations", eqs. 1–3) replaces a transformer layer (softmax
attention + FFN) by one gated block:

* ``U, V, Q, K = Split(SiLU(f1(Norm(X))))`` — one linear projection, SiLU on all four parts;
* ``A = SiLU(Q Kᵀ / sqrt(d_head) + rab) / n`` — *pointwise* attention: no softmax, so the weights
  do not sum to one and how strongly (how often) the history matches a query survives
  aggregation; ``rab`` is a learned bias of the bucketed relative position and the bucketed
  time gap between query and key (one scalar per head and bucket);
* ``Y = X + Dropout(f2(Norm(A V) ⊙ U))`` — the gate ``U`` stands in for the FFN.

``n`` is a constant, ``1 + max_history`` (the most keys a query can attend: the user token and
``max_history`` events), as the paper's reference divides by the padded maximum sequence length.
Not the per-row count of attended positions (that would make the sum a mean and drop the
intensity signal HSTU keeps on purpose), and not the batch's padded width (that would make a
row's states depend on how much padding its batch has, breaking the encoder's padding contract).

Invariants (the encoder contract of :mod:`models.generator.model`): causal (the state of event
``j`` depends on events ``<= j`` only) and padding-invariant (left or right padding give the
same states for real positions): relative positions count real events only, and times are
cumulative sums of per-event gaps in which padding adds nothing, so a query–key time gap uses
the gaps of the events between them only.

Times: the history carries a log2 bucket of each event's gap to the previous event
(:func:`models.generator.features.gap_buckets`), not absolute times. Each bucket is mapped to a
representative gap (the geometric middle of its range), summed over the window into an
approximate event time, and the query–key difference is bucketed again on a log2 scale.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
import torch.nn.functional as F

#: Buckets of the relative-time bias: 0 = a pair with the user token, then 1 + floor(log2(1 + gap_s)).
RAB_TIME_BUCKETS = 32


def event_times(time_bucket: Tensor, mask: Tensor) -> Tensor:
    """Approximate event times [B, S] (seconds from the window's start) from gap buckets [B, S].

    Bucket ``b >= 2`` holds gaps ``g`` with ``floor(log2(1 + g)) = b - 2``; its representative is
    ``2 ** (b - 1.5) - 1`` (geometric middle of ``1 + g``). Buckets 0 (padding) and 1 (no previous
    event) add no time, so padding never moves a real event's time relative to another's.
    """
    tb = time_bucket.to(torch.float32)
    gap = torch.where(tb >= 2, torch.exp2(tb - 1.5) - 1.0, torch.zeros_like(tb))
    return torch.cumsum(gap * mask.to(gap.dtype), dim=1)


def relative_buckets(mask: Tensor, time_bucket: Tensor, max_history: int) -> tuple[Tensor, Tensor]:
    """Bias buckets of every (query, key) pair of the encoder sequence [user token, events].

    ``mask`` [B, S] bool (True = real event), ``time_bucket`` [B, S]. Returns ``(pos_idx, time_idx)``,
    each [B, 1+S, 1+S] long: ``pos_idx`` = the number of real events from key to query (clipped
    at ``max_history``; ``max_history + 1`` for a pair with the user token); ``time_idx`` = 0 for a
    pair with the user token, else ``1 + floor(log2(1 + dt_s))`` capped at ``RAB_TIME_BUCKETS - 1``.
    Values for pairs that attention masks out (future keys, padding) are unused.
    """
    b = mask.shape[0]
    m = mask.bool()
    zero = torch.zeros(b, 1, dtype=torch.float32, device=mask.device)
    pos = torch.cat([zero, m.to(torch.float32).cumsum(1)], dim=1)               # [B, 1+S] real-event count
    t = torch.cat([zero, event_times(time_bucket, m)], dim=1)                    # [B, 1+S] seconds
    dist = (pos[:, :, None] - pos[:, None, :]).clamp(0, max_history).long()     # query - key
    dt = (t[:, :, None] - t[:, None, :]).clamp(min=0)
    tidx = (1 + torch.floor(torch.log2(1.0 + dt))).clamp(max=RAB_TIME_BUCKETS - 1).long()
    user = torch.zeros_like(pos, dtype=torch.bool)
    user[:, 0] = True
    with_user = user[:, :, None] | user[:, None, :]                              # [B, 1+S, 1+S]
    pos_idx = torch.where(with_user, torch.full_like(dist, max_history + 1), dist)
    time_idx = torch.where(with_user, torch.zeros_like(tidx), tidx)
    return pos_idx, time_idx


def pointwise_attention(q: Tensor, k: Tensor, v: Tensor, bias: Tensor, mask: Tensor, n: float) -> Tensor:
    """``SiLU(q kᵀ / sqrt(d_head) + bias) / n`` applied to ``v``, masked entries zero (no softmax).

    ``q``, ``k``, ``v`` [B, H, T, Dh]; ``bias`` [B, H, T, T] float; ``mask`` bool broadcastable to
    [B, H, T, T] (True = attend). Returns [B, H, T, Dh]. A fully masked row gives zeros, not NaN.
    """
    s = torch.matmul(q, k.transpose(-1, -2)) * (q.shape[-1] ** -0.5) + bias
    a = F.silu(s).masked_fill(~mask, 0.0) / n
    return torch.matmul(a, v)


class HSTULayer(nn.Module):
    """One HSTU block (module docstring): ``x`` [B, T, d] -> [B, T, d], pre-norm, residual."""

    def __init__(self, d: int, heads: int, max_history: int, dropout: float) -> None:
        super().__init__()
        if d % heads:
            raise ValueError(f"d_model={d} must be divisible by heads={heads}")
        self.d, self.h, self.dh = d, heads, d // heads
        self.n = float(1 + max_history)       # the constant normaliser (module docstring)
        self.norm_in = nn.LayerNorm(d)
        self.f1 = nn.Linear(d, 4 * d)          # -> U, V, Q, K
        self.norm_av = nn.LayerNorm(d)
        self.f2 = nn.Linear(d, d)
        self.rab_pos = nn.Embedding(max_history + 2, heads)    # distance 0..max_history, then the user token
        self.rab_time = nn.Embedding(RAB_TIME_BUCKETS, heads)
        nn.init.zeros_(self.rab_pos.weight)   # start as plain pointwise attention; the bias is learned
        nn.init.zeros_(self.rab_time.weight)
        self.drop = nn.Dropout(dropout)

    def bias(self, pos_idx: Tensor, time_idx: Tensor) -> Tensor:
        """The relative attention bias [B, H, T, T] of :func:`relative_buckets`' indices."""
        return (self.rab_pos(pos_idx) + self.rab_time(time_idx)).permute(0, 3, 1, 2)

    def forward(self, x: Tensor, mask: Tensor, pos_idx: Tensor, time_idx: Tensor) -> Tensor:
        """``mask`` bool [B, 1, T, T] (causal and padding); ``pos_idx`` / ``time_idx`` [B, T, T]."""
        b, t, _ = x.shape
        u, v, q, k = F.silu(self.f1(self.norm_in(x))).split(self.d, dim=-1)
        heads = lambda z: z.view(b, t, self.h, self.dh).transpose(1, 2)  # noqa: E731  [B, H, T, Dh]
        y = pointwise_attention(heads(q), heads(k), heads(v), self.bias(pos_idx, time_idx), mask, self.n)
        y = y.transpose(1, 2).reshape(b, t, self.d)
        return x + self.drop(self.f2(self.norm_av(y) * u))


__all__ = ["HSTULayer", "RAB_TIME_BUCKETS", "event_times", "pointwise_attention", "relative_buckets"]
