"""Shared builders for the fast-decoding tests: random generators, catalogs and a bigram target.

The bigram target is a real implementation of the decoder protocol
(``start_cache`` / ``decode`` with a real :class:`~models.generator.kv_cache.KVCache`)
whose next-code logits depend only on (level, previous code). Its exact
twin as MTP "heads" drafts perfectly, and a noisy twin drafts imperfectly, so
the tests can drive every accept / reject path of the verifiers on purpose.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
import torch
from torch import nn

from models.generator.model import GenerativeRecommender, GeneratorConfig, HistoryBatch, Memory, DecoderOutput
from models.generator.kv_cache import KVCache
from models.sid.trie import SidTrie
from models.decoding.constraint import SidConstraint


@pytest.fixture(autouse=False, scope="module")
def one_thread():
    """Tiny tensors: one intra-op thread avoids OpenMP oversubscription on a shared 2-core machine
    (several times faster here). Restored after the module."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@dataclass
class World:
    model: object
    trie: SidTrie
    constraint: SidConstraint
    sids: np.ndarray          # [N, D]
    items: np.ndarray         # [N] item indices
    memory: Memory
    hist: HistoryBatch | None
    seen: list                # B lists of item indices
    seen_mask: torch.Tensor   # [B, n_items]


def catalog(rng: np.random.Generator, level_sizes, n_items: int):
    grid = np.array(np.meshgrid(*[np.arange(k) for k in level_sizes], indexing="ij")).reshape(len(level_sizes), -1).T
    n_items = min(n_items, len(grid))
    sids = grid[rng.choice(len(grid), n_items, replace=False)]
    items = rng.choice(4 * n_items, n_items, replace=False)          # sparse item indices
    return sids.astype(np.int64), items.astype(np.int64)


def _finish(model, level_sizes, sids, items, memory, hist, b, rng, n_seen) -> World:
    trie = SidTrie(level_sizes)
    trie.add(sids, items)
    con = SidConstraint.of(trie)
    seen = [list(rng.choice(items, min(n_seen, len(items)), replace=False)) for _ in range(b)]
    mask = torch.zeros(b, int(items.max()) + 1, dtype=torch.bool)
    for i, s in enumerate(seen):
        mask[i, torch.as_tensor(np.asarray(s, dtype=np.int64))] = True
    return World(model, trie, con, sids, items, memory, hist, seen, mask)


