"""The training job and its model file: end to end through `genrec train`, and corrupt files."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from actors.train_job import GeneratorFileError, load_generator, save_generator
from models.generator import GenerativeRecommender, GeneratorConfig, HistoryBatch

torch.set_num_threads(1)


def test_genrec_train_end_to_end(tmp_path, capsys):
    from infra.cli import main

    out = tmp_path / "gen.pt"
    rc = main(["train", "--data", "synthetic-small", "--max-events", "4000", "--embeddings", "collab",
               "--d-model", "32", "--layers", "1", "--epochs", "2", "--session-len", "2", "--max-history", "20",
               "--no-progress", "--threads", "1", "--out", str(out), "--json"])
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
    from models.tokenizer import tokenizer_from_bytes

    assert tokenizer_from_bytes(loaded.tokenizer_bytes).version == loaded.tokenizer_version
    # the loaded model ranks without invalid items
    from models.ranker import Histories

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


def test_corrupt_model_files_are_clear_errors(tmp_path):
    good = save_generator(tmp_path / "good.pt", _tiny_model(), ["a"], np.array([[0, 0, 0]]), "v", {})
    data = good.read_bytes()
    (tmp_path / "trunc.pt").write_bytes(data[: len(data) // 2])
    (tmp_path / "noise.pt").write_bytes(np.random.default_rng(0).bytes(4096))
    torch.save({"weights": torch.zeros(3)}, tmp_path / "foreign.pt")
    payload = torch.load(good, weights_only=True)
    payload["config"]["d_model"] = 32
    torch.save(payload, tmp_path / "mismatch.pt")
    payload["format_version"] = 99
    torch.save(payload, tmp_path / "future.pt")
    cases = {"trunc.pt": "corrupt", "noise.pt": "corrupt", "foreign.pt": "not a genrec generator",
             "mismatch.pt": "inconsistent", "future.pt": "format_version", "missing.pt": "does not exist"}
    for name, match in cases.items():
        with pytest.raises(GeneratorFileError, match=match):
            load_generator(tmp_path / name)
    assert issubclass(GeneratorFileError, ValueError)   # the CLI turns it into a one-line error
