"""SASRec: self-attentive sequential recommendation (Kang & McAuley, ICDM 2018).

A stack of causal self-attention blocks over the user's item-embedding
sequence (+ learned positions); the hidden state at position t scores every
item by a dot product with the (shared) item embedding table, predicting the
item at t + 1. Every position is a training example.

Loss — full softmax cross-entropy over the whole catalog (``loss="ce"``), not
the paper's binary cross-entropy with one sampled negative (``loss="bce"``,
kept as an option). Why: with catalogs of a few thousand items the full
softmax is cheap, and it is consistently and substantially stronger under
full-ranking evaluation (Klenitskiy & Vasilev, "Turning Dross Into Gold Loss:
is BERT4Rec really better than SASRec?", RecSys 2023; Petrov & Macdonald,
gSASRec, RecSys 2023): BCE with one negative is poorly calibrated for the
head of the ranking. So the baseline the generator must match is the strong
one.

Blocks are pre-LayerNorm (more stable than the paper's post-LN for small
data); training uses AdamW, early stopping on validation NDCG@10, and the
best epoch's weights are restored. Pure torch: no I/O (progress goes to a
callback).
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import asdict, dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from models.evaluation.budget import CLOCKS, Budget
from models.evaluation.metrics import ndcg, target_ranks
from models.evaluation.ranker import Histories, as_histories, left_pad, topn_from_scores

VERSION = "sasrec-1"


@dataclass(frozen=True)
class SASRecConfig:
    """Sizes and training schedule of SASRec (defaults tuned for MovieLens-100K on CPU)."""

    max_len: int = 200          # history positions read (the paper uses 200 for MovieLens-1M)
    d_model: int = 64
    heads: int = 2
    layers: int = 2
    dropout: float = 0.2
    loss: str = "ce"            # "ce" (full softmax) or "bce" (paper: one sampled negative per position)
    lr: float = 1e-3
    weight_decay: float = 0.0
    batch_size: int = 128
    epochs: int = 200
    eval_every: int = 5         # epochs between validation passes
    patience: int = 5           # validation passes without improvement before stopping
    random_crop: bool = True    # sequences longer than max_len+1: random window each epoch (else: the last)
    max_seconds: float = 0.0    # training budget (0 = none): validate and stop after the epoch past it
    budget_clock: str = "wall"  # what max_seconds counts: "wall" or "cpu" (this process's CPU time)
    seed: int = 0
    exclude_seen: bool = True

    def __post_init__(self) -> None:
        checks = [
            (self.max_len >= 1, "max_len must be >= 1"),
            (self.d_model >= 1 and self.heads >= 1 and self.d_model % self.heads == 0,
             f"d_model ({self.d_model}) must be a positive multiple of heads ({self.heads})"),
            (self.layers >= 1, "layers must be >= 1"),
            (0.0 <= self.dropout < 1.0, "dropout must be in [0, 1)"),
            (self.loss in ("ce", "bce"), "loss must be 'ce' (full softmax) or 'bce' (sampled negative)"),
            (self.lr > 0, "lr must be > 0"),
            (self.weight_decay >= 0, "weight_decay must be >= 0"),
            (self.batch_size >= 1, "batch_size must be >= 1"),
            (self.epochs >= 1, "epochs must be >= 1"),
            (self.eval_every >= 1, "eval_every must be >= 1"),
            (self.patience >= 1, "patience must be >= 1"),
            (self.max_seconds >= 0, "max_seconds must be >= 0 (0 = no budget)"),
            (self.budget_clock in CLOCKS, f"budget_clock must be one of {CLOCKS}"),
        ]
        for ok, msg in checks:
            if not ok:
                raise ValueError(f"SASRecConfig: {msg} (got {asdict(self)})")


class _Block(nn.Module):
    """Pre-LN causal self-attention + position-wise feed-forward."""

    def __init__(self, d: int, heads: int, dropout: float):
        super().__init__()
        self.heads = heads
        self.ln1 = nn.LayerNorm(d)
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)
        self.ln2 = nn.LayerNorm(d)
        self.ff = nn.Sequential(nn.Linear(d, d), nn.GELU(), nn.Dropout(dropout), nn.Linear(d, d))
        self.drop = nn.Dropout(dropout)
        self.p = dropout

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor) -> torch.Tensor:
        B, T, D = x.shape  # [B, T, D]
        q, k, v = self.qkv(self.ln1(x)).view(B, T, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask,
                                           dropout_p=self.p if self.training else 0.0)  # [B, H, T, Dh]
        x = x + self.drop(self.proj(a.transpose(1, 2).reshape(B, T, D)))
        return x + self.drop(self.ff(self.ln2(x)))


class SASRecNet(nn.Module):
    """The network: item ids [B, T] (0 = padding, item index + 1 otherwise) → hidden [B, T, D]."""

    def __init__(self, n_items: int, cfg: SASRecConfig):
        super().__init__()
        self.cfg = cfg
        self.n_items = n_items
        self.item_emb = nn.Embedding(n_items + 1, cfg.d_model, padding_idx=0)
        self.pos_emb = nn.Embedding(cfg.max_len, cfg.d_model)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(_Block(cfg.d_model, cfg.heads, cfg.dropout) for _ in range(cfg.layers))
        self.ln = nn.LayerNorm(cfg.d_model)
        nn.init.normal_(self.item_emb.weight, std=cfg.d_model ** -0.5)
        with torch.no_grad():
            self.item_emb.weight[0].zero_()
        nn.init.normal_(self.pos_emb.weight, std=0.02)

    def forward(self, seq: torch.Tensor) -> torch.Tensor:
        B, T = seq.shape  # [B, T]
        pad = seq == 0
        x = self.item_emb(seq) * math.sqrt(self.cfg.d_model)
        x = x + self.pos_emb(torch.arange(T, device=seq.device) + (self.cfg.max_len - T))
        x = self.drop(x) * (~pad).unsqueeze(-1)
        causal = torch.ones(T, T, dtype=torch.bool, device=seq.device).tril()
        # a query attends to earlier real keys and always to itself (keeps padded rows finite)
        allowed = causal.unsqueeze(0) & ~pad.unsqueeze(1)  # [B, T, T]
        allowed = allowed | torch.eye(T, dtype=torch.bool, device=seq.device).unsqueeze(0)
        mask = allowed.unsqueeze(1)  # [B, 1, T, T]
        for blk in self.blocks:
            x = blk(x, mask)
        return self.ln(x)  # [B, T, D]

    def item_logits(self, h: torch.Tensor) -> torch.Tensor:
        """Scores of every item (index space, padding excluded): [..., D] → [..., n_items]."""
        return h @ self.item_emb.weight[1:].T


class SASRec:
    """``Ranker`` wrapper: fit on training histories, rank the whole catalog."""

    name = "sasrec"

    def __init__(self, n_items: int, cfg: SASRecConfig = SASRecConfig(), device: str | torch.device = "cpu"):
        if n_items < 1:
            raise ValueError(f"n_items must be >= 1, got {n_items}")
        self.cfg, self.n_items, self.device = cfg, n_items, torch.device(device)
        torch.manual_seed(cfg.seed)
        self.net = SASRecNet(n_items, cfg).to(self.device)
        self.history: list[dict] = []
        self.train_s = 0.0
        self.best_epoch = 0
        self.train_targets = 0   # next-item targets trained on (valid positions), all epochs

    # ---- training ----------------------------------------------------------------------

    def _windows(self, seqs: list[np.ndarray], rng: np.random.Generator) -> list[np.ndarray]:
        L = self.cfg.max_len + 1
        out = []
        for s in seqs:
            if len(s) > L and self.cfg.random_crop:
                end = int(rng.integers(L, len(s) + 1))
                out.append(s[end - L:end])
            else:
                out.append(s[-L:])
        return out

    def fit(self, train: Histories, valid=None,
            on_epoch: Callable[[dict], None] | None = None) -> "SASRec":
        """Train on ``train`` (each user's sequence, oldest first); early-stop on ``valid``.

        ``valid`` is a :class:`models.evaluation.splits.Cases` (histories + targets) or None
        (then all epochs run). ``on_epoch`` receives a dict per epoch (epoch,
        loss, and valid_ndcg10 when evaluated).
        """
        train = as_histories(train)
        cfg = self.cfg
        seqs = [s for s in train.items if len(s) >= 2]
        if not seqs:
            raise ValueError("SASRec.fit needs at least one training sequence with >= 2 items")
        rng = np.random.default_rng(cfg.seed)
        gen = torch.Generator(device="cpu").manual_seed(cfg.seed)
        opt = torch.optim.AdamW(self.net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        best, best_state, bad = -1.0, None, 0
        t0 = time.perf_counter()
        budget = Budget(cfg.max_seconds, cfg.budget_clock)
        for epoch in range(1, cfg.epochs + 1):
            self.net.train()
            windows = self._windows(seqs, rng)
            order = rng.permutation(len(windows))
            total, count = 0.0, 0
            for i in range(0, len(order), cfg.batch_size):
                batch = [windows[j] for j in order[i:i + cfg.batch_size]]
                arr = torch.as_tensor(left_pad(batch, cfg.max_len + 1, pad=0, shift=1), device=self.device)
                inp, tgt = arr[:, :-1], arr[:, 1:]  # [B, T]
                h = self.net(inp)  # [B, T, D]
                valid_pos = (tgt > 0) & (inp > 0)
                hv, tv = h[valid_pos], tgt[valid_pos] - 1  # [M, D], [M]
                if cfg.loss == "ce":
                    loss = F.cross_entropy(self.net.item_logits(hv), tv)
                else:
                    neg = torch.randint(0, self.n_items, tv.shape, generator=gen).to(self.device)
                    pos_s = (hv * self.net.item_emb(tv + 1)).sum(-1)
                    neg_s = (hv * self.net.item_emb(neg + 1)).sum(-1)
                    loss = F.binary_cross_entropy_with_logits(pos_s, torch.ones_like(pos_s)) + \
                        F.binary_cross_entropy_with_logits(neg_s, torch.zeros_like(neg_s))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(self.net.parameters(), 1.0)
                opt.step()
                total += float(loss.detach()) * len(tv)
                count += len(tv)
                self.train_targets += int(len(tv))
            rec = {"epoch": epoch, "loss": total / max(count, 1), "elapsed_s": time.perf_counter() - t0}
            over = budget.exceeded()
            if valid is not None and (epoch % cfg.eval_every == 0 or epoch == cfg.epochs or over):
                score = ndcg(target_ranks(self.rank(valid.histories, 10), valid.targets), 10)
                rec["valid_ndcg10"] = score
                if score > best:
                    best, bad, self.best_epoch = score, 0, epoch
                    best_state = copy.deepcopy(self.net.state_dict())
                else:
                    bad += 1
            self.history.append(rec)
            if on_epoch is not None:
                on_epoch(rec)
            if (valid is not None and bad >= cfg.patience) or over:
                break
        if best_state is not None:
            self.net.load_state_dict(best_state)
        else:
            self.best_epoch = len(self.history)
        self.train_s = time.perf_counter() - t0
        return self

    # ---- inference ---------------------------------------------------------------------

    @torch.no_grad()
    def scores(self, histories: Histories, batch_size: int = 256) -> torch.Tensor:
        """Scores of every item for each user's next event: [B, n_items]."""
        histories = as_histories(histories)
        self.net.eval()
        out = []
        for i in range(0, len(histories), batch_size):
            items = histories.items[i:i + batch_size]
            items = [s[(s >= 0) & (s < self.n_items)] for s in items]  # unknown items are dropped
            arr = torch.as_tensor(left_pad(items, self.cfg.max_len, pad=0, shift=1), device=self.device)
            h = self.net(arr)[:, -1]  # [b, D]; empty history → position-only state (popularity-like)
            out.append(self.net.item_logits(h).float().cpu())
        return torch.cat(out) if out else torch.zeros(0, self.n_items)

    def rank(self, histories: Histories, n: int) -> torch.Tensor:  # [B, n]
        histories = as_histories(histories)
        return topn_from_scores(self.scores(histories), histories, n, self.cfg.exclude_seen)

    # ---- persistence (bytes in, bytes out: the caller does the file I/O) ----------------

    def state(self) -> dict:
        return {"version": VERSION, "n_items": self.n_items, "config": asdict(self.cfg),
                "weights": self.net.state_dict(), "best_epoch": self.best_epoch, "train_s": self.train_s}

    @classmethod
    def from_state(cls, state: dict, device: str | torch.device = "cpu") -> "SASRec":
        if not isinstance(state, dict) or state.get("version") != VERSION:
            got = state.get("version") if isinstance(state, dict) else type(state).__name__
            raise ValueError(f"not a SASRec state of version {VERSION!r} (got {got!r}); retrain the baseline")
        m = cls(int(state["n_items"]), SASRecConfig(**state["config"]), device)
        m.net.load_state_dict(state["weights"])
        m.best_epoch, m.train_s = state.get("best_epoch", 0), state.get("train_s", 0.0)
        return m
