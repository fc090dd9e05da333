"""The generator as a :class:`~models.ranker.Ranker`: top-N items by constrained beam search.

Offline evaluation ranks all items for each user; a generative model ranks by
decoding: :func:`models.decoding.beam_topn` with a beam of at least ``n``
returns the ``n`` most likely distinct items (TIGER's evaluation, Rajput et
al. 2023). Seen items are excluded by the same rule as every other ranker
(:mod:`models.ranker`), applied here as a decoding constraint, so the beam is
never wasted on items that would be filtered out afterwards.
"""

from __future__ import annotations

import numpy as np
import torch

from models.decoding import SidRangeIndex, TrieConstraint, ItemBanConstraint, ExcludeSeen, beam_topn
from models.generator import GenerativeRecommender
from models.history_features import history_batch
from models.ranker import Histories, as_histories, seen_mask


def build_trie(item_sids: np.ndarray, level_sizes: tuple[int, ...], live: np.ndarray | None = None):
    """A :class:`models.sid_trie.SidTrie` of every (live) item index -> its SID row."""
    from models.sid_trie import SidTrie

    item_sids = np.asarray(item_sids, dtype=np.int64)
    idx = np.arange(len(item_sids)) if live is None else np.flatnonzero(np.asarray(live, dtype=bool))
    trie = SidTrie(level_sizes)
    trie.add(item_sids[idx], idx)
    return trie


class GeneratorRanker:
    """``rank(histories, n) -> LongTensor [B, n]`` item indices via ``beam_topn``.

    ``item_sids`` [n_items, D]: the SID of every item index (the tokenizer's
    output for the catalog). ``beam_width`` defaults to ``max(n, 20)``: a
    wider beam than ``n`` finds better top-n lists at small extra cost.
    """

    name = "generator"

    def __init__(self, model: GenerativeRecommender, item_sids: np.ndarray, *, beam_width: int = 20,
                 exclude_seen: bool = True, batch_size: int = 128, trie=None) -> None:
        self.model = model
        self.item_sids = np.asarray(item_sids, dtype=np.int64)
        if self.item_sids.ndim != 2 or self.item_sids.shape[1] != model.cfg.sid_len:
            raise ValueError(f"item_sids must be [n_items, D={model.cfg.sid_len}], got {self.item_sids.shape}")
        self.n_items = len(self.item_sids)
        self.trie = trie if trie is not None else build_trie(self.item_sids, model.cfg.level_sizes)
        self.index = SidRangeIndex.from_trie(self.trie, self.n_items) if trie is not None else \
            SidRangeIndex(model.cfg.level_sizes, self.item_sids, np.arange(self.n_items), self.n_items)
        self.beam_width = beam_width
        self.exclude_seen = exclude_seen
        self.batch_size = batch_size

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def rank(self, histories: Histories, n: int) -> torch.Tensor:
        histories = as_histories(histories)
        cfg = self.model.cfg
        out = []
        dev = self.device
        if self.index.keys.device != dev:
            self.index = SidRangeIndex(cfg.level_sizes, self.item_sids, np.arange(self.n_items), self.n_items, dev)
            self.trie.to(dev)
        for s in range(0, len(histories), self.batch_size):
            h = histories.subset(slice(s, s + self.batch_size))
            hb = history_batch(h.items, self.item_sids, cfg.max_history, cfg.n_time_buckets,
                               types=h.types, ts=h.ts).to(dev)
            procs = [TrieConstraint(self.trie)]
            if self.exclude_seen:
                procs.append(ItemBanConstraint(self.index, [ExcludeSeen(seen_mask(h, self.n_items, dev))]))
            res = beam_topn(self.model, hb, self.trie, n, beam_width=max(n, self.beam_width), processors=procs)
            out.append(res.items.cpu())
        if not out:
            return torch.zeros((0, n), dtype=torch.long)
        return torch.cat(out, 0)
