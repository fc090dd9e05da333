"""A tiny trained generator on a small synthetic world: the base model of the alignment-loop tests.

Content embeddings are each item's true topic mixture plus a little noise (no text encoder), SIDs two
levels of eight codes, and a one-layer encoder–decoder trained for a few epochs without validation.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from actors.train_job import Interactions, fit_tokenizer, interactions_from_records
from ingest.synthetic import SyntheticWorld, WorldConfig
from models.generator.checkpoint import GeneratorBundle
from models.generator.model import GeneratorConfig
from models.generator.training import TrainConfig, fit_generator


@dataclass
class TinyBase:
    world: SyntheticWorld
    data: Interactions
    content: np.ndarray      # [n_items, n_topics] item embeddings the SIDs were fitted on
    tokenizer: object
    sids: np.ndarray         # [n_items, 2]
    bundle: GeneratorBundle | None = None


def tiny_world(n_users: int, n_items: int, seed: int = 0) -> TinyBase:
    """The world, its interactions, content embeddings and a fitted two-level SID tokenizer."""
    world = SyntheticWorld(WorldConfig.small(seed=seed, n_users=n_users, n_items=n_items))
    ds = world.dataset()
    data = interactions_from_records("synthetic", ds.user_events, ds.item_events)
    content = np.stack([world.item_topics(str(i)) for i in data.split.item_ids]).astype(np.float32)
    content += 0.05 * np.random.default_rng(0).standard_normal(content.shape).astype(np.float32)
    tok, sids = fit_tokenizer(content, levels=2, codebook_size=8)
    return TinyBase(world, data, content, tok, sids)


def tiny_base(n_users: int, n_items: int, *, d_model: int = 32, epochs: int = 2, seed: int = 0) -> TinyBase:
    """:func:`tiny_world` plus a generator trained on its train+valid part, as a registry bundle."""
    tb = tiny_world(n_users, n_items, seed)
    gcfg = GeneratorConfig(level_sizes=tuple(int(x) for x in tb.tokenizer.sid_level_sizes), d_model=d_model,
                           heads=2, enc_layers=1, dec_layers=1, dropout=0.1, max_history=20, session_len=3)
    tv = tb.data.split.train_valid()
    model, _ = fit_generator(tv.items, tb.sids, gcfg, TrainConfig(epochs=epochs, batch_size=64, lr=3e-3, patience=0,
                                                                  eval_every=100, progress=False),
                             types=tv.types, ts=tv.ts, validate=False, item_emb=tb.content)
    tb.bundle = GeneratorBundle(model, None, tuple(str(i) for i in tb.data.split.item_ids), tb.sids,
                                tb.tokenizer.version, b"")
    return tb
