"""The generative recommender: an encoder–decoder transformer over semantic IDs.

The model follows TIGER (Rajput et al., 2023, "Recommender Systems with
Generative Retrieval") and OneRec (Deng et al., 2025, "OneRec: Unifying
Retrieve and Rank with Generative Recommender and Iterative Preference
Alignment"):

* **Encoder** — one position per history event. An event's input vector is
  the *sum* of the embeddings of its item's semantic-ID codes (one table per
  level, shared with the decoder) plus an event-type embedding, a time-gap
  bucket embedding and a position embedding. A learned "user" token is
  prepended and is always valid, so an empty history (cold start) still has a
  memory to attend to and the model falls back to a learned population prior.
  The encoder is *causal* (each event attends to itself and earlier events,
  as in SASRec, Kang & McAuley 2018) and positions count from the first event
  of the window, so the state of event ``j`` depends only on events ``<= j``.
  That makes the memory of every prefix of a window a prefix of the window's
  memory: training encodes a window once and decodes the next session after
  *every* prefix of it (:meth:`forward_anchors`), ~5x cheaper per example than
  encoding each prefix separately, and exactly what inference computes.
* **Decoder** — emits the SID codes of the next ``session_len`` items, item
  after item, ``D`` codes each (session-level generation, OneRec). Position
  ``p`` of the decoder predicts the code at level ``p % D``; its input is BOS
  at ``p = 0`` and the previous code otherwise. Output logits are the dot
  product with the same code embeddings (weight tying, which matters on small
  data), padded to ``K_max = max(level_sizes)`` with ``-inf`` for codes that do
  not exist at that level.
* Optional mixture-of-experts feed-forward in the decoder (:mod:`models.generator.moe`).

Positions are counted over *real* events only, so padding (left or right)
never changes the output of real positions (padding keys are masked out of
attention as well).

API (relied on by :mod:`models.decoding.search` and the fast-decoding modes):
``encode(hist) -> Memory`` once per request, and
``decode(tokens [B, T], memory, cache, start) -> DecoderOutput`` with logits
AND hidden states per position and a :class:`~models.generator.kv_cache.KVCache`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import NamedTuple

import torch
from torch import Tensor, nn
import torch.nn.functional as F

from models.config_fields import config_from_dict
from models.generator.hstu import HSTULayer, relative_buckets
from models.generator.kv_cache import KVCache
from models.generator.moe import DenseFeedForward, MoEFeedForward
from models.sid.levels import CodeTableModule, SidShape

#: Encoder layer kinds of :class:`GeneratorConfig` ``encoder``.
ENCODERS = ("transformer", "hstu")

#: Token value of the decoder's first input (position 0 is always BOS whatever the value).
BOS = 0
_PREFIX_HASH = 0x9E3779B1   # odd multiplier (Fibonacci hashing): spreads neighbouring prefix keys over the table


@dataclass(frozen=True)
class GeneratorConfig(SidShape):
    """Sizes of the generator. Defaults are for CPU training on 2 cores; scale by config.

    ``level_sizes`` — codes per SID level, de-duplication level included (``D = len``).
    ``session_len`` — items the decoder is trained to emit per session.
    ``max_history`` — most recent events the encoder reads (older ones are dropped).
    ``n_event_types`` / ``n_time_buckets`` — vocabulary sizes of those features (0 = padding).
    ``moe_experts`` — 0 for a dense decoder FFN, else the number of experts (``>= 2``).
    ``position_head`` — a next-item head on every encoder position (training only; see
    :meth:`GenerativeRecommender.position_logits`): each history position also predicts the next
    item's codes straight from its encoder state, as SASRec / HSTU train every position.
    ``encoder`` — ``"transformer"`` (softmax attention + FFN layers) or ``"hstu"`` (pointwise
    attention with a relative position / time bias, Zhai et al. 2024; :mod:`models.generator.hstu`).
    ``item_head`` — an item-level head on every encoder position (LIGER, Yang et al. 2024): the state
    scores catalog items by their SID vectors (:meth:`GenerativeRecommender.item_head_vectors`: the code
    embeddings the encoder also reads, plus the prefix rows below), trained with a full-softmax next-item loss as SASRec is; ranking scores the catalog
    by it, the beam's candidates lifted (:meth:`GenerativeRecommender.item_scores`,
    :func:`models.evaluation.generator_ranker.union_by_item_head`). Generation itself is unchanged.
    ``item_prefix_rows`` — with the item head, each SID prefix longer than one code also gets its own
    embedding, hashed into a table of this many rows per level (prefix n-grams, Singh et al. 2024, "Better
    Generalization with Semantic IDs"): deep prefixes become nearly item-specific while new items still get
    vectors from their codes. 0 = code embeddings only.
    ``prefix_input`` — the encoder reads history items through the item head's vectors (codes plus prefix
    embeddings) instead of their codes alone, so input and output item tables are tied as in SASRec.
    """

    level_sizes: tuple[int, ...]
    d_model: int = 64
    heads: int = 2
    enc_layers: int = 2
    dec_layers: int = 2
    ff_mult: int = 4
    dropout: float = 0.2
    max_history: int = 50
    session_len: int = 3
    n_event_types: int = 16
    n_time_buckets: int = 16
    moe_experts: int = 0
    moe_top_k: int = 2
    moe_aux_weight: float = 0.01
    position_head: bool = False
    encoder: str = "transformer"
    item_head: bool = False
    item_prefix_rows: int = 0
    prefix_input: bool = False

    def __post_init__(self) -> None:
        ls = tuple(int(x) for x in self.level_sizes)
        object.__setattr__(self, "level_sizes", ls)
        if not ls or any(k < 1 for k in ls):
            raise ValueError(f"level_sizes={self.level_sizes!r} must be a non-empty tuple of positive "
                             "code counts, e.g. (64, 64, 64, 8) — take it from the tokenizer")
        for name in ("d_model", "heads", "enc_layers", "dec_layers", "ff_mult", "max_history",
                     "session_len", "n_event_types", "n_time_buckets"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"{name}={v!r} must be a positive int")
        if self.d_model % self.heads:
            raise ValueError(f"d_model={self.d_model} must be divisible by heads={self.heads}; "
                             f"try d_model={self.heads * max(1, self.d_model // self.heads)}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout={self.dropout} must be in [0, 1)")
        if self.moe_experts == 1 or self.moe_experts < 0:
            raise ValueError(f"moe_experts={self.moe_experts}: use 0 (dense) or >= 2 experts")
        if self.moe_experts and not 1 <= self.moe_top_k <= self.moe_experts:
            raise ValueError(f"moe_top_k={self.moe_top_k} must be in 1..moe_experts={self.moe_experts}")
        if self.moe_aux_weight < 0:
            raise ValueError(f"moe_aux_weight={self.moe_aux_weight} must be >= 0")
        for name in ("position_head", "item_head", "prefix_input"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name}={getattr(self, name)!r} must be True or False")
        if not isinstance(self.item_prefix_rows, int) or self.item_prefix_rows < 0:
            raise ValueError(f"item_prefix_rows={self.item_prefix_rows!r} must be an int >= 0 (0 = off), e.g. 16384")
        if self.item_prefix_rows and not self.item_head:
            raise ValueError("item_prefix_rows needs item_head=True (the prefix embeddings belong to the item head)")
        if self.prefix_input and not self.item_prefix_rows:
            raise ValueError("prefix_input needs item_prefix_rows > 0 (e.g. 16384): it reads the prefix embeddings")
        if self.encoder not in ENCODERS:
            raise ValueError(f"encoder={self.encoder!r} must be one of {ENCODERS}")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["level_sizes"] = list(self.level_sizes)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "GeneratorConfig":
        d = dict(d)
        d["level_sizes"] = tuple(d["level_sizes"])
        return config_from_dict(cls, d, "GeneratorConfig fields")


class HistoryBatch(NamedTuple):
    """Encoder input. Padding is wherever ``mask`` is False (any side)."""

    sids: Tensor         # [B, S, D] long: SID codes of each history event's item
    event_type: Tensor   # [B, S] long: event-type code (0 = padding)
    time_bucket: Tensor  # [B, S] long: bucketed time gap (0 = padding / unknown)
    mask: Tensor         # [B, S] bool: True = real event

    def to(self, device) -> "HistoryBatch":
        return HistoryBatch(*(t.to(device) for t in self))


@dataclass
class Memory:
    """Encoder output for a batch of requests: computed once per request."""

    states: Tensor  # [B, 1 + S, d_model]: user token, then one state per history event
    mask: Tensor    # [B, 1 + S] bool: True = attendable (the user token always is)

    def index_select(self, idx: Tensor) -> "Memory":
        return Memory(self.states.index_select(0, idx), self.mask.index_select(0, idx))


@dataclass
class DecoderOutput:
    logits: Tensor   # [B, T, K_max]: next-code logits; -inf for codes absent at that level
    hidden: Tensor   # [B, T, d_model]: final (normalised) decoder states
    cache: KVCache
    aux_loss: Tensor = field(default_factory=lambda: torch.zeros(()))  # MoE balance loss (0 if dense)
    position_logits: Tensor | None = None  # [N, D, K_max]: the position head's next-item codes (training)
    item_logits: Tensor | None = None      # [N, M]: the item head's next-item logits over M items (training)


@dataclass
class TreeTables:
    """:meth:`GenerativeRecommender.decode_tree`'s lookups per decode (:meth:`GenerativeRecommender.tree_tables`):
    rows of the model's own tables, so using them changes no value, only the number of ops per tree."""

    inputs: Tensor     # [(D+1)*K, d] input embedding of code c after level l at row l*K + c (clamped); then K BOS rows
    row_base: Tensor   # [P] row of code 0 of position p's input level (p = 0: the first BOS row)
    level_pos: Tensor  # [P, d] level embedding of position p
    slot_pos: Tensor   # [P, d] slot embedding of position p
    out_rows: Tensor   # [D, K] shared code-table row of (level, code)
    out_bias: Tensor   # [D, K] output bias, -inf beyond a level


