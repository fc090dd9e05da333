"""Feed-forward blocks for the generator: dense, and a top-k mixture of experts.

The mixture of experts follows the sparsely-gated MoE of Shazeer et al. (2017,
"Outrageously Large Neural Networks") with the load-balancing auxiliary loss
of Switch Transformers (Fedus et al., 2021): for ``E`` experts,
``aux = E * sum_e f_e * P_e`` where ``f_e`` is the fraction of routing slots
sent to expert ``e`` and ``P_e`` the mean router probability of ``e``. It is 1
for a perfectly balanced router and grows as routing collapses onto few
experts. OneRec (Deng et al., 2025) uses MoE in the decoder to add capacity at
constant per-token compute; here it is optional and off by default.

Both blocks return ``(y, aux)`` so that the decoder can sum the auxiliary
losses of its layers without knowing which kind it has.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
import torch.nn.functional as F


class DenseFeedForward(nn.Module):
    """Position-wise ``Linear -> GELU -> Dropout -> Linear``; aux loss is 0."""

    def __init__(self, d_model: int, d_ff: int, dropout: float) -> None:
        super().__init__()
        self.up = nn.Linear(d_model, d_ff)
        self.down = nn.Linear(d_ff, d_model)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:  # x: [B, T, d]
        return self.down(self.drop(F.gelu(self.up(x)))), x.new_zeros(())


class MoEFeedForward(nn.Module):
    """Top-``k`` routed mixture of ``n_experts`` GELU feed-forward experts.

    Each token goes to its ``top_k`` experts; their outputs are mixed with the
    router probabilities renormalised over the chosen experts. Expert weights
    are stored stacked (``[E, d, d_ff]``) and each expert runs on the tokens
    routed to it (gather / index_add), so compute per token is ``top_k`` experts.
    """

    def __init__(self, d_model: int, d_ff: int, n_experts: int, top_k: int, dropout: float) -> None:
        super().__init__()
        if n_experts < 2:
            raise ValueError(f"n_experts={n_experts}: a mixture needs at least 2 experts")
        if not 1 <= top_k <= n_experts:
            raise ValueError(f"top_k={top_k} must be in 1..n_experts={n_experts}")
        self.n_experts = n_experts
        self.top_k = top_k
        self.router = nn.Linear(d_model, n_experts, bias=False)
        scale_up, scale_down = d_model ** -0.5, d_ff ** -0.5
        self.w_up = nn.Parameter(torch.randn(n_experts, d_model, d_ff) * scale_up)
        self.b_up = nn.Parameter(torch.zeros(n_experts, d_ff))
        self.w_down = nn.Parameter(torch.randn(n_experts, d_ff, d_model) * scale_down)
        self.b_down = nn.Parameter(torch.zeros(n_experts, d_model))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:  # x: [B, T, d]
        shape = x.shape
        flat = x.reshape(-1, shape[-1])                          # [N, d]
        probs = torch.softmax(self.router(flat).float(), dim=-1)  # [N, E]
        top_p, top_e = probs.topk(self.top_k, dim=-1)            # [N, k]
        top_w = (top_p / top_p.sum(dim=-1, keepdim=True)).to(flat.dtype)
        out = torch.zeros_like(flat)
        for e in range(self.n_experts):
            tok, slot = (top_e == e).nonzero(as_tuple=True)
            if tok.numel() == 0:
                continue
            h = F.gelu(flat[tok] @ self.w_up[e] + self.b_up[e])
            y = self.drop(h) @ self.w_down[e] + self.b_down[e]
            out.index_add_(0, tok, y * top_w[tok, slot].unsqueeze(-1))
        # Switch-Transformer balance loss over all k routing slots.
        routed = F.one_hot(top_e, self.n_experts).float().sum(dim=1)   # [N, E]
        frac = routed.mean(dim=0) / self.top_k                          # f_e, sums to 1
        mean_p = probs.mean(dim=0)                                       # P_e
        aux = self.n_experts * (frac * mean_p).sum()
        return out.reshape(shape), aux
