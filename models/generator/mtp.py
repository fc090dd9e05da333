"""Multi-token prediction (MTP) heads on the generator's decoder state.

One decoder forward of the generator yields the hidden state ``h_p`` that
predicts SID code ``c_p``. MTP heads predict the *following* codes
``c_{p+1}, c_{p+2}, …`` from ``h_p`` without another pass of the full model:
the rest of the current item's SID and the first codes of the next item.
They serve two decoding modes (:mod:`models.decoding.generate`):

* **MTP parallel** — commit the heads' tokens unverified: several SID tokens
  per target forward, lossy.
* **Draft proposer** for speculative decoding (:mod:`models.decoding.speculative`):
  the heads draft, the full model verifies, and the output is exactly the
  full model's.

Architecture: a light *sequential* head chain, as in DeepSeek-V3's MTP
modules (DeepSeek-AI, 2024) and EAGLE's feature-level drafting (Li et al.,
2024), rather than Medusa's independent heads (Cai et al., 2024): step ``j``
combines the previous state with the embedding of the code just drafted,
``s_j = F(s_{j-1}, e(c_{p+j-1}))`` with ``s_0 = h_p``, and reads out the code
at ``p+j``. Conditioning on the drafted code matters for SIDs because a
level's code set depends on the prefix. Each step is one small MLP — far
cheaper than a full decoder pass (one linear in, one residual MLP, one linear
out: the draft's per-step cost is what bounds the speed-up on CPU).

Training (:func:`fit_mtp`) is a second stage with the generator frozen, so
attaching heads never changes the generator's own outputs. The loss distils
the generator's *own* next-code distribution at each future position
(soft-target cross-entropy, teacher-forced along the given sessions), which
is what a verifier accepts; :func:`mtp_loss` can also be added to the
generator's loss for joint training.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn
import torch.nn.functional as F

from models.sid.levels import CodeTableModule, SidShape


@dataclass(frozen=True)
class MTPConfig(SidShape):
    """Sizes of the MTP head chain.

    ``level_sizes`` — codes per SID level (dedup level included), as the generator's.
    ``d_model`` — the generator's hidden width (the chain's input state).
    ``horizon`` — how many future codes the chain is trained to predict.
    ``ff_mult`` — width multiplier of each step's MLP.
    ``train_*`` — the second training stage on a frozen generator (:func:`fit_mtp`).
    """

    level_sizes: tuple[int, ...]
    d_model: int
    horizon: int = 4
    ff_mult: int = 2
    train_epochs: int = 3
    train_batch_size: int = 64
    train_lr: float = 2e-3
    train_seed: int = 0

    def __post_init__(self) -> None:
        ls = tuple(int(x) for x in self.level_sizes)
        object.__setattr__(self, "level_sizes", ls)
        if not ls or any(k < 1 for k in ls):
            raise ValueError(f"MTPConfig.level_sizes={self.level_sizes!r}: use the generator's level_sizes")
        for name in ("d_model", "horizon", "ff_mult", "train_epochs", "train_batch_size"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"MTPConfig.{name}={v!r} must be a positive int (e.g. horizon=4)")
        if not self.train_lr > 0:
            raise ValueError(f"MTPConfig.train_lr={self.train_lr} must be > 0 (e.g. 2e-3)")


class MTPHeads(CodeTableModule):
    """Sequential multi-token prediction chain (see module docstring)."""

    def __init__(self, cfg: MTPConfig) -> None:
        super().__init__(cfg.level_sizes)
        self.cfg = cfg
        d, D, K = cfg.d_model, cfg.sid_len, cfg.k_max
        self.code_emb = nn.Embedding(sum(cfg.level_sizes), d)
        self.level_emb = nn.Embedding(D, d)          # level of the code being predicted
        self.inp = nn.Linear(2 * d, d)
        self.ff_norm = nn.LayerNorm(d)
        self.ff = nn.Sequential(nn.Linear(d, cfg.ff_mult * d), nn.GELU(), nn.Linear(cfg.ff_mult * d, d))
        self.out = nn.Linear(d, K)
        self.out_bias = nn.Parameter(torch.zeros(D, K))
        nn.init.normal_(self.code_emb.weight, std=0.02)
        nn.init.normal_(self.level_emb.weight, std=0.02)

    def init_from_generator(self, model) -> "MTPHeads":
        """Copy the generator's code embeddings (same table layout) — a warm start for training."""
        src = getattr(model, "code_emb", None)
        if src is not None and src.weight.shape == self.code_emb.weight.shape:
            with torch.no_grad():
                self.code_emb.weight.copy_(src.weight)
        return self

    def step(self, state: Tensor, code: Tensor, code_level: Tensor | int) -> tuple[Tensor, Tensor]:
        """One chain step.

        ``state`` [..., d]: the generator's hidden state that predicted ``code`` (or the previous chain
        state); ``code`` [...]: that code; ``code_level``: its SID level (int or tensor broadcastable
        to ``code``). Returns the next state [..., d] and logits [..., K_max] for the code after it
        (``-inf`` for codes absent at that level).
        """
        D = self.cfg.sid_len
        lvl = torch.as_tensor(code_level, device=code.device).long().expand_as(code)
        nxt = (lvl + 1) % D
        codes = torch.minimum(code.clamp(min=0), self.level_sizes_t[lvl] - 1)
        e = self.code_emb(codes + self.level_offsets[lvl])                           # [..., d]
        x = self.inp(torch.cat([state, e], dim=-1)) + self.level_emb(nxt)
        x = x + self.ff(self.ff_norm(x))
        logits = self.out(x) + self.out_bias[nxt]                                   # [..., K]
        return x, logits.masked_fill(~self.code_valid[nxt], float("-inf"))

    def chain(self, hidden: Tensor, tokens: Tensor, start: int) -> list[Tensor]:
        """Teacher-forced chain over all positions at once.

        ``hidden`` [B, T, d]: generator states at positions ``start..start+T-1``; ``tokens`` [B, T]: the
        code each position predicted (the session's codes there). Returns ``horizon`` tensors; entry
        ``j-1`` is [B, T-j, K]: logits for the code at position ``p+j`` from the state at ``p``.
        """
        D, T = self.cfg.sid_len, tokens.shape[1]
        level = (torch.arange(start, start + T, device=tokens.device) % D)[None, :]   # [1, T]
        out, state = [], hidden
        for j in range(1, self.cfg.horizon + 1):
            if T - j <= 0:
                break
            state, logits = self.step(state[:, : T - j], tokens[:, j - 1: T - 1],
                                      level[:, j - 1: T - 1].expand(tokens.shape[0], -1))
            out.append(logits)
        return out


