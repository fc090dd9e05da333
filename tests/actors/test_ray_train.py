"""Training through Ray Train (actors/ray_train.py): the shared runner, and ``genrec train``'s generator on it.

Checks: the config refuses bad values with the fix; the generator trained through Ray Train with one
worker (its weights back from rank 0's safetensors checkpoint, Ray Train's run folder removed) reaches the
quality of in-process training with the same seed (on CPU with one thread per process the two runs are
the same arithmetic, so the metrics agree to rounding); two
data-parallel workers (DDP over gloo) run the same number of steps, agree on early stopping and give a
model of comparable quality.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from actors.ray_train import RayTrainConfig
from actors.train_job import TrainJobConfig, load_generator, run_train_job
from models.generator.training import TrainConfig
from tiny_generator import tiny_world

torch.set_num_threads(1)


def test_config_refuses_bad_values_with_the_fix():
    for kw in ({"num_workers": 0}, {"cpus_per_worker": 0}, {"num_workers": 1.5}, {"num_workers": True}):
        with pytest.raises(ValueError, match="must be an int >= 1"):
            RayTrainConfig(**kw)
    with pytest.raises(ValueError, match="true or false"):
        RayTrainConfig(use_gpu="yes")
    assert RayTrainConfig().num_workers == 1
    from actors.aligner import RayTrainConfig as FromAligner   # the aligner's callers keep their import

    assert FromAligner is RayTrainConfig


# ---- the generator (genrec train's path) -------------------------------------------------------

@pytest.fixture(scope="module")
def small():
    tb = tiny_world(120, 150)
    return tb.data, tb.content, tb.tokenizer, tb.sids


def _job(small, tmp_path, name: str, ray_train, **train):
    data, content, tok, sids = small
    cfg = TrainJobConfig(
        out=str(tmp_path / f"{name}.safetensors"),
        generator=dict(d_model=32, heads=2, enc_layers=1, dec_layers=1, dropout=0.1, max_history=20, session_len=2),
        train=TrainConfig(**{"epochs": 3, "batch_size": 64, "lr": 3e-3, "patience": 2, "val_max_users": 60,
                             "val_beam": 10, "seed": 0, "progress": False, **train}),
        eval_beam=10, eval_max_users=80)
    return run_train_job(cfg, data=data, tokenizer=tok, item_sids=sids, item_emb=content, say=lambda _: None,
                         ray_train=ray_train)


def test_generator_through_ray_train_matches_in_process(small, local_ray, tmp_path, monkeypatch):
    import tempfile

    runs = tmp_path / "tmp"
    runs.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(runs))          # where the runner's temporary run folder goes
    inproc = _job(small, tmp_path, "inproc", None)
    ray1 = _job(small, tmp_path, "ray1", RayTrainConfig(num_workers=1))
    assert not [p for p in os.listdir(runs) if p.startswith("genrec-ray-train-")]   # Ray Train's folder removed
    a, b = inproc.report, ray1.report
    assert b.epochs_run == a.epochs_run and b.steps == a.steps and b.n_train_examples == a.n_train_examples
    np.testing.assert_allclose(b.train_loss, a.train_loss, rtol=1e-4)
    np.testing.assert_allclose(b.val_ndcg10, a.val_ndcg10, atol=1e-3)
    ta, tb = inproc.metrics["test"], ray1.metrics["test"]
    assert abs(ta["ndcg10"] - tb["ndcg10"]) <= 0.02 and abs(ta["hr10"] - tb["hr10"]) <= 0.03, (ta, tb)
    assert tb["invalid_rate"] == 0.0
    loaded = load_generator(ray1.path)                      # --out written by the driver, safetensors + JSON
    assert loaded.metrics["test"] == tb and loaded.config == ray1.model.cfg
    assert ray1.metrics["trainer"] == "ray-train x1" and inproc.metrics["trainer"] == "in-process"


@pytest.mark.slow
def test_generator_on_two_data_parallel_workers(small, local_ray, tmp_path):
    ray2 = _job(small, tmp_path, "ray2", RayTrainConfig(num_workers=2), epochs=2)
    rep = ray2.report
    data = small[0]
    # each worker trains on its half of the users; every worker ran the same steps (rank 0's report)
    assert rep.epochs_run == 2 and rep.steps > 0 and len(rep.val_ndcg10) == 2
    assert 0 < rep.n_train_examples < sum(len(s) for s in data.split.train_valid().items)
    assert ray2.metrics["test"]["invalid_rate"] == 0.0 and ray2.metrics["test"]["hr10"] > 0.0
    assert np.isfinite(rep.train_loss).all() and rep.train_loss[-1] < rep.train_loss[0]
