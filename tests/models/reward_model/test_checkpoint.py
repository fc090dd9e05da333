"""Reward model bytes: safetensors + JSON round trip, refusal of corrupt or foreign blobs."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from models.evaluation.ranker import Histories
from models.reward_model.checkpoint import RewardCheckpointError, decode, encode
from models.reward_model.model import RewardModel, RewardModelConfig
from models.reward_model.scorer import RewardModelScorer

torch.set_num_threads(1)


def _model() -> RewardModel:
    torch.manual_seed(0)
    sids = np.stack([np.arange(20) % 5, np.arange(20) // 5 % 4, np.arange(20) % 2], 1)
    cfg = RewardModelConfig(n_items=20, level_sizes=(5, 4, 2), d_model=16, value_weights={"click": 1.0, "skip": -1.0})
    return RewardModel(cfg, sids).eval()


def test_round_trip_gives_the_same_scores():
    m = _model()
    weights, config = encode(m, metadata={"window": [1, 2], "auc": np.float32(0.7)})
    assert b"__reduce__" not in weights and json.loads(config)["format"] == "genrec-reward-model"
    m2, meta = decode(weights, config)
    assert meta["window"] == [1, 2] and abs(meta["auc"] - 0.7) < 1e-6
    assert m2.cfg == m.cfg
    torch.testing.assert_close(m2.item_sids, m.item_sids)
    hist = Histories([np.array([1, 2, 3]), np.array([], np.int64)])
    sess = np.array([[[1, 2, -1], [4, 5, 6]], [[7, -1, -1], [8, 9, 10]]])
    np.testing.assert_allclose(RewardModelScorer(m2).score(hist, sess), RewardModelScorer(m).score(hist, sess))


def test_corrupt_or_foreign_blobs_are_refused():
    weights, config = encode(_model())
    with pytest.raises(RewardCheckpointError, match="not a valid safetensors file"):
        decode(weights[:40], config)
    with pytest.raises(RewardCheckpointError, match="not a genrec reward model config"):
        decode(weights, json.dumps({"format": "genrec-generator"}).encode())
    bad = json.loads(config)
    bad["format_version"] = 99
    with pytest.raises(RewardCheckpointError, match="retrain the reward model"):
        decode(weights, json.dumps(bad).encode())
    bad = json.loads(config)
    bad["model"]["d_model"] = 32
    with pytest.raises(RewardCheckpointError, match="do not fit together"):
        decode(weights, json.dumps(bad).encode())


def test_item_lengths_travel_with_the_model_and_old_files_load_without():
    m = _model()
    m.set_item_lengths(np.arange(20) * 10_000.0)
    weights, config = encode(m)
    m2, _ = decode(weights, config)
    torch.testing.assert_close(m2.item_minutes, m.item_minutes)
    hist = Histories([np.array([1, 2, 3])])
    sess = np.array([[[1, 2, -1], [4, 5, 6]]])
    np.testing.assert_allclose(RewardModelScorer(m2).score(hist, sess), RewardModelScorer(m).score(hist, sess))
    # a file written before item lengths existed: no lengths known (1 minute each)
    from safetensors.torch import load as st_load, save as st_save

    t = {k: v for k, v in st_load(weights).items() if not k.endswith("item_minutes")}
    m3, _ = decode(st_save(t), config)
    assert m3.item_minutes.numel() == 0 and float(m3.minutes(torch.tensor([3]))) == 1.0