def mtp_loss(heads: MTPHeads, hidden: Tensor, teacher_logits: Tensor, tokens: Tensor, start: int = 0) -> Tensor:
    """Soft-target cross-entropy of every chain step against the generator's distribution.

    ``hidden`` [B, T, d], ``teacher_logits`` [B, T, K] (the generator's logits at the same positions,
    ``-inf`` for invalid codes), ``tokens`` [B, T] the session codes. Mean over steps and positions.
    """
    losses = []
    for j, logits in enumerate(heads.chain(hidden, tokens, start), start=1):
        target = F.softmax(teacher_logits[:, j:].float(), dim=-1)                     # [B, T-j, K]
        logq = F.log_softmax(logits.float(), dim=-1)
        logq = logq.masked_fill((target == 0) | ~torch.isfinite(logq), 0.0)        # codes absent at the level
        losses.append(-(target * logq).sum(-1).mean())
    if not losses:
        raise ValueError("sessions too short for MTP: need at least 2 decoder positions")
    return torch.stack(losses).mean()


def fit_mtp(model, heads: MTPHeads, hist, sessions: Tensor, log=None) -> list[float]:
    """Train ``heads`` on a frozen generator ``model`` (second stage; the generator is not touched).

    ``hist``: the generator's ``HistoryBatch`` for N requests; ``sessions`` [N, K, D]: the sessions to
    teacher-force (ground truth, or — for the highest draft acceptance — the generator's own greedy
    sessions). Settings: ``heads.cfg.train_*``. Returns the mean loss per epoch. ``log(epoch, loss)`` is called if given.
    """
    n, k, D = sessions.shape
    if D != heads.cfg.sid_len:
        raise ValueError(f"sessions have D={D} codes per item but the heads expect {heads.cfg.sid_len}")
    cfg = heads.cfg
    gen = torch.Generator().manual_seed(cfg.train_seed)
    was_training = model.training
    model.eval()
    flags = [p.requires_grad for p in model.parameters()]
    for p in model.parameters():
        p.requires_grad_(False)
    opt = torch.optim.Adam(heads.parameters(), lr=cfg.train_lr)
    flat = sessions.reshape(n, k * D)
    bos = flat.new_zeros(n, 1)
    inputs = torch.cat([bos, flat[:, :-1]], 1)                                        # [N, K*D]
    history: list[float] = []
    try:
        heads.train()
        for epoch in range(cfg.train_epochs):
            order = torch.randperm(n, generator=gen)
            total, count = 0.0, 0
            for i in range(0, n, cfg.train_batch_size):
                idx = order[i: i + cfg.train_batch_size].to(sessions.device)
                sub = type(hist)(*(t.index_select(0, idx) for t in hist))
                with torch.no_grad():
                    out = model.decode(inputs.index_select(0, idx), model.encode(sub))
                loss = mtp_loss(heads, out.hidden, out.logits, flat.index_select(0, idx))
                opt.zero_grad()
                loss.backward()
                opt.step()
                total += float(loss.detach()) * len(idx)
                count += len(idx)
            history.append(total / max(count, 1))
            if log is not None:
                log(epoch, history[-1])
    finally:
        for p, f in zip(model.parameters(), flags):
            p.requires_grad_(f)
        model.train(was_training)
        heads.eval()
    return history
