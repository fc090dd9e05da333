"""The generator as a :class:`~models.evaluation.ranker.Ranker`: top-N items by constrained beam search.

Offline evaluation ranks all items for each user; a generative model ranks by
decoding: :func:`models.decoding.search.beam_topn` with a beam of at least ``n``
returns the ``n`` most likely distinct items (TIGER's evaluation, Rajput et
al. 2023). Seen items are excluded by the same rule as every other ranker
(:mod:`models.evaluation.ranker`), applied here as a decoding constraint, so the beam is
never wasted on items that would be filtered out afterwards.
"""

from __future__ import annotations

import numpy as np
import torch

from models.decoding.constraint import SidConstraint
from models.decoding.search import beam_topn
from models.generator.model import GenerativeRecommender, Memory
from models.generator.features import history_batch
from models.evaluation.ranker import Histories, as_histories, seen_mask


def build_trie(item_sids: np.ndarray, level_sizes: tuple[int, ...], live: np.ndarray | None = None):
    """A :class:`models.sid.trie.SidTrie` of every (live) item index -> its SID row."""
    from models.sid.trie import SidTrie

    item_sids = np.asarray(item_sids, dtype=np.int64)
    idx = np.arange(len(item_sids)) if live is None else np.flatnonzero(np.asarray(live, dtype=bool))
    trie = SidTrie(level_sizes)
    trie.add(item_sids[idx], idx)
    return trie


@torch.no_grad()
def rerank_by_item_head(model: GenerativeRecommender, memory: Memory, items: torch.Tensor, item_sids: torch.Tensor
                        ) -> torch.Tensor:
    """Each row's candidates ``items`` [B, n] (-1 = none, kept last) ordered by the model's item head
    (``GeneratorConfig.item_head``; LIGER, Yang et al. 2024: generation proposes, the dense head orders).
    ``memory`` the rows' encoded histories (the beam's own); ``item_sids`` [n_items, D] on the model's device.
    -> [B, n]."""
    states = model.user_states(memory)                                          # [B, d]
    scores = model.item_scores(states, item_sids[items.clamp(min=0)])            # [B, n]
    order = scores.masked_fill(items < 0, float("-inf")).argsort(dim=1, descending=True, stable=True)
    return items.gather(1, order)


#: Log-probability (nats) the union ranking adds to every item the beam proposed: half a nat validated best
#: on ML-100K and Amazon Toys (one seed each, decision 042); 0 would be the head alone, a large bonus the
#: head reordering the beam's candidates.
BEAM_BONUS = 0.5


@torch.no_grad()
def union_scores(model: GenerativeRecommender, memory: Memory, proposed: torch.Tensor, item_sids: torch.Tensor,
                 live: torch.Tensor, seen: torch.Tensor | None, beam_bonus: float = BEAM_BONUS) -> torch.Tensor:
    """The union's score of every catalog item (:func:`union_by_item_head`), -inf where not allowed.
    -> [B, n_items] float32."""
    allowed = live[None].expand(len(proposed), -1) if seen is None else live[None] & ~seen      # [B, I]
    logits = model.item_scores(model.user_states(memory), item_sids)                   # [B, I]
    logp = torch.log_softmax(logits.float().masked_fill(~allowed, float("-inf")), dim=1)
    lift = torch.where(proposed >= 0, beam_bonus, 0.0)                                  # [B, W]
    return logp.scatter_add(1, proposed.clamp(min=0), lift.to(logp.dtype))            # -inf stays -inf


def top_allowed(score: torch.Tensor, n: int) -> torch.Tensor:
    """The ``n`` best items of each row of ``score`` [B, I] (-inf = not allowed) -> [B, n], -1 padded."""
    top = score.topk(min(n, score.shape[1]), dim=1)
    items = top.indices.masked_fill(torch.isinf(top.values), -1)
    if items.shape[1] < n:
        items = torch.cat([items, items.new_full((items.shape[0], n - items.shape[1]), -1)], 1)
    return items


@torch.no_grad()
def union_by_item_head(model: GenerativeRecommender, memory: Memory, proposed: torch.Tensor, item_sids: torch.Tensor,
                       live: torch.Tensor, seen: torch.Tensor | None, n: int, beam_bonus: float = BEAM_BONUS
                       ) -> torch.Tensor:
    """The top ``n`` of the whole catalog by the item head, the beam's proposals lifted by ``beam_bonus``.

    LIGER's union (Yang et al. 2024): dense retrieval and generation each propose items and one score orders
    them. Score = the head's log-softmax over the allowed items (``live`` [n_items] and not ``seen``
    [B, n_items]: nothing else is ever returned) + ``beam_bonus`` for each item of ``proposed``.
    ``proposed`` [B, W] item indices (-1 = none); ``item_sids`` [n_items, D] on the model's device.
    -> [B, n], -1 where fewer than ``n`` items are allowed."""
    return top_allowed(union_scores(model, memory, proposed, item_sids, live, seen, beam_bonus), n)


