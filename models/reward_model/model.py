"""The session reward model R(user, session): OneRec's design (Deng et al., 2025, arXiv 2502.18965 §2.4).

* **Items** — an item's vector is its item-id embedding plus the sum of its
  semantic-ID code embeddings (one table per level). Items the id table does not
  know (new since training, or :data:`~models.reward_model.data.UNKNOWN_ITEM`)
  get the shared "unknown id" row, so a new item is still represented by its
  SID; training drops ids at random (``id_dropout``) so that path is learnt.
* **User** — a small encoder of its own over the history (item vector +
  event-type + time-gap bucket + position, a prepended user token that is always
  attendable, ``history_layers`` bidirectional self-attention blocks); the user
  token's output is the user vector ``u``. Not the generator's encoder: the reward
  model must score the generator's sessions independently of the generator's
  weights (the aligner trains those, and a shared encoder would move the judge
  with the judged), and it must load without a generator checkpoint.
* **Session** — per slot ``k``: the item vector ``v_k``, a target attention of
  ``v_k`` over the encoded history ``a_k`` (DIN-style), and OneRec's user-aware
  ``v_k ⊙ u``, mixed by an MLP; plus similarity features of the slot's item to
  the history — the max and mean cosine of ``v_k`` to the history's item
  vectors, and the share of history events sharing its first ``l`` SID codes
  (``l = 1 .. D``) or its id — projected to ``d`` (a direct path for "more of
  what this user engaged with", which session-level labels alone teach slowly)
  and a slot-position embedding (examination depends on the position); then
  ``session_layers`` self-attention blocks across the session's real slots.
* **Heads** — per slot, one logit per objective (click, like, watch, skip). A
  session's rate for click / like / skip is the mean of its real slots'
  probabilities, its watch fraction the click-weighted mean of the slots' watch
  fractions (the click weights are constants to the watch loss). OneRec sums the slot vectors before its towers; averaging per-slot
  probabilities keeps every head a per-impression rate in [0, 1] whatever the
  session length, which is what the targets are (:mod:`models.reward_model.data`).
* **Value** — ``Σ_h weight_h · term_h`` with ``term`` the click, like and skip
  rates and, for watch, the expected **minutes watched** per served item: the
  mean over slots of click probability × watch fraction × the item's length in
  minutes (:meth:`RewardModel.set_item_lengths`; the product's reward counts
  watch minutes, not fractions, so a long item a user finishes is worth more
  than a short one — the heads learn fractions, which transfer across items,
  and the length is a known item attribute). An item of unknown length counts
  the mean known length; with no lengths at all every item counts 1 minute, so
  the term is click rate × watch fraction.

Invariant: padding never changes a real output — history positions count real
events only and padded keys are masked; empty session slots (``-1``) are masked
out of attention and pooling, and slot positions are the served positions.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ingest.contract import ENGAGED_TYPES, EVENT_TYPES  # constants only
from models.config_fields import config_from_dict
from models.reward_model.data import EMPTY, HEADS
from models.reward_model.features import RewardHistory
from models.sid.levels import code_table_layout

#: Event-type codes: 0 = padding, EVENT_TYPES index + 1 otherwise.
N_EVENT_CODES = len(EVENT_TYPES) + 1

#: Default value weights: click, like and skip as in the reward joiner's defaults
#: (actors.reward_spec.DEFAULT_WEIGHTS), watch 1 per watched item.
DEFAULT_VALUE_WEIGHTS = {"click": 1.0, "like": 2.0, "watch": 1.0, "skip": -0.5}


@dataclass(frozen=True)
class RewardModelConfig:
    """Sizes of the reward model and the weights that turn its heads into one session value.

    ``n_items`` — rows of the item-id table (catalog indices ``0 .. n_items-1``; others are "unknown").
    ``level_sizes`` — codes per SID level (the de-duplication level included), ``()`` for no SID tokens.
    ``value_weights`` — weight per head name in ``HEADS`` (missing heads weigh 0).
    """

    n_items: int
    level_sizes: tuple[int, ...] = ()
    d_model: int = 32
    heads: int = 2
    history_layers: int = 1
    session_layers: int = 1
    ff_mult: int = 2
    dropout: float = 0.1
    id_dropout: float = 0.1
    max_history: int = 50
    max_session: int = 16
    n_time_buckets: int = 16
    value_weights: dict = field(default_factory=lambda: dict(DEFAULT_VALUE_WEIGHTS), hash=False)

    def __post_init__(self) -> None:
        ls = tuple(int(x) for x in self.level_sizes)
        object.__setattr__(self, "level_sizes", ls)
        if any(k < 1 for k in ls):
            raise ValueError(f"RewardModelConfig.level_sizes={self.level_sizes!r} must be positive code counts "
                             "per SID level (take them from the tokenizer / catalog), or () for no SIDs")
        for name in ("n_items", "d_model", "heads", "history_layers", "session_layers", "ff_mult",
                     "max_history", "max_session", "n_time_buckets"):
            v = getattr(self, name)
            if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 1:
                raise ValueError(f"RewardModelConfig.{name}={v!r} must be a positive int")
        if self.d_model % self.heads:
            raise ValueError(f"RewardModelConfig.d_model={self.d_model} must be divisible by heads={self.heads}; "
                             f"try d_model={self.heads * max(1, self.d_model // self.heads)}")
        if self.n_time_buckets < 2:
            raise ValueError(f"RewardModelConfig.n_time_buckets={self.n_time_buckets} must be >= 2 "
                             "(0 = padding, 1 = first event)")
        for name in ("dropout", "id_dropout"):
            v = getattr(self, name)
            if not 0.0 <= v < 1.0:
                raise ValueError(f"RewardModelConfig.{name}={v} must be in [0, 1), e.g. 0.1")
        if not isinstance(self.value_weights, dict):
            raise ValueError(f"RewardModelConfig.value_weights must be a mapping head -> weight, "
                             f"got {self.value_weights!r}")
        unknown = set(self.value_weights) - set(HEADS)
        if unknown:
            raise ValueError(f"RewardModelConfig.value_weights has unknown head(s) {sorted(unknown)}; "
                             f"use some of {list(HEADS)}")
        for k, v in self.value_weights.items():
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not np.isfinite(v):
                raise ValueError(f"RewardModelConfig.value_weights[{k!r}]={v!r} must be a finite number")

    def weight_vector(self) -> list[float]:
        """The value weights in ``HEADS`` order."""
        return [float(self.value_weights.get(h, 0.0)) for h in HEADS]

    def to_dict(self) -> dict:
        d = asdict(self)
        d["level_sizes"] = list(self.level_sizes)
        d["value_weights"] = {k: float(v) for k, v in self.value_weights.items()}
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "RewardModelConfig":
        d = dict(d)
        if "level_sizes" in d:
            d["level_sizes"] = tuple(d["level_sizes"])
        return config_from_dict(cls, d, "RewardModelConfig field(s)")


class HistoryMemory(NamedTuple):
    """The encoded history of a batch of users."""

    states: Tensor  # [B, 1 + S, d]: user token, then one state per event
    mask: Tensor    # [B, 1 + S] bool: attendable (the user token always is)
    user: Tensor    # [B, d]: the user vector (the user token's state)
    items: Tensor   # [B, S, d]: L2-normalised item vectors of the history (0 for padding)
    item_mask: Tensor  # [B, S] bool: real history events
    item_idx: Tensor   # [B, S] long: the history's catalog indices (-1 = padding)
    item_group: Tensor  # [B, S] long: 1 = an engagement, 2 = a skip / dislike, 0 = other or padding

    def index_select(self, idx: Tensor) -> "HistoryMemory":
        return HistoryMemory(*(t.index_select(0, idx) for t in self))


class RewardOutput(NamedTuple):
    rates: Tensor   # [B, 4] per-session predictions in HEADS order (click, like, watch fraction, skip)
    value: Tensor   # [B] the configured combination
    slot_probs: Tensor  # [B, K, 4] per-slot probabilities (padding slots are meaningless)


class _Block(nn.Module):
    """Pre-norm self-attention + feed-forward block; ``mask`` [B, 1, T, T] bool (True = may attend)."""

    def __init__(self, d: int, heads: int, ff_mult: int, dropout: float) -> None:
        super().__init__()
        self.h, self.dh = heads, d // heads
        self.n1, self.n2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv = nn.Linear(d, 3 * d)
        self.o = nn.Linear(d, d)
        self.ff = nn.Sequential(nn.Linear(d, d * ff_mult), nn.GELU(), nn.Linear(d * ff_mult, d))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:  # x [B, T, d]
        b, t, d = x.shape
        q, k, v = self.qkv(self.n1(x)).view(b, t, 3, self.h, self.dh).permute(2, 0, 3, 1, 4)  # 3 x [B, H, T, dh]
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)                         # [B, H, T, dh]
        x = x + self.drop(self.o(y.transpose(1, 2).reshape(b, t, d)))
        return x + self.drop(self.ff(self.n2(x)))


class RewardModel(nn.Module):
    """The session reward model (see module docstring). ``item_sids`` [N, D]: the catalog's SIDs."""

    def __init__(self, cfg: RewardModelConfig, item_sids: np.ndarray | Tensor | None = None,
                 item_minutes: np.ndarray | Tensor | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        d, D = cfg.d_model, len(cfg.level_sizes)
        self.id_emb = nn.Embedding(cfg.n_items + 1, d)  # row 0: unknown / new item
        if D:
            offsets, sizes, _ = code_table_layout(cfg.level_sizes)
            self.register_buffer("level_offsets", offsets, persistent=False)
            self.register_buffer("level_sizes_t", sizes, persistent=False)
            self.code_emb = nn.Embedding(sum(cfg.level_sizes), d)
        else:
            self.code_emb = None
        self.register_buffer("item_sids", torch.zeros((0, D), dtype=torch.long))  # [N, D], saved with the model
        self.register_buffer("item_minutes", torch.zeros(0))   # [N] item lengths (minutes), saved with the model
        self.type_emb = nn.Embedding(N_EVENT_CODES, d, padding_idx=0)
        self.time_emb = nn.Embedding(cfg.n_time_buckets, d, padding_idx=0)
        self.hist_pos = nn.Embedding(cfg.max_history, d)
        self.user_token = nn.Parameter(torch.zeros(1, 1, d))
        self.history = nn.ModuleList(_Block(d, cfg.heads, cfg.ff_mult, cfg.dropout) for _ in range(cfg.history_layers))
        self.hist_norm = nn.LayerNorm(d)
        self.ta_q, self.ta_kv, self.ta_o = nn.Linear(d, d), nn.Linear(d, 2 * d), nn.Linear(d, d)
        self.sim_proj = nn.Linear(2 + 2 * (D + 1), d)   # cosine max / mean, prefix-match shares (_match_shares)
        groups = torch.zeros(N_EVENT_CODES, dtype=torch.long)
        for i, t in enumerate(EVENT_TYPES):
            groups[i + 1] = 1 if t in ENGAGED_TYPES else 2 if t in ("skip", "dislike") else 0
        self.register_buffer("type_group", groups, persistent=False)                       # [N_EVENT_CODES]
        self.combine = nn.Sequential(nn.Linear(3 * d, d), nn.GELU(), nn.Linear(d, d))
        self.slot_pos = nn.Embedding(cfg.max_session, d)
        self.session = nn.ModuleList(_Block(d, cfg.heads, cfg.ff_mult, cfg.dropout) for _ in range(cfg.session_layers))
        self.sess_norm = nn.LayerNorm(d)
        self.out = nn.Linear(d, len(HEADS))
        self.drop = nn.Dropout(cfg.dropout)
        self.register_buffer("value_w", torch.tensor(cfg.weight_vector()), persistent=False)  # [4]
        for emb in (self.id_emb, self.type_emb, self.time_emb, self.hist_pos, self.slot_pos):
            nn.init.normal_(emb.weight, std=0.02)
        if self.code_emb is not None:
            nn.init.normal_(self.code_emb.weight, std=0.02)
        nn.init.normal_(self.user_token, std=0.02)
        with torch.no_grad():
            self.type_emb.weight[0].zero_()
            self.time_emb.weight[0].zero_()
        if item_sids is not None:
            self.set_item_sids(item_sids)
        if item_minutes is not None:
            self.item_minutes = torch.as_tensor(np.asarray(item_minutes, dtype=np.float32)
                                                if not isinstance(item_minutes, Tensor) else item_minutes,
                                                dtype=torch.float32).reshape(-1)

    # ---- items ------------------------------------------------------------------------

    def set_item_sids(self, item_sids: np.ndarray | Tensor) -> None:
        """Replace the SID table ``[N, D]`` (e.g. the catalog grew: new items get their SIDs' vectors)."""
        sids = torch.as_tensor(np.asarray(item_sids) if not isinstance(item_sids, Tensor) else item_sids,
                               dtype=torch.long)
        D = len(self.cfg.level_sizes)
        if sids.dim() != 2 or sids.shape[1] != D:
            raise ValueError(f"item_sids must be [N, D={D}] (the catalog's SIDs, D = len(level_sizes)); "
                             f"got shape {tuple(sids.shape)}")
        self.item_sids = sids.to(self.id_emb.weight.device)

    def set_item_lengths(self, length_ms: np.ndarray | Tensor) -> None:
        """Item lengths ``[N]`` in ms by catalog index (``<= 0`` or NaN = unknown: the mean known length), for
        the value's watch-minutes term; all unknown = 1 minute each (the value's watch term is then click
        rate × watch fraction)."""
        ms = np.asarray(length_ms.detach().cpu() if isinstance(length_ms, Tensor) else length_ms,
                        dtype=np.float64).reshape(-1)
        known = np.isfinite(ms) & (ms > 0)
        fill = float(ms[known].mean()) if known.any() else 60_000.0
        self.item_minutes = torch.as_tensor(np.where(known, ms, fill) / 60_000.0, dtype=torch.float32,
                                            device=self.id_emb.weight.device)

    def minutes(self, idx: Tensor) -> Tensor:
        """Lengths in minutes ``[...]`` of catalog indices (unknown index: the mean length; no table: 1)."""
        n = self.item_minutes.shape[0]
        if not n:
            return torch.ones(idx.shape, device=idx.device)
        has = (idx >= 0) & (idx < n)
        m = self.item_minutes[torch.where(has, idx, torch.zeros_like(idx))]
        return torch.where(has, m, self.item_minutes.mean())

    def item_vectors(self, idx: Tensor, drop_ids: bool = False) -> Tensor:
        """Item vectors ``[..., d]`` of catalog indices ``idx`` (negative / unknown: the "unknown id" row)."""
        n = self.cfg.n_items
        known = (idx >= 0) & (idx < n)
        if drop_ids and self.cfg.id_dropout > 0:
            known = known & (torch.rand(idx.shape, device=idx.device) >= self.cfg.id_dropout)
        v = self.id_emb(torch.where(known, idx + 1, torch.zeros_like(idx)))
        n_sid = self.item_sids.shape[0]
        if self.code_emb is not None and n_sid:
            has = (idx >= 0) & (idx < n_sid)
            codes = self.item_sids[torch.where(has, idx, torch.zeros_like(idx))]          # [..., D]
            ok = has[..., None] & (codes >= 0)
            codes = torch.minimum(codes.clamp(min=0), self.level_sizes_t - 1) + self.level_offsets
            v = v + (self.code_emb(codes) * ok[..., None]).sum(-2)
        return v

    # ---- user -------------------------------------------------------------------------

    def encode_history(self, hist: RewardHistory) -> HistoryMemory:
        """Encode histories ``[B, S]`` (S <= max_history; the most recent are kept)."""
        items, etype, tbucket, mask = hist
        H = self.cfg.max_history
        if items.shape[1] > H:
            items, etype, tbucket, mask = items[:, -H:], etype[:, -H:], tbucket[:, -H:], mask[:, -H:]
        mask = mask.bool()
        pos = (mask.long().cumsum(1) - 1).clamp(0, H - 1)                                 # [B, S] real-event positions
        x = (self.item_vectors(items, self.training) + self.type_emb(etype.clamp(0, N_EVENT_CODES - 1))
             + self.time_emb(tbucket.clamp(0, self.cfg.n_time_buckets - 1)) + self.hist_pos(pos))
        iv = F.normalize(self.item_vectors(items), dim=-1) * mask[..., None]              # [B, S, d] for similarity
        x = x * mask[..., None]                                                           # [B, S, d]
        b = x.shape[0]
        x = self.drop(torch.cat([self.user_token.expand(b, -1, -1), x], dim=1))           # [B, 1+S, d]
        full = torch.cat([mask.new_ones(b, 1), mask], dim=1)                              # [B, 1+S]
        attn = full[:, None, None, :]                                                     # [B, 1, 1, 1+S]
        for blk in self.history:
            x = blk(x, attn)
        x = self.hist_norm(x)
        group = torch.where(mask, self.type_group[etype.clamp(0, N_EVENT_CODES - 1)], torch.zeros_like(etype))
        return HistoryMemory(x, full, x[:, 0], iv, mask, torch.where(mask, items, torch.full_like(items, -1)), group)

    # ---- session ----------------------------------------------------------------------

    def score(self, memory: HistoryMemory, sessions: Tensor) -> RewardOutput:
        """Session predictions for ``sessions`` ``[B, K]`` (catalog indices, -1 = empty) of ``memory``'s users."""
        b, k = sessions.shape
        if k > self.cfg.max_session:
            raise ValueError(f"sessions have {k} slots, the model takes at most max_session="
                             f"{self.cfg.max_session}; raise RewardModelConfig.max_session and retrain")
        d, h = self.cfg.d_model, self.cfg.heads
        dh = d // h
        real = sessions != EMPTY                                                          # [B, K]
        v = self.item_vectors(sessions, self.training)                                    # [B, K, d]
        # target attention: each slot's item attends over the user's encoded history
        q = self.ta_q(v).view(b, k, h, dh).transpose(1, 2)                               # [B, H, K, dh]
        kk, vv = self.ta_kv(memory.states).view(b, -1, 2, h, dh).permute(2, 0, 3, 1, 4)  # 2 x [B, H, 1+S, dh]
        a = F.scaled_dot_product_attention(q, kk, vv, attn_mask=memory.mask[:, None, None, :])
        a = self.ta_o(a.transpose(1, 2).reshape(b, k, d))                                # [B, K, d]
        u = memory.user[:, None, :].expand(-1, k, -1)                                     # [B, K, d]
        # similarity of each slot's item to the history's items: max and mean cosine (0 without history)
        sim = torch.einsum("bkd,bsd->bks", F.normalize(v, dim=-1), memory.items)          # [B, K, S]
        hm = memory.item_mask[:, None, :]                                                 # [B, 1, S]
        n_h = hm.sum(-1).clamp(min=1)                                                     # [B, 1]
        smax = sim.masked_fill(~hm, -1.0).amax(-1) * hm.any(-1)                            # [B, K]
        smean = (sim * hm).sum(-1) / n_h                                                  # [B, K]
        feats = torch.cat([torch.stack([smax, smean], -1), self._match_shares(sessions, memory)], -1)
        pos = torch.arange(k, device=sessions.device)
        x = (self.combine(torch.cat([v, a, v * u], dim=-1)) + self.sim_proj(feats)
             + self.slot_pos(pos)[None])                                                  # [B, K, d]
        x = self.drop(x)
        eye = torch.eye(k, dtype=torch.bool, device=sessions.device)
        attn = (real[:, None, :] | eye[None])[:, None]                                    # [B, 1, K, K]
        for blk in self.session:
            x = blk(x, attn)
        p = torch.sigmoid(self.out(self.sess_norm(x)))                                    # [B, K, 4]
        w = real.to(p.dtype)[..., None]                                                   # [B, K, 1]
        n = w.sum(1).clamp(min=1.0)                                                       # [B, 1]
        mean = (p * w).sum(1) / n                                                         # [B, 4]
        pc = p[..., 0] * real                                                             # [B, K]
        wc = pc.detach()   # the watch loss must not move the click head through its weights
        watch = (wc * p[..., 2]).sum(1) / wc.sum(1).clamp(min=1e-6)                       # [B]
        rates = torch.stack([mean[:, 0], mean[:, 1], watch, mean[:, 3]], dim=1)          # [B, 4]
        minutes = (pc * p[..., 2] * self.minutes(sessions)).sum(1) / n[:, 0]             # [B] per served item
        terms = torch.stack([mean[:, 0], mean[:, 1], minutes, mean[:, 3]], dim=1)        # [B, 4]
        value = (terms * self.value_w).sum(1)                                             # [B]
        return RewardOutput(rates, value, p)

    def _codes(self, idx: Tensor) -> tuple[Tensor, Tensor]:
        """SID codes ``[..., D]`` of catalog indices and whether each index has them ``[...]``."""
        n_sid, D = self.item_sids.shape
        has = (idx >= 0) & (idx < n_sid)
        if not n_sid:
            return idx.new_zeros((*idx.shape, D)), has
        return self.item_sids[torch.where(has, idx, torch.zeros_like(idx))], has

    def _match_shares(self, sessions: Tensor, memory: HistoryMemory) -> Tensor:
        """Per slot, the share of the history's events whose item shares the slot item's first ``l`` SID codes
        (``l = 1 .. D``) and the share that is the same item, counted over engagements and over skips /
        dislikes apart: ``[B, K, 2 (D + 1)]``. Semantic IDs are coarse to fine, so a shared prefix is shared
        content — a parameter-free "more (or less) of what this user engaged with (or skipped)" signal."""
        hist = memory.item_idx                                                            # [B, S]
        n_h = memory.item_mask.sum(-1).clamp(min=1)[:, None, None].to(torch.float32)      # [B, 1, 1]
        same = (sessions[:, :, None] == hist[:, None, :]) & (hist >= 0)[:, None, :]      # [B, K, S]
        out = [same]
        D = self.item_sids.shape[1]
        if D and self.item_sids.shape[0]:
            cs, hs = self._codes(sessions)                                                # [B, K, D], [B, K]
            ch, hh = self._codes(hist)                                                    # [B, S, D], [B, S]
            eq = (cs[:, :, None, :] == ch[:, None, :, :]) & (hs[:, :, None] & hh[:, None, :])[..., None]
            prefix = torch.cumprod(eq.to(torch.uint8), dim=-1).bool()                     # [B, K, S, D]
            out = [prefix[..., l] for l in range(D)] + out
        else:
            out = [torch.zeros_like(same) for _ in range(D)] + out
        m = torch.stack(out, -1).to(torch.float32)                                        # [B, K, S, D + 1]
        g = memory.item_group[:, None, :, None]                                           # [B, 1, S, 1]
        pos, neg = (m * (g == 1)).sum(2), (m * (g == 2)).sum(2)                           # [B, K, D + 1] each
        return torch.cat([pos, neg], -1) / n_h                                            # [B, K, 2 (D + 1)]

    def forward(self, hist: RewardHistory, sessions: Tensor) -> RewardOutput:
        """``hist`` [B, S] histories, ``sessions`` [B, K] -> :class:`RewardOutput`."""
        return self.score(self.encode_history(hist), sessions)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