# ---- building blocks ------------------------------------------------------------------------

class Attention(nn.Module):
    """Multi-head attention with separately callable K/V projection (for caching).

    No dropout on the attention weights: on CPU drawing a Bernoulli mask of
    ``[B, H, T, S]`` was a third of a training step, and residual/embedding
    dropout regularise as well on these sizes.
    """

    def __init__(self, d: int, heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.h, self.dh = heads, d // heads
        self.q = nn.Linear(d, d)
        self.kv = nn.Linear(d, 2 * d)
        self.o = nn.Linear(d, d)
        self.p = dropout

    def project_kv(self, x: Tensor) -> tuple[Tensor, Tensor]:  # x: [B, S, d] -> 2 x [B, H, S, Dh]
        b, s, _ = x.shape
        k, v = self.kv(x).view(b, s, 2, self.h, self.dh).permute(2, 0, 3, 1, 4)
        return k, v

    def forward(self, x: Tensor, k: Tensor, v: Tensor, mask: Tensor | None) -> Tensor:
        """``x`` [B, T, d] queries; ``k``, ``v`` [B, H, S, Dh]; ``mask`` bool broadcastable to [B, H, T, S]."""
        b, t, _ = x.shape
        q = self.q(x).view(b, t, self.h, self.dh).transpose(1, 2)  # [B, H, T, Dh]
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask,
                                           dropout_p=self.p if self.training and self.p > 0 else 0.0)
        return self.o(y.transpose(1, 2).reshape(b, t, self.h * self.dh))


