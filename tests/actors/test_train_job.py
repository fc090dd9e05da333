"""The training job and its model file: end to end through `genrec train`, and corrupt files."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from actors.train_job import GeneratorFileError, load_generator, save_generator
from models.generator.model import GenerativeRecommender, GeneratorConfig, HistoryBatch

torch.set_num_threads(1)


def test_genrec_train_end_to_end(tmp_path, capsys):
    from infra.cli import main

    out = tmp_path / "gen.pt"
    rc = main(["train", "--data", "synthetic-small", "--max-events", "4000", "--embeddings", "collab",
               "--d-model", "32", "--layers", "1", "--epochs", "2", "--session-len", "2", "--max-history", "20",
               "--no-progress", "--threads", "1", "--out", str(out), "--json", "--no-ray"])
    assert rc == 0 and out.is_file()
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    loaded = load_generator(out)
    m = loaded.metrics
    assert m["test"]["invalid_rate"] == 0.0
    assert 0.0 <= m["test"]["ndcg10"] <= m["test"]["hr10"] <= 1.0
    assert m["test"]["test_users"] > 0 and m["train"]["epochs_run"] == 2
    assert printed["test"] == m["test"]
    assert loaded.tokenizer_version.startswith("rq_kmeans-")
    assert loaded.config.level_sizes == tuple(m["level_sizes"])
    assert len(loaded.item_ids) == len(loaded.item_sids)
    # the SIDs are unique and the tokenizer in the file is the one that made them
    assert len(np.unique(loaded.item_sids, axis=0)) == len(loaded.item_sids)
    from models.sid.tokenizer import tokenizer_from_bytes

    assert tokenizer_from_bytes(loaded.tokenizer_bytes).version == loaded.tokenizer_version
    # the loaded model ranks without invalid items
    from models.evaluation.ranker import Histories

    ranked = loaded.ranker(beam_width=10).rank(Histories([np.array([0, 1, 2]), np.array([], np.int64)]), 10)
    assert ((ranked >= 0) & (ranked < len(loaded.item_ids))).all()


def _tiny_model() -> GenerativeRecommender:
    torch.manual_seed(0)
    return GenerativeRecommender(GeneratorConfig(level_sizes=(3, 3, 2), d_model=16, heads=2, enc_layers=1,
                                                 dec_layers=1))


def test_save_load_roundtrip(tmp_path):
    model = _tiny_model().eval()
    sids = np.array([[0, 0, 0], [0, 1, 0], [2, 2, 1]])
    path = save_generator(tmp_path / "m.pt", model, ["a", "b", "c"], sids, "rq_kmeans-x", {"ndcg10": np.float32(0.5)})
    loaded = load_generator(path)
    assert loaded.item_ids == ["a", "b", "c"] and np.array_equal(loaded.item_sids, sids)
    assert loaded.metrics == {"ndcg10": 0.5} and loaded.tokenizer_version == "rq_kmeans-x"
    h = HistoryBatch(torch.tensor([[[0, 1, 0]]]), torch.tensor([[2]]), torch.tensor([[1]]), torch.tensor([[True]]))
    t = torch.tensor([[[2, 2, 1]]])
    a, b = model(h, t).logits, loaded.model(h, t).logits
    assert torch.equal(torch.isfinite(a), torch.isfinite(b)) and torch.allclose(a[torch.isfinite(a)], b[torch.isfinite(b)])
    assert not list(tmp_path.glob("*.tmp"))          # atomic write leaves no temp file


def _resave(src, dst, **meta_changes):
    """``src``'s tensors under ``dst`` with its safetensors metadata changed."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(src), "pt") as f:
        meta = dict(f.metadata())
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    meta.update(meta_changes)
    save_file(tensors, str(dst), metadata=meta)