def live_mask(trie, n_items: int, device) -> torch.Tensor:
    """[n_items] bool: the items in ``trie`` (the live catalog the beam decodes into)."""
    live = torch.zeros(n_items, dtype=torch.bool, device=device)
    live[torch.from_numpy(trie.items()).to(device)] = True
    return live


@torch.no_grad()
def rank_encoded(model: GenerativeRecommender, memory: Memory, constraint: SidConstraint, n: int, width: int,
                 seen: torch.Tensor | None = None, item_sids: torch.Tensor | None = None,
                 live: torch.Tensor | None = None, beam_bonus: float | None = BEAM_BONUS) -> torch.Tensor:
    """The top ``n`` items of each encoded history (``memory``): the constrained beam of width
    ``max(n, width)``; with ``item_sids`` [n_items, D] (item-head models) the head ranks — the union with
    the beam's candidates (:func:`union_by_item_head`, needs ``live``), or with ``beam_bonus=None`` the
    beam's candidates alone (:func:`rerank_by_item_head`). ``seen`` [B, n_items] is never returned. -> [B, n]."""
    w = max(n, width)
    items = beam_topn(model, memory, constraint, n if item_sids is None else w, beam_width=w, seen=seen).items
    if item_sids is None:
        return items
    if beam_bonus is None:
        return rerank_by_item_head(model, memory, items, item_sids)[:, :n]
    return union_by_item_head(model, memory, items, item_sids, live, seen, n, beam_bonus)