class EncoderLayer(nn.Module):
    def __init__(self, cfg: GeneratorConfig) -> None:
        super().__init__()
        d = cfg.d_model
        self.n1, self.n2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.attn = Attention(d, cfg.heads)
        self.ff = DenseFeedForward(d, d * cfg.ff_mult, cfg.dropout)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: Tensor, key_mask: Tensor) -> Tensor:  # x [B, S, d], key_mask [B, 1, S|1, S]
        h = self.n1(x)
        k, v = self.attn.project_kv(h)
        x = x + self.drop(self.attn(h, k, v, key_mask))
        return x + self.drop(self.ff(self.n2(x))[0])


class DecoderLayer(nn.Module):
    def __init__(self, cfg: GeneratorConfig) -> None:
        super().__init__()
        d = cfg.d_model
        self.n1, self.n2, self.n3 = nn.LayerNorm(d), nn.LayerNorm(d), nn.LayerNorm(d)
        self.self_attn = Attention(d, cfg.heads)
        self.cross_attn = Attention(d, cfg.heads)
        if cfg.moe_experts:
            self.ff = MoEFeedForward(d, d * cfg.ff_mult, cfg.moe_experts, cfg.moe_top_k, cfg.dropout)
        else:
            self.ff = DenseFeedForward(d, d * cfg.ff_mult, cfg.dropout)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: Tensor, cache: KVCache, layer: int, self_mask: Tensor | None) -> tuple[Tensor, Tensor]:
        h = self.n1(x)
        k, v = self.self_attn.project_kv(h)
        k, v = cache.append(layer, k, v)
        x = x + self.drop(self.self_attn(h, k, v, self_mask))
        cross_mask = cache.cross_mask[:, None, None, :]  # [B_cross, 1, 1, S]
        h = self.n2(x)
        g = cache.group
        if g > 1:  # the g beams of a request share its memory: stack their queries on it
            n, t, d = h.shape
            y = self.cross_attn(h.reshape(n // g, g * t, d), cache.cross_k[layer], cache.cross_v[layer], cross_mask)
            y = y.reshape(n, t, d)
        else:
            y = self.cross_attn(h, cache.cross_k[layer], cache.cross_v[layer], cross_mask)
        x = x + self.drop(y)
        y, aux = self.ff(self.n3(x))
        return x + self.drop(y), aux


# ---- the model --------------------------------------------------------------------------------

class GenerativeRecommender(CodeTableModule):
    """Encoder–decoder over semantic IDs (see module docstring)."""

    def __init__(self, cfg: GeneratorConfig) -> None:
        super().__init__(cfg.level_sizes)
        self.cfg = cfg
        d, D, K = cfg.d_model, cfg.sid_len, cfg.k_max
        # [D, K]: row of the shared code table for (level, code); invalid codes point at row 0.
        table_idx = torch.where(self.code_valid, self.level_offsets[:, None] + torch.arange(K)[None, :], 0)
        self.register_buffer("out_rows", table_idx, persistent=False)

        self.code_emb = nn.Embedding(sum(cfg.level_sizes), d)  # shared: encoder items, decoder in/out
        self.type_emb = nn.Embedding(cfg.n_event_types, d, padding_idx=0)
        self.time_emb = nn.Embedding(cfg.n_time_buckets, d, padding_idx=0)
        self.pos_emb = nn.Embedding(cfg.max_history, d)       # position in the window, from its first event
        self.user_token = nn.Parameter(torch.zeros(1, 1, d))
        if cfg.encoder == "hstu":
            self.enc_layers = nn.ModuleList(HSTULayer(d, cfg.heads, cfg.max_history, cfg.dropout)
                                            for _ in range(cfg.enc_layers))
        else:
            self.enc_layers = nn.ModuleList(EncoderLayer(cfg) for _ in range(cfg.enc_layers))
        self.enc_norm = nn.LayerNorm(d)

        self.bos = nn.Parameter(torch.zeros(1, 1, d))
        self.level_pos = nn.Embedding(D, d)               # level being predicted at position p
        self.slot_pos = nn.Embedding(cfg.session_len, d)  # which item of the session
        self.dec_layers = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.dec_layers))
        self.dec_norm = nn.LayerNorm(d)
        self.out_proj = nn.Linear(d, d)
        self.out_bias = nn.Parameter(torch.zeros(D, K))
        self.drop = nn.Dropout(cfg.dropout)
        # every-position next-item head: encoder state -> decoder space (codes come from the tied output layer)
        self.pos_head = nn.Linear(d, d) if cfg.position_head else None
        self.pos_norm = nn.LayerNorm(d) if cfg.position_head else None
        self.item_proj = nn.Linear(d, d) if cfg.item_head else None   # encoder state -> item-vector space
        self.prefix_emb = nn.ModuleList(nn.Embedding(cfg.item_prefix_rows, d) for _ in range(D - 1)
                                        ) if cfg.item_prefix_rows else None   # levels 1.. (level 0 is a code)
        self._init()

    def _init(self) -> None:
        for emb in (self.code_emb, self.type_emb, self.time_emb, self.pos_emb, self.level_pos, self.slot_pos):
            nn.init.normal_(emb.weight, std=0.02)
        nn.init.normal_(self.user_token, std=0.02)
        nn.init.normal_(self.bos, std=0.02)
        with torch.no_grad():
            self.type_emb.weight[0].zero_()
            self.time_emb.weight[0].zero_()
            for table in self.prefix_emb or ():     # the head starts from the code embeddings alone
                table.weight.zero_()

    # ---- encoder ----------------------------------------------------------------------

    def item_vectors(self, sids: Tensor) -> Tensor:
        """Sum of SID code embeddings. ``sids`` [..., D] (negative = padding) -> [..., d_model]."""
        D = self.cfg.sid_len
        if sids.shape[-1] != D:
            raise ValueError(f"sids have {sids.shape[-1]} levels, the model expects D={D}")
        codes = sids.clamp(min=0)
        codes = torch.minimum(codes, self.level_sizes_t - 1)  # out-of-range codes cannot index other levels
        return self.code_emb(codes + self.level_offsets).sum(dim=-2)

    def encode(self, hist: HistoryBatch) -> Memory:
        """Encode histories once per request. Keeps only the ``max_history`` most recent events."""
        sids, etype, tbucket, mask = hist
        if sids.dim() != 3:
            raise ValueError(f"hist.sids must be [B, S, D], got shape {tuple(sids.shape)}")
        mask = mask.bool()
        H = self.cfg.max_history
        if sids.shape[1] > H:  # keep the H most recent real events per row, wherever the padding is
            n_real = mask.sum(1, keepdim=True)
            keep = mask & (mask.long().cumsum(1) > (n_real - H))
            sel = torch.argsort((~keep).long(), dim=1, stable=True)[:, :H]  # kept positions first, in order
            sids = sids.gather(1, sel[..., None].expand(-1, -1, sids.shape[2]))
            etype, tbucket, mask = etype.gather(1, sel), tbucket.gather(1, sel), keep.gather(1, sel)
        # [B, S]: 0 for the first real event of the window, 1 for the next, ...
        pos = (mask.long().cumsum(1) - 1).clamp(0, H - 1)
        items = self.item_head_vectors(sids) if self.cfg.prefix_input else self.item_vectors(sids)
        x = (items + self.type_emb(etype.clamp(0, self.cfg.n_event_types - 1))
             + self.time_emb(tbucket.clamp(0, self.cfg.n_time_buckets - 1)) + self.pos_emb(pos))
        x = x * mask[..., None]                                            # [B, S, d]
        b = x.shape[0]
        x = torch.cat([self.user_token.expand(b, -1, -1), x], dim=1)       # [B, 1+S, d]
        full_mask = torch.cat([mask.new_ones(b, 1), mask], dim=1)          # [B, 1+S]
        x = self.drop(x)
        s1 = x.shape[1]
        causal = torch.ones(s1, s1, dtype=torch.bool, device=x.device).tril()      # [1+S, 1+S]
        attn_mask = causal[None, None] & full_mask[:, None, None, :]               # [B, 1, 1+S, 1+S]
        if self.cfg.encoder == "hstu":  # relative position / time buckets, once for every layer
            rel = relative_buckets(mask, tbucket, self.cfg.max_history)
            for layer in self.enc_layers:
                x = layer(x, attn_mask, *rel)
        else:
            for layer in self.enc_layers:
                x = layer(x, attn_mask)
        return Memory(self.enc_norm(x), full_mask)

    # ---- decoder ----------------------------------------------------------------------

    def start_cache(self, memory: Memory) -> KVCache:
        """An empty decoder cache holding the memory's cross-attention K/V (once per request)."""
        ks, vs = [], []
        for layer in self.dec_layers:
            k, v = layer.cross_attn.project_kv(memory.states)
            ks.append(k)
            vs.append(v)
        return KVCache(cross_k=ks, cross_v=vs, cross_mask=memory.mask)

    def _embed_tokens(self, tokens: Tensor, start: int | Tensor) -> Tensor:
        """Decoder inputs [B, T] at absolute positions start.. -> [B, T, d].

        ``start``: one position for every row (int), or one per row (LongTensor [B]: ragged
        rows of a continuous batch, :meth:`decode_ragged`).
        """
        return self._embed_at(tokens, self._positions(start, tokens.shape[1], tokens.device))

    def _embed_at(self, tokens: Tensor, pos: Tensor) -> Tensor:
        """Decoder inputs [B, T] at absolute positions ``pos`` [1 | B, T] -> [B, T, d]."""
        D, b, t = self.cfg.sid_len, tokens.shape[0], tokens.shape[1]
        prev_level = (pos - 1) % D                                            # level of the input code
        sizes = self.level_sizes_t[prev_level]
        codes = torch.minimum(tokens.clamp(min=0), sizes - 1)
        x = self.code_emb(codes + self.level_offsets[prev_level])             # [B, T, d]
        x = torch.where((pos == 0)[..., None], self.bos.expand(b, t, -1), x)
        slot = (pos // D).clamp(max=self.cfg.session_len - 1)
        return x + self.level_pos(pos % D) + self.slot_pos(slot)

    @staticmethod
    def _positions(start: int | Tensor, t: int, device) -> Tensor:
        """Absolute positions [1, T] (int start) or [B, T] (per-row starts [B])."""
        steps = torch.arange(t, device=device)
        if isinstance(start, Tensor):
            return start.to(device)[:, None] + steps[None, :]
        return (start + steps)[None, :]

    def decode(self, tokens: Tensor, memory: Memory | None, cache: KVCache | None = None,
               start: int = 0) -> DecoderOutput:
        """Run the decoder on ``tokens`` [B, T] at positions ``start .. start+T-1``.

        ``cache`` holds positions ``0 .. start-1`` (and the cross K/V); when it is
        None a fresh one is built from ``memory`` and ``start`` must be 0. The
        cache is extended in place and returned. Position ``p`` predicts the code
        of level ``p % D``; logits [B, T, K_max] are ``-inf`` beyond that level's size.
        """
        if cache is None:
            if memory is None:
                raise ValueError("decode needs memory when no cache is given")
            if start != 0:
                raise ValueError(f"start={start} without a cache: positions 0..{start - 1} are unknown; "
                                 "pass the cache of the earlier positions")
            cache = self.start_cache(memory)
        elif cache.length != start:
            raise ValueError(f"start={start} but the cache holds {cache.length} positions; "
                             "truncate the cache or pass start=cache.length")
        b, t = tokens.shape
        x = self.drop(self._embed_tokens(tokens, start))
        if t > 1:  # causal within the new block; all cached positions are visible
            q_pos = torch.arange(start, start + t, device=tokens.device)[:, None]
            k_pos = torch.arange(start + t, device=tokens.device)[None, :]
            self_mask = k_pos <= q_pos                                         # [T, start+T]
        else:
            self_mask = None
        aux = x.new_zeros(())
        for i, layer in enumerate(self.dec_layers):
            x, a = layer(x, cache, i, self_mask)
            aux = aux + a
        hidden = self.dec_norm(x)                                              # [B, T, d]
        return DecoderOutput(self.project(hidden, start), hidden, cache, aux)

    def decode_ragged(self, tokens: Tensor, cache: KVCache, ragged: bool | None = None) -> DecoderOutput:
        """Run the decoder on rows that are at *different* positions (continuous batching).

        ``cache.self_pad`` [B] says how many leading self-attention columns of each
        row are padding (a row that joined the batch later has more), so row ``r``
        is at position ``cache.length - self_pad[r]``; padding columns are masked
        out of attention, so a row's output is the one it would get decoding alone.
        ``tokens`` [B, T] are each row's next T inputs. Returns logits [B, T, K_max].
        ``ragged``: whether any row has padding, when the caller knows it on the host (a continuous batch
        does: its rows' item counts differ); None reads it from ``self_pad`` (a device sync).
        """
        if cache.self_pad is None:
            raise ValueError("decode_ragged needs a cache with self_pad (KVCache.concat_rows builds one)")
        b, t = tokens.shape
        if ragged is None:
            ragged = bool(cache.self_pad.any())
        if not ragged:                       # every row at the same position: the plain (unmasked) path
            return self.decode(tokens, None, cache, cache.length)
        start = cache.length - cache.self_pad                                  # [B] position of each row
        x = self.drop(self._embed_tokens(tokens, start))
        cols = torch.arange(cache.length + t, device=tokens.device)
        q_cols = cache.length + torch.arange(t, device=tokens.device)
        self_mask = (cols[None, None, :] >= cache.self_pad[:, None, None]) & (cols[None, None, :] <= q_cols[None, :, None])
        self_mask = self_mask[:, None]                                          # [B, 1, T, length+T]
        aux = x.new_zeros(())
        for i, layer in enumerate(self.dec_layers):
            x, a = layer(x, cache, i, self_mask)
            aux = aux + a
        hidden = self.dec_norm(x)
        return DecoderOutput(self.project(hidden, start), hidden, cache, aux)

    @torch.no_grad()
    def tree_tables(self, n_pos: int) -> "TreeTables":
        """The position- and level-dependent lookups of :meth:`decode_tree` for positions ``0 .. n_pos-1``,
        built once per decode (they depend on the weights, so never across a weight update): rows copied
        from the embedding tables, so a tree forward with them computes the same values as without."""
        D, K, dev = self.cfg.sid_len, self.cfg.k_max, self.code_emb.weight.device
        pos = torch.arange(n_pos, device=dev)
        codes = torch.minimum(torch.arange(K, device=dev)[None, :], self.level_sizes_t[:, None] - 1)   # [D, K]
        # [(D+1)*K, d]; K BOS rows last: position 0 is BOS whatever its token, as in _embed_at
        inputs = torch.cat([self.code_emb.weight[(codes + self.level_offsets[:, None]).reshape(-1)],
                            self.bos[0].expand(K, -1)])
        row_base = torch.where(pos == 0, D * K, ((pos - 1) % D) * K)           # [P] row of code 0 of p's input
        slot = (pos // D).clamp(max=self.cfg.session_len - 1)
        return TreeTables(inputs, row_base, self.level_pos.weight[pos % D], self.slot_pos.weight[slot],
                          self.out_rows, torch.where(self.code_valid, self.out_bias, float("-inf")))

    #: decode_tree takes one start per row (a [B] tensor): the per-row speculative beam may use it
    ragged_tree = True

    def decode_tree(self, tokens: Tensor, depth: Tensor, start: int | Tensor, cache: KVCache,
                    self_mask: Tensor, tables: "TreeTables | None" = None) -> DecoderOutput:
        """Run the decoder on a token *tree* per row: every new token sees only the cached columns and new
        tokens ``self_mask`` allows (its ancestors and itself), so one forward scores many branches.

        ``tokens`` [B, Q] at positions ``start + depth`` (``depth`` [Q] long, the same for every row; ``start``
        an int, or a long tensor [B] of per-row starts, rows then at their own positions and SID levels);
        ``cache`` (group 1, B rows) holds C columns; ``self_mask`` [B, Q, C+Q] bool, True = visible.
        The Q new K/V columns are appended to ``cache`` (positions are the tree's, not the columns').
        Speculative beam verification (SpecInfer, Miao et al. 2024, "tree-based speculative inference").
        ``self_mask`` may also be additive already (float: 0 visible, -inf not). ``tables``
        (:meth:`tree_tables`, covering every position of the tree; codes then in ``0 .. K_max-1``): the
        embedding and output lookups in a few index ops instead of recomputing them per call, same values.
        Returns logits [B, Q, K_max] and hidden [B, Q, d]."""
        b, t = tokens.shape
        if depth.shape != (t,) or self_mask.shape != (b, t, cache.length + t):
            raise ValueError(f"decode_tree: depth {tuple(depth.shape)} / self_mask {tuple(self_mask.shape)} do "
                             f"not fit tokens {tuple(tokens.shape)} on a cache of {cache.length} columns")
        # one start for every row, or one per row (ragged rows of a per-row speculative beam)
        pos = start.unsqueeze(1) + depth if isinstance(start, Tensor) else start + depth   # [Q] or [B, Q]
        D = self.cfg.sid_len
        if tables is None:
            x = self._embed_at(tokens, pos if pos.dim() == 2 else pos[None, :])  # [B, Q, d]
            lv = pos % D                                                       # [Q] one level per column
            rows = self.out_rows[lv]                                           # [Q, K]
            bias = torch.where(self.code_valid, self.out_bias, float("-inf"))[lv]  # [Q, K], -inf beyond a level
        else:                            # the same sums as _embed_at, in its order: code, level, slot
            idx = (tokens + tables.row_base[pos]).view(-1)
            x = tables.inputs.index_select(0, idx).view(b, t, -1) + tables.level_pos[pos] + tables.slot_pos[pos]
            lv = pos % D
            rows, bias = tables.out_rows[lv], tables.out_bias[lv]
        x = self.drop(x)
        # additive float mask, built once for every layer (SDPA on CPU is slower with a boolean one)
        mask = (self_mask.to(x.dtype) if self_mask.is_floating_point()
                else torch.where(self_mask, x.new_zeros(()), float("-inf")))[:, None]  # [B, 1, Q, C+Q]
        for i, layer in enumerate(self.dec_layers):
            x, _ = layer(x, cache, i, mask)
        hidden = self.dec_norm(x)                                              # [B, Q, d]
        # tied output layer against every code of every level at once, then each column's level picked out
        every = self.out_proj(hidden) @ self.code_emb.weight.T                 # [B, Q, sum K_l]
        rows = rows if rows.dim() == 3 else rows[None].expand(b, -1, -1)      # [B, Q, K]
        return DecoderOutput(every.gather(2, rows) + bias, hidden, cache, x.new_zeros(()))

    def project(self, hidden: Tensor, start: int | Tensor) -> Tensor:
        """Tied output layer: hidden [B, T, d] at positions start.. -> logits [B, T, K_max].

        ``start`` as in :meth:`_embed_tokens` (int, or per-row starts [B]).
        """
        D, t = self.cfg.sid_len, hidden.shape[1]
        level = self._positions(start, t, hidden.device) % D                  # [1 | B, T]
        h = self.out_proj(hidden)
        if level.shape[0] == 1 or bool((level == level[:1]).all()):           # one level per column: shared weights
            lv = level[0]
            w = self.code_emb(self.out_rows[lv])                               # [T, K, d]
            logits = torch.einsum("btd,tkd->btk", h, w) + self.out_bias[lv][None]
            return logits.masked_fill(~self.code_valid[lv][None], float("-inf"))
        w = self.code_emb(self.out_rows[level])                                # [B, T, K, d]
        logits = torch.matmul(w, h[..., None])[..., 0] + self.out_bias[level]  # [B, T, K]
        return logits.masked_fill(~self.code_valid[level], float("-inf"))

    # ---- teacher forcing -----------------------------------------------------------------

    def forward(self, hist: HistoryBatch, targets: Tensor) -> DecoderOutput:
        """Teacher-forced pass for training. ``targets`` [B, K, D] codes -> logits [B, K*D, K_max]."""
        b, k, D = targets.shape
        if D != self.cfg.sid_len:
            raise ValueError(f"targets have {D} levels, the model expects D={self.cfg.sid_len}")
        flat = targets.reshape(b, k * D)
        tokens = torch.cat([flat.new_full((b, 1), BOS), flat[:, :-1]], dim=1)  # [B, K*D]
        return self.decode(tokens, self.encode(hist))

    def forward_anchors(self, window: HistoryBatch, anchor_row: Tensor, anchor_len: Tensor,
                        targets: Tensor, decode_idx: Tensor | None = None,
                        item_sids: Tensor | None = None) -> DecoderOutput:
        """Teacher-forced pass for many prefixes of each window at once (training).

        ``window`` [W, S(, D)]: W windows of events, *left-aligned* (real events
        first; masked positions may follow). ``anchor_row`` [N]: the window of
        each example; ``anchor_len`` [N]: how many leading window positions are
        its history; ``targets`` [N, K, D]: its session. Because the encoder is
        causal, the memory of a prefix of length ``h`` is the window memory cut
        to the user token and its first ``h`` positions, which is what this
        builds as a cross-attention mask. ``decode_idx`` [M] (optional): decode only
        these examples (the decoder is most of a step's cost); the position head, when
        the model has one, still predicts every example's next item. ``item_sids`` [I, D] (``item_head``
        models): the catalog the item head scores for every example.
        Returns logits [M (or N), K*D, K_max], ``position_logits`` [N, D, K_max] and ``item_logits`` [N, I]
        (or None).
        """
        n, k, D = targets.shape
        if window.sids.shape[1] > self.cfg.max_history:
            raise ValueError(f"windows of {window.sids.shape[1]} events exceed max_history={self.cfg.max_history}")
        mem = self.encode(window)                                               # [W, 1+S, d]
        pos_logits = None
        # the state of each example's last history position (index anchor_len; 0 = the user token)
        states = mem.states[anchor_row, anchor_len.clamp(max=mem.states.shape[1] - 1)]       # [N, d]
        if self.pos_head is not None:
            pos_logits = self.position_logits(states, targets[:, 0])
        if decode_idx is not None:
            anchor_row, anchor_len, targets = anchor_row[decode_idx], anchor_len[decode_idx], targets[decode_idx]
            n = targets.shape[0]
        cache = self.start_cache(mem).index_select(anchor_row).ungrouped()      # cross K/V [N, H, 1+S, Dh]
        cols = torch.arange(mem.mask.shape[1], device=anchor_len.device)
        cache.cross_mask = (cols[None, :] <= anchor_len[:, None]) & mem.mask.index_select(0, anchor_row)
        flat = targets.reshape(n, k * D)
        tokens = torch.cat([flat.new_full((n, 1), BOS), flat[:, :-1]], dim=1)   # [N, K*D]
        out = self.decode(tokens, None, cache, 0)
        out.position_logits = pos_logits
        if item_sids is not None:
            out.item_logits = self.item_scores(states, item_sids)
        return out

    def user_states(self, memory: Memory) -> Tensor:
        """The state of each row's last real history position (the user token for an empty history).
        ``memory`` [B, 1+S, d] -> [B, d]."""
        pos = torch.arange(memory.mask.shape[1], device=memory.mask.device)
        last = (memory.mask.long() * pos).max(1).values                         # [B]
        return memory.states[torch.arange(memory.states.shape[0], device=last.device), last]

    def item_head_vectors(self, sids: Tensor) -> Tensor:
        """The item head's item vectors: code embeddings, plus hashed prefix embeddings when
        ``item_prefix_rows``. ``sids`` [..., D] -> [..., d]."""
        v = self.item_vectors(sids)
        if self.prefix_emb is None:
            return v
        codes = torch.minimum(sids.clamp(min=0), self.level_sizes_t - 1)
        key = codes[..., 0]
        for lvl, table in enumerate(self.prefix_emb, start=1):                  # key of codes[..., :lvl+1]
            key = key * self.cfg.level_sizes[lvl] + codes[..., lvl]
            v = v + table(torch.remainder(key * _PREFIX_HASH, table.num_embeddings))
        return v

    def item_scores(self, states: Tensor, sids: Tensor) -> Tensor:
        """Item-head logits (``item_head`` models): ``states`` [N, d] against items' SIDs — [M, D] (one
        catalog for every row) -> [N, M], or [N, M, D] (per-row candidates) -> [N, M]."""
        if self.item_proj is None:
            raise ValueError("item_scores needs a model with GeneratorConfig(item_head=True)")
        q = self.item_proj(states)                                               # [N, d]
        v = self.item_head_vectors(sids)                                         # [M, d] or [N, M, d]
        return q @ v.T if v.dim() == 2 else torch.einsum("nd,nmd->nm", q, v)

    def position_logits(self, states: Tensor, targets: Tensor) -> Tensor:
        """Next-item code logits from encoder states (the every-position head; teacher-forced).

        ``states`` [N, d]: the encoder state of each example's last history position (the user
        token for an empty history); ``targets`` [N, D]: the next item's codes. Level ``l`` is
        predicted from the state plus the embeddings of the true codes of levels ``< l`` (a
        layer-free autoregressive head, so the SID's coarse-to-fine structure is kept). Output
        through the decoder's tied layer (:meth:`project`). Returns logits [N, D, K_max].
        """
        if self.pos_head is None:
            raise ValueError("this model has no position head; build it with GeneratorConfig(position_head=True)")
        n, D = targets.shape
        lv = torch.arange(D, device=targets.device)
        codes = torch.minimum(targets.clamp(min=0), self.level_sizes_t - 1)
        emb = self.code_emb(codes + self.level_offsets)                        # [N, D, d]
        prefix = torch.cumsum(emb, dim=1) - emb                                 # codes of levels < l
        h = self.pos_head(states)[:, None, :] + prefix + self.level_pos(lv)[None]
        return self.project(self.pos_norm(h), 0)                               # positions 0..D-1 = levels

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