def random_world(seed: int, level_sizes=(4, 3, 3), n_items: int = 20, b: int = 3, s: int = 5,
                 d_model: int = 16, dec_layers: int = 2, session_len: int = 4, n_seen: int = 2,
                 dtype=torch.float64) -> World:
    """A randomly initialised generator (float64 by default), catalog and histories."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    cfg = GeneratorConfig(level_sizes=tuple(level_sizes), d_model=d_model, heads=2, enc_layers=1,
                          dec_layers=dec_layers, dropout=0.0, session_len=session_len, max_history=8)
    model = GenerativeRecommender(cfg).to(dtype).eval()
    with torch.no_grad():  # sharper distributions than the 0.02-std init, so decisions are not near-ties
        model.code_emb.weight.mul_(25.0)
    sids, items = catalog(rng, level_sizes, n_items)
    hs = torch.as_tensor(sids[rng.integers(0, len(sids), (b, s))])
    hist = HistoryBatch(hs, torch.ones(b, s, dtype=torch.long), torch.ones(b, s, dtype=torch.long),
                        torch.ones(b, s, dtype=torch.bool))
    with torch.no_grad():
        memory = model.encode(hist)
    return _finish(model, level_sizes, sids, items, memory, hist, b, rng, n_seen)


# ---- a bigram target with (perfect or noisy) twin heads ----------------------------------------

@dataclass(frozen=True)
class _Cfg:
    level_sizes: tuple
    session_len: int

    @property
    def sid_len(self) -> int:
        return len(self.level_sizes)

    @property
    def k_max(self) -> int:
        return max(self.level_sizes)


class BigramTarget(nn.Module):
    """Decoder protocol with logits = table[level, previous code] (row K_max = BOS)."""

    def __init__(self, level_sizes, session_len: int, table: torch.Tensor) -> None:
        super().__init__()
        self.cfg = _Cfg(tuple(level_sizes), session_len)
        D, K = len(level_sizes), max(level_sizes)
        valid = torch.arange(K)[None, :] < torch.tensor(level_sizes)[:, None]        # [D, K]
        self.register_buffer("table", table.masked_fill(~valid[:, None, :], float("-inf")))  # [D, K+1, K]
        self.dummy = nn.Parameter(torch.zeros(1, dtype=table.dtype))

    def start_cache(self, memory: Memory) -> KVCache:
        b = memory.states.shape[0]
        z = torch.zeros(b, 1, 1, 1, dtype=self.table.dtype)
        return KVCache(cross_k=[z], cross_v=[z], cross_mask=torch.ones(b, 1, dtype=torch.bool))

    def decode(self, tokens, memory, cache=None, start=0) -> DecoderOutput:
        if cache is None:
            cache = self.start_cache(memory)
        assert cache.length == start, (cache.length, start)
        b, t = tokens.shape
        cache.append(0, torch.zeros(b, 1, t, 1, dtype=self.table.dtype), torch.zeros(b, 1, t, 1, dtype=self.table.dtype))
        D, K = self.cfg.sid_len, self.cfg.k_max
        pos = torch.arange(start, start + t)
        prev = torch.where(pos[None, :] == 0, torch.full_like(tokens, K), tokens)    # [B, T]
        logits = self.table[(pos % D)[None, :].expand(b, t), prev]                   # [B, T, K]
        return DecoderOutput(logits, torch.zeros(b, t, 1, dtype=self.table.dtype), cache)

    def decode_tree(self, tokens, depth, start, cache, self_mask) -> DecoderOutput:
        """Tree verification: a bigram's logits at a node depend on its own token and position only."""
        b, t = tokens.shape
        assert self_mask.shape == (b, t, cache.length + t)
        z = torch.zeros(b, 1, t, 1, dtype=self.table.dtype)
        cache.append(0, z, z)
        D, K = self.cfg.sid_len, self.cfg.k_max
        pos = start + depth                                                            # [Q]
        prev = torch.where(pos[None, :] == 0, torch.full_like(tokens, K), tokens)
        logits = self.table[(pos % D)[None, :].expand(b, t), prev]
        return DecoderOutput(logits, torch.zeros(b, t, 1, dtype=self.table.dtype), cache)

    def encode(self, hist) -> Memory:
        b = hist.sids.shape[0]
        return Memory(torch.zeros(b, 1, 1, dtype=self.table.dtype), torch.ones(b, 1, dtype=torch.bool))


class BigramHeads(nn.Module):
    """MTP-heads protocol (``step``) drafting from a (possibly perturbed) copy of the bigram table."""

    def __init__(self, target: BigramTarget, noise: float, seed: int) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        t = target.table.clone()
        self.register_buffer("table", t + noise * torch.randn(t.shape, generator=g, dtype=t.dtype))
        self.out = nn.Linear(1, 1).to(t.dtype)   # the proposer reads the dtype from here
        self.D = target.cfg.sid_len

    def step(self, state, code, code_level):
        nxt = (int(code_level) + 1) % self.D
        return state, self.table[nxt, code]


def bigram_world(seed: int, level_sizes=(3, 3, 2), n_items: int = 14, b: int = 3, session_len: int = 4,
                 noise: float = 0.0, n_seen: int = 2, scale: float = 3.0):
    """A bigram target, twin heads with ``noise``, and a catalog."""
    rng = np.random.default_rng(seed)
    g = torch.Generator().manual_seed(seed)
    D, K = len(level_sizes), max(level_sizes)
    table = scale * torch.randn(D, K + 1, K, generator=g, dtype=torch.float64)
    model = BigramTarget(level_sizes, session_len, table).eval()
    heads = BigramHeads(model, noise, seed + 1)
    sids, items = catalog(rng, level_sizes, n_items)
    memory = Memory(torch.zeros(b, 1, 1, dtype=torch.float64), torch.ones(b, 1, dtype=torch.bool))
    return _finish(model, level_sizes, sids, items, memory, None, b, rng, n_seen), heads


def random_history(level_sizes, b: int, s: int, seed: int = 0) -> HistoryBatch:
    """``b`` full histories of ``s`` events with random codes, event types and time buckets (seeded)."""
    g = torch.Generator().manual_seed(seed)
    sids = torch.stack([torch.randint(0, k, (b, s), generator=g) for k in level_sizes], -1)
    return HistoryBatch(sids, torch.randint(1, 12, (b, s), generator=g), torch.randint(1, 16, (b, s), generator=g),
                        torch.ones(b, s, dtype=torch.bool))