class GeneratorRanker:
    """``rank(histories, n) -> LongTensor [B, n]`` item indices via ``beam_topn``.

    ``item_sids`` [n_items, D]: the SID of every item index (the tokenizer's
    output for the catalog). ``beam_width`` defaults to ``max(n, 20)``: a
    wider beam than ``n`` finds better top-n lists at small extra cost. A model with an item head
    ranks by it: the whole live catalog with the beam's ``max(n, beam_width)`` candidates lifted by
    ``beam_bonus`` nats (:func:`union_by_item_head`), or, with ``beam_bonus=None``, the beam's candidates
    alone in the head's order (:func:`rerank_by_item_head`, decision 041). ``transition`` (a
    :class:`~models.evaluation.transition_prior.TransitionPrior`) adds ``transition_weight`` x the
    co-occurrence prior of each history's last item to the union's score (decision 044).
    """

    name = "generator"

    def __init__(self, model: GenerativeRecommender, item_sids: np.ndarray, *, beam_width: int = 20,
                 exclude_seen: bool = True, batch_size: int = 128, trie=None,
                 beam_bonus: float | None = BEAM_BONUS, transition=None, transition_weight: float = 0.0) -> None:
        if beam_bonus is not None and not beam_bonus >= 0:
            raise ValueError(f"beam_bonus={beam_bonus} must be >= 0 nats, or None to rerank the beam's candidates only")
        if not transition_weight >= 0:
            raise ValueError(f"transition_weight={transition_weight} must be >= 0 (0 = no transition prior)")
        if transition is not None and (not model.cfg.item_head or beam_bonus is None):
            raise ValueError("a transition prior adds to the union's scores: it needs a model with "
                             "GeneratorConfig(item_head=True) and beam_bonus >= 0 (not None)")
        if transition is not None and transition.n_items != len(item_sids):
            raise ValueError(f"the transition prior covers {transition.n_items} items, the catalog has "
                             f"{len(item_sids)}: fit it on this catalog's item indices")
        self.model = model
        self.item_sids = np.asarray(item_sids, dtype=np.int64)
        if self.item_sids.ndim != 2 or self.item_sids.shape[1] != model.cfg.sid_len:
            raise ValueError(f"item_sids must be [n_items, D={model.cfg.sid_len}], got {self.item_sids.shape}")
        self.n_items = len(self.item_sids)
        self.trie = trie if trie is not None else build_trie(self.item_sids, model.cfg.level_sizes)
        self.beam_width = beam_width
        self.exclude_seen = exclude_seen
        self.batch_size = batch_size
        self.beam_bonus = beam_bonus
        self.transition = transition
        self.transition_weight = float(transition_weight)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def rank(self, histories: Histories, n: int) -> torch.Tensor:
        if self.transition is not None:
            return self.rank_by_weights(histories, n, (self.transition_weight,))[self.transition_weight]
        cfg = self.model.cfg
        out = []
        dev = self.device
        constraint = SidConstraint.of(self.trie, dev)
        sids = torch.from_numpy(self.item_sids).to(dev) if cfg.item_head else None
        live = live_mask(self.trie, self.n_items, dev) if cfg.item_head and self.beam_bonus is not None else None
        for _, memory, seen in self._encoded_batches(histories):
            out.append(rank_encoded(self.model, memory, constraint, n, self.beam_width, seen, sids, live,
                                    self.beam_bonus).cpu())
        if not out:
            return torch.zeros((0, n), dtype=torch.long)
        return torch.cat(out, 0)

    def _encoded_batches(self, histories: Histories):
        """Per batch of ``batch_size`` users: (the batch's ``Histories``, its encoded ``Memory`` — once, the
        beam and the head read the same states — and its seen mask [b, n_items] or None)."""
        histories = as_histories(histories)
        cfg, dev = self.model.cfg, self.device
        for s in range(0, len(histories), self.batch_size):
            h = histories.subset(slice(s, s + self.batch_size))
            hb = history_batch(h.items, self.item_sids, cfg.max_history, cfg.n_time_buckets,
                               types=h.types, ts=h.ts).to(dev)
            seen = seen_mask(h, self.n_items, dev) if self.exclude_seen else None
            yield h, self.model.encode(hb), seen

    @torch.no_grad()
    def rank_by_weights(self, histories: Histories, n: int, weights) -> dict[float, torch.Tensor]:
        """The union ranking under each transition prior weight, from one encoding and one beam per
        batch (how validation picks the weight). Needs ``transition``. -> {weight: LongTensor [B, n]}."""
        if self.transition is None:
            raise ValueError("rank_by_weights needs GeneratorRanker(transition=TransitionPrior.fit(...))")
        from models.evaluation.transition_prior import last_items

        dev = self.device
        weights = tuple(dict.fromkeys(float(w) for w in weights))     # once each
        constraint = SidConstraint.of(self.trie, dev)
        sids = torch.from_numpy(self.item_sids).to(dev)
        live = live_mask(self.trie, self.n_items, dev)
        out: dict[float, list[torch.Tensor]] = {w: [] for w in weights}
        for h, memory, seen in self._encoded_batches(histories):
            w_beam = max(n, self.beam_width)
            proposed = beam_topn(self.model, memory, constraint, w_beam, beam_width=w_beam, seen=seen).items
            score = union_scores(self.model, memory, proposed, sids, live, seen, self.beam_bonus)   # [B, I]
            prior = self.transition.scores(last_items(h), dev)                                   # [B, I]
            for w in weights:
                out[w].append(top_allowed(score + w * prior if w else score, n).cpu())
        return {w: torch.cat(v, 0) if v else torch.zeros((0, n), dtype=torch.long) for w, v in out.items()}

    def sessions(self, histories: Histories, k: int, beam_width: int = 4, settings=None) -> torch.Tensor:
        """The serving interface: one generated session of ``k`` items per user, item after item,
        seen items excluded. By default session beam search (:func:`models.decoding.search.beam_session`,
        width ``beam_width``); ``settings`` (a :class:`models.decoding.settings.DecodeSettings`) picks
        another decoding mode, e.g. ``mode="sample"``. -> LongTensor [B, k]."""
        from dataclasses import replace

        from models.decoding.generate import generate
        from models.decoding.settings import DecodeSettings

        histories = as_histories(histories)
        cfg = self.model.cfg
        dev = self.device
        s = settings if settings is not None else DecodeSettings(mode="beam", beam_width=beam_width)
        s = replace(s, session_len=k, exclude_seen=self.exclude_seen)
        constraint = SidConstraint.of(self.trie, dev)
        out = []
        for i in range(0, len(histories), self.batch_size):
            h = histories.subset(slice(i, i + self.batch_size))
            hb = history_batch(h.items, self.item_sids, cfg.max_history, cfg.n_time_buckets,
                               types=h.types, ts=h.ts).to(dev)
            seen = seen_mask(h, self.n_items, dev) if self.exclude_seen else None
            out.append(generate(self.model, hb, constraint, s, seen=seen).items.cpu())
        if not out:
            return torch.zeros((0, k), dtype=torch.long)
        return torch.cat(out, 0)
