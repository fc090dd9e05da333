"""The safetensors + JSON model format round-trips and refuses what does not fit."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from models.generator.checkpoint import CheckpointError, GeneratorBundle, decode, encode
from models.generator.model import GenerativeRecommender, GeneratorConfig
from models.generator.mtp import MTPConfig, MTPHeads

LS = (8, 8, 4)


def _bundle(with_heads=True, n_items=5):
    torch.manual_seed(0)
    model = GenerativeRecommender(GeneratorConfig(level_sizes=LS, d_model=16, max_history=10)).eval()
    heads = MTPHeads(MTPConfig(LS, 16, horizon=2)).init_from_generator(model) if with_heads else None
    sids = np.arange(n_items * len(LS)).reshape(n_items, len(LS)) % 4
    return GeneratorBundle(model, heads, tuple(f"i{k}" for k in range(n_items)), sids, "tok-1", b"\x00tok\xff")


def test_round_trip_keeps_weights_heads_catalog_and_tokenizer():
    b = _bundle()
    weights, config = encode(b)
    assert weights[:8] != b"PK\x03\x04\x00\x00\x00\x00"     # not a torch zip/pickle
    got = decode(weights, config)
    for (k, v), (k2, v2) in zip(b.model.state_dict().items(), got.model.state_dict().items()):
        assert k == k2 and torch.equal(v, v2)
    assert got.mtp_heads is not None and got.mtp_heads.cfg == b.mtp_heads.cfg
    for v, v2 in zip(b.mtp_heads.state_dict().values(), got.mtp_heads.state_dict().values()):
        assert torch.equal(v, v2)
    assert got.item_ids == b.item_ids and np.array_equal(got.item_sids, b.item_sids)
    assert got.tokenizer == b.tokenizer and got.tokenizer_version == "tok-1"
    assert not got.model.training


def test_without_heads_or_catalog():
    b = GeneratorBundle(_bundle(with_heads=False).model)
    got = decode(*encode(b))
    assert got.mtp_heads is None and got.item_ids == () and got.item_sids is None and got.tokenizer == b""


def test_bad_bytes_and_mismatches_are_refused_with_the_fix():
    weights, config = encode(_bundle())
    with pytest.raises(CheckpointError, match="safetensors"):
        decode(weights[:100], config)
    with pytest.raises(CheckpointError, match="not JSON"):
        decode(weights, b"\x80not json")
    cfg = json.loads(config)
    with pytest.raises(CheckpointError, match="format_version"):
        decode(weights, json.dumps({**cfg, "format_version": 99}).encode())
    with pytest.raises(CheckpointError, match="not a genrec generator"):
        decode(weights, json.dumps({**cfg, "format": "other"}).encode())
    bigger = {**cfg, "generator": {**cfg["generator"], "d_model": 32}}
    with pytest.raises(CheckpointError, match="do not fit"):
        decode(weights, json.dumps(bigger).encode())
    with pytest.raises(CheckpointError, match="item_sids"):
        encode(GeneratorBundle(_bundle().model, None, ("a",), np.zeros((2, 3), np.int64)))
