"""`genrec train --registry` publishes a version; `genrec models` lists, shows, promotes and rolls back."""

from __future__ import annotations

import json

import numpy as np


def _run(capsys, *argv) -> tuple[int, str, str]:
    from infra.cli import main

    rc = main(list(argv))
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_train_publishes_and_models_promotes_and_rolls_back(tmp_path, capsys):
    from actors.model_registry import ModelRegistry
    from models.sid.tokenizer import tokenizer_from_bytes

    reg = str(tmp_path / "registry")
    rc, out, _ = _run(capsys, "models", "--registry", reg, "list")
    assert rc == 0 and "no versions" in out and "genrec train --registry" in out
    small = ["train", "--data", "synthetic-small", "--max-events", "3000", "--embeddings", "collab", "--d-model", "16",
             "--layers", "1", "--epochs", "1", "--session-len", "2", "--max-history", "10", "--no-progress",
             "--threads", "1", "--out", str(tmp_path / "gen.pt"), "--registry", reg, "--no-ray"]
    rc, out, _ = _run(capsys, *small, "--version", "v1")
    assert rc == 0 and "published v1" in out
    assert _run(capsys, *small, "--version", "v2", "--parent", "v1")[0] == 0

    bundle = ModelRegistry(reg).load("v1")
    assert len(bundle.item_ids) == len(bundle.item_sids) > 0
    assert len(np.unique(bundle.item_sids, axis=0)) == len(bundle.item_sids)
    assert tokenizer_from_bytes(bundle.tokenizer).version == bundle.tokenizer_version

    rc, out, _ = _run(capsys, "models", "--registry", reg, "--json", "list")
    listed = json.loads(out)
    assert listed["promoted"] is None and [v["version"] for v in listed["versions"]] == ["v1", "v2"]
    assert listed["versions"][1]["parent"] == "v1" and listed["versions"][0]["metrics"]["test"]["invalid_rate"] == 0
    rc, _, err = _run(capsys, "models", "--registry", reg, "promote", "v1")
    assert rc == 2 and "no gate verdict" in err
    assert _run(capsys, "models", "--registry", reg, "promote", "v1", "--no-gate")[0] == 0
    rc, out, _ = _run(capsys, "models", "--registry", reg, "promote", "v2", "--no-gate")
    assert rc == 0 and "previous: v1" in out
    rc, out, _ = _run(capsys, "models", "--registry", reg, "list")
    assert "* v2" in out and "  v1" in out
    assert "rolled back to v1" in _run(capsys, "models", "--registry", reg, "rollback")[1]
    show = json.loads(_run(capsys, "models", "--registry", reg, "show", "v1")[1])
    assert show["promoted"] and show["tokenizer_version"] == bundle.tokenizer_version
    rc, _, err = _run(capsys, "models", "--registry", reg, "show", "../v1")
    assert rc == 2 and "never a path" in err


def test_models_gate_judges_stores_and_blocks_promotion(tmp_path, capsys):
    """`genrec models gate`: a randomly initialised candidate fails (exit 1, a table of checks, promote refused);
    the parent's own weights under a new name pass (--json, the stored verdict)."""
    import torch

    from actors.model_registry import ModelRegistry
    from models.generator.checkpoint import GeneratorBundle
    from models.generator.model import GenerativeRecommender

    reg = str(tmp_path / "registry")
    data = ["--data", "synthetic-small", "--max-events", "3000"]
    rc, out, _ = _run(capsys, "train", *data, "--embeddings", "collab", "--d-model", "16", "--layers", "1",
                      "--epochs", "2", "--session-len", "2", "--max-history", "10", "--no-progress", "--threads", "1",
                      "--out", str(tmp_path / "gen.pt"), "--registry", reg, "--version", "v1", "--no-ray")
    assert rc == 0, out
    registry = ModelRegistry(reg)
    parent = registry.load("v1")
    torch.manual_seed(5)
    registry.publish("rand", GeneratorBundle(GenerativeRecommender(parent.model.cfg), None, parent.item_ids,
                                             parent.item_sids, parent.tokenizer_version, parent.tokenizer),
                     parent="v1")
    registry.publish("copy", GeneratorBundle(parent.model, None, parent.item_ids, parent.item_sids,
                                             parent.tokenizer_version, parent.tokenizer), parent="v1")
    gate = ["models", "--registry", reg, "gate"]
    small = [*data, "--max-users", "150", "--canary-users", "100"]
    rc, out, _ = _run(capsys, *gate, "rand", *small)
    assert rc == 1 and "ndcg" in out and "FAIL" in out and "verdict: FAILED" in out, out
    assert "cannot be promoted" in out and "canary_mean_reward" in out
    rc, _, err = _run(capsys, "models", "--registry", reg, "promote", "rand")
    assert rc == 2 and "failed its gate" in err
    rc, out, _ = _run(capsys, *gate, "copy", *small, "--json")
    verdict = json.loads(out.strip().splitlines()[-1])
    assert rc == 0 and verdict["passed"] and verdict["parent"] == "v1", verdict["reason"]
    assert {c["name"] for c in verdict["checks"]} >= {"ndcg", "validity", "coverage", "canary_mean_reward"}
    listed = _run(capsys, "models", "--registry", reg, "list")[1]
    assert "copy" in listed and "passed" in listed and "FAILED" in listed
    assert _run(capsys, "models", "--registry", reg, "promote", "copy")[0] == 0
    rc, _, err = _run(capsys, *gate, "v1", "--parent", "v1", *small)
    assert rc == 2 and "no parent to be judged against" in err
