"""Preference losses on whole sessions: DPO, the bounded feedback loss, and the KL estimate.

* :func:`dpo_loss` — Rafailov et al. (2023), "Direct Preference Optimization":
  L = −log σ(β[(log π_θ(y_w|x) − log π_ref(y_w|x)) − (log π_θ(y_l|x) − log π_ref(y_l|x))]),
  the implicit reward of a session being β·(log π_θ − log π_ref). OneRec (Deng et al. 2025) applies it
  to the best / worst of N beam-searched sessions with the previous model as π_ref.
* :func:`gbpo_loss` — OneRec-V2 (arXiv 2508.20900) on real feedback: advantage A ∈ {−1, +1} per served
  session and a per-code ratio π_θ / π'_old with π'_old = max(π_old, sg(π_θ)) for A ≥ 0 and
  max(π_old, 1 − sg(π_θ)) for A < 0, so negative gradients are bounded like BCE's.
* :func:`sampled_kl` — the log-ratio estimate of KL(π_θ ‖ π_ref) on sessions drawn from π_θ.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor


class DPOOutput(NamedTuple):
    loss: Tensor            # [] mean DPO loss
    reward_margin: Tensor   # [] mean of β(Δ_chosen − Δ_rejected) (detached)
    chosen_reward: Tensor   # [] mean β(log π_θ − log π_ref) of the chosen sessions (detached)
    rejected_reward: Tensor  # [] same for the rejected sessions (detached)
    accuracy: Tensor        # [] share of pairs whose chosen reward beats the rejected one (detached)


def dpo_loss(policy_chosen: Tensor, policy_rejected: Tensor, ref_chosen: Tensor, ref_rejected: Tensor,
             beta: float) -> DPOOutput:
    """DPO on P pairs: each input [P] is a session log-probability (``ref_*`` are not differentiated)."""
    if not beta > 0:
        raise ValueError(f"beta={beta} must be > 0")
    shapes = {t.shape for t in (policy_chosen, policy_rejected, ref_chosen, ref_rejected)}
    if len(shapes) != 1 or policy_chosen.dim() != 1:
        raise ValueError(f"all four log-probabilities must be [P] of one length, got {sorted(map(tuple, shapes))}")
    chosen = beta * (policy_chosen - ref_chosen.detach())                         # [P]
    rejected = beta * (policy_rejected - ref_rejected.detach())                   # [P]
    logits = chosen - rejected
    loss = -F.logsigmoid(logits).mean()
    return DPOOutput(loss, logits.detach().mean(), chosen.detach().mean(), rejected.detach().mean(),
                     (logits.detach() > 0).float().mean())


def gbpo_loss(policy_token_logp: Tensor, old_token_logp: Tensor, advantage: Tensor, mask: Tensor) -> Tensor:
    """OneRec-V2's bounded policy loss on served sessions: −mean over codes of A · π_θ / π'_old.

    ``policy_token_logp`` / ``old_token_logp`` [B, T]: per-code log-probabilities under the trained
    policy and the policy that served (here the parent); ``advantage`` [B] in {−1, 0, +1} (0 = dropped);
    ``mask`` [B, T] codes that count. For A = +1 on-policy this is the gradient of log π_θ; for A = −1 the
    gradient is that of log(1 − π_θ), which stays bounded as π_θ → 0 (no exploding negative gradient).
    """
    if policy_token_logp.shape != old_token_logp.shape or mask.shape != policy_token_logp.shape:
        raise ValueError("policy_token_logp, old_token_logp and mask must all be [B, T]")
    p = policy_token_logp.exp()
    p_old = old_token_logp.detach().exp()
    sg = p.detach()
    a = advantage.float()[:, None]                                                # [B, 1]
    denom = torch.where(a >= 0, torch.maximum(p_old, sg), torch.maximum(p_old, 1.0 - sg)).clamp(min=1e-6)
    m = mask.float() * (a != 0).float()
    return -(a * p / denom * m).sum() / m.sum().clamp(min=1.0)


def sampled_kl(policy_logp: Tensor, ref_logp: Tensor) -> Tensor:
    """E[log π_θ(y) − log π_ref(y)] over sessions y drawn from π_θ: [P] inputs -> [] estimate."""
    return (policy_logp - ref_logp).mean()