def test_corrupt_model_files_are_clear_errors(tmp_path):
    good = save_generator(tmp_path / "good.safetensors", _tiny_model(), ["a"], np.array([[0, 0, 0]]), "v", {})
    data = good.read_bytes()
    (tmp_path / "trunc.safetensors").write_bytes(data[: len(data) // 2])
    (tmp_path / "noise.safetensors").write_bytes(np.random.default_rng(0).bytes(4096))
    from safetensors.torch import save_file

    save_file({"weights": torch.zeros(3)}, str(tmp_path / "foreign.safetensors"))
    cfg = json.loads(_meta(good)["config"])
    cfg["generator"]["d_model"] = 32
    _resave(good, tmp_path / "mismatch.safetensors", config=json.dumps(cfg))
    _resave(good, tmp_path / "future.safetensors", format_version="99")
    cases = {"trunc": "corrupt", "noise": "corrupt", "foreign": "not a genrec generator",
             "mismatch": "inconsistent", "future": "format_version", "missing": "does not exist"}
    for name, match in cases.items():
        with pytest.raises(GeneratorFileError, match=match):
            load_generator(tmp_path / f"{name}.safetensors")
    assert issubclass(GeneratorFileError, ValueError)   # the CLI turns it into a one-line error


def _meta(path) -> dict:
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        return dict(f.metadata())


def test_model_file_is_safetensors_with_json_config(tmp_path):
    from safetensors.torch import load_file

    path = save_generator(tmp_path / "m.safetensors", _tiny_model(), ["a", "b"], np.array([[0, 0, 0], [1, 2, 1]]),
                          "rq_kmeans-x", {"test": {"ndcg10": 0.25}}, b"tok")
    meta = _meta(path)
    assert meta["format"] == "genrec-generator-file"
    assert json.loads(meta["config"])["item_ids"] == ["a", "b"] and json.loads(meta["metrics"])["test"]["ndcg10"] == 0.25
    tensors = load_file(str(path))                     # any safetensors reader opens it
    assert tensors["catalog.item_sids"].tolist() == [[0, 0, 0], [1, 2, 1]] and bytes(tensors["catalog.tokenizer"].numpy()) == b"tok"
    assert any(k.startswith("generator.") for k in tensors)


class _Boom:
    """A pickle that runs code when unpickled (writes a file)."""

    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (open, (self.target, "w"))


def test_pickle_model_files_are_refused_unread(tmp_path):
    # the format genrec wrote before (torch.save of a dict) and a hostile pickle: both refused, neither unpickled
    torch.save({"format": "genrec-generator", "format_version": 1, "config": {}, "state_dict": {}},
               tmp_path / "old.pt")
    import pickle

    planted = tmp_path / "planted"
    (tmp_path / "evil.pt").write_bytes(pickle.dumps(_Boom(str(planted))))
    for name in ("old.pt", "evil.pt"):
        with pytest.raises(GeneratorFileError, match=r"pickle.*Retrain it with `genrec train --out .*\.safetensors`"):
            load_generator(tmp_path / name)
    assert not planted.exists()


def test_cli_trains_through_ray_train_by_default(monkeypatch, tmp_path):
    import actors.train_job as tj
    from actors.ray_train import RayTrainConfig
    from infra.cli import main

    seen = []

    def run_train_job(cfg, **kw):                      # records how the CLI asked for training, trains nothing
        seen.append(kw.get("ray_train"))
        raise SystemExit(0)

    monkeypatch.setattr(tj, "run_train_job", run_train_job)
    base = ["train", "--data", "synthetic-small", "--threads", "1", "--out", str(tmp_path / "m.safetensors")]
    for extra, want in (([], RayTrainConfig(num_workers=1)), (["--ray-workers", "3"], RayTrainConfig(num_workers=3)),
                        (["--no-ray"], None), (["--ray-workers", "0"], None)):
        with pytest.raises(SystemExit):
            main(base + extra)
        assert seen[-1] == want, extra
    if not torch.cuda.is_available():
        monkeypatch.delenv("RAY_ADDRESS", raising=False)
        assert main(base + ["--gpu"]) != 0             # a clear one-line error, no hang waiting for a GPU
