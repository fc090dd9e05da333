"""Log-probability of whole sessions under the generator, by teacher forcing.

A session is K items × D semantic-ID codes; the generator factorises it code after code
(OneRec's session-wise generation), so log π(y|x) = Σ_k Σ_l log p(c_{k,l} | x, c_{<k,l}). The forward is
the one training uses (:meth:`GenerativeRecommender.forward`: BOS, then the previous codes), read out
with a log-softmax over each position's level codebook. Invariant: equal to summing the per-step
log-softmax of token-by-token KV-cached decoding (the test checks it). This is the *model's*
distribution, not the catalog-renormalised one decoding reports: DPO compares π_θ with π_ref on the
same sequences, and both see the same catalog.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from models.generator.model import HistoryBatch


def token_logprobs(logits: Tensor, session_sids: Tensor) -> Tensor:
    """Per-code log-probabilities: logits [B, K*D, K_max], codes [B, K, D] -> [B, K, D] (float32)."""
    b, k, d = session_sids.shape
    logp = F.log_softmax(logits.float(), dim=-1)                                  # [B, K*D, K_max]
    lp = logp.gather(-1, session_sids.reshape(b, k * d, 1).clamp(min=0))[..., 0]  # [B, K*D]
    return lp.view(b, k, d)


def session_logprob(model, hist: HistoryBatch, session_sids: Tensor, mask: Tensor | None = None,
                    return_logits: bool = False):
    """log π(session | history) for every row: [B] (float32).

    ``model``: a :class:`~models.generator.model.GenerativeRecommender` (or a wrapper whose call is its
    teacher-forced forward, e.g. DDP). ``hist``: B histories; ``session_sids`` [B, K, D] codes (rows of
    ``mask`` False are padding and contribute 0); ``mask`` [B, K] bool (None = every item counts).
    A masked item contributes 0 (its codes are fed as 0; mask only trailing items, as the training
    targets do, or the items after it are scored on a changed prefix). With ``return_logits`` also returns the
    teacher-forced logits [B, K*D, K_max] (for the KL to a reference).
    """
    if session_sids.dim() != 3:
        raise ValueError(f"session_sids must be [B, K, D], got shape {tuple(session_sids.shape)}")
    b, k, _ = session_sids.shape
    if mask is None:
        mask = torch.ones(b, k, dtype=torch.bool, device=session_sids.device)
    if mask.shape != (b, k):
        raise ValueError(f"mask must be [B={b}, K={k}], got {tuple(mask.shape)}")
    sids = torch.where(mask[..., None], session_sids, torch.zeros_like(session_sids))
    out = model(hist, sids)                                                       # logits [B, K*D, K_max]
    lp = token_logprobs(out.logits, sids)                                         # [B, K, D]
    total = (lp.sum(-1) * mask.float()).sum(-1)                                   # [B]
    return (total, out.logits) if return_logits else total


def token_kl(policy_logits: Tensor, ref_logits: Tensor, mask: Tensor, sid_len: int) -> Tensor:
    """Exact KL(π_θ ‖ π_ref) of the next-code distributions, summed over a session's positions: [B].

    ``*_logits`` [B, K*D, K_max] teacher-forced on the same sessions (``-inf`` for codes absent at a
    level: they carry no mass in either); ``mask`` [B, K] items that count. A per-position exact KL
    on the visited prefixes has far less variance than the sampled log-ratio estimate.
    """
    lp = F.log_softmax(policy_logits.float(), dim=-1).clamp(min=-1e4)           # absent codes: p = 0, finite
    lq = F.log_softmax(ref_logits.float(), dim=-1).clamp(min=-1e4)
    kl = (lp.exp() * (lp - lq)).sum(-1)                                           # [B, K*D]
    m = mask.float().repeat_interleave(sid_len, dim=1)                            # [B, K*D]
    return (kl * m).sum(-1)
