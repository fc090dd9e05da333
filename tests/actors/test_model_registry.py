"""The model registry: atomic publish (kill -9 mid-publish), refusal of damaged or foreign versions,
gate verdicts and promote/rollback, over a local directory and a pyarrow ``mock://`` filesystem."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from actors.model_registry import ModelRegistry, RegistryError
from models.generator.checkpoint import GeneratorBundle
from models.generator.model import GenerativeRecommender, GeneratorConfig

LS = (8, 8, 4)
ROOT = Path(__file__).resolve().parents[2]


def _bundle(seed=0, tokenizer_version="tok-1"):
    torch.manual_seed(seed)
    model = GenerativeRecommender(GeneratorConfig(level_sizes=LS, d_model=16, max_history=10))
    return GeneratorBundle(model, None, ("a", "b"), np.array([[0, 1, 2], [1, 2, 3]]), tokenizer_version)


@pytest.fixture(params=["local", "mock"])
def reg(request, tmp_path):
    return ModelRegistry(str(tmp_path / "reg") if request.param == "local" else "mock://reg")


def test_publish_list_load_and_lineage(reg):
    v1 = reg.publish("v1", _bundle(1), data_window={"start_ms": 0, "end_ms": 10}, metrics={"ndcg10": np.float32(0.1)})
    reg.publish("v2", _bundle(2), parent="v1")
    assert [i.version for i in reg.versions()] == ["v1", "v2"]
    assert v1.metrics["ndcg10"] == pytest.approx(0.1) and v1.level_sizes == LS and v1.parent is None
    assert reg.info("v2").parent == "v1" and reg.info("v2").tokenizer_version == "tok-1"
    got = reg.load("v2", level_sizes=LS, tokenizer_version="tok-1")
    want = _bundle(2).model.state_dict()
    assert all(torch.equal(want[k], v) for k, v in got.model.state_dict().items())
    with pytest.raises(RegistryError, match="immutable"):
        reg.publish("v1", _bundle(3))
    with pytest.raises(RegistryError, match="parent version 'nope'"):
        reg.publish("v3", _bundle(3), parent="nope")


@pytest.mark.parametrize("name", ["../v1", "a/b", "/etc/passwd", "", "x" * 65, "v 1", ".hidden"])
def test_names_cannot_point_outside_the_registry(reg, name):
    with pytest.raises(RegistryError, match="never a path"):
        reg.load(name)


def test_missing_corrupt_or_incompatible_versions_are_refused(tmp_path):
    reg = ModelRegistry(str(tmp_path / "reg"))
    reg.publish("v1", _bundle(1))
    reg.publish("v2", _bundle(2))
    reg.publish("v3", _bundle(3))
    vdir = tmp_path / "reg" / "versions"
    data = bytearray((vdir / "v1" / "weights.safetensors").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (vdir / "v1" / "weights.safetensors").write_bytes(bytes(data))
    with pytest.raises(RegistryError, match="SHA-256"):
        reg.load("v1")
    (vdir / "v2" / "config.json").unlink()
    with pytest.raises(RegistryError, match="config.json is missing"):
        reg.load("v2")
    with pytest.raises(RegistryError, match="level_sizes"):
        reg.load("v3", level_sizes=(16, 16, 8))
    with pytest.raises(RegistryError, match="retrain on this tokenizer"):
        reg.load("v3", tokenizer_version="tok-2")
    with pytest.raises(RegistryError, match="not in the registry.*genrec train"):
        reg.load("v9")


def test_gate_verdicts_promote_and_rollback(reg):
    for v in ("v1", "v2", "v3"):
        reg.publish(v, _bundle())
    assert reg.promoted() is None
    with pytest.raises(RegistryError, match="no gate verdict"):
        reg.promote("v1")
    assert reg.promote("v1", require_verdict=False) is None
    reg.set_verdict("v2", {"passed": True, "ndcg_drop": 0.01})
    reg.set_verdict("v3", {"passed": False, "reason": "validity 0.98 < 1"})
    with pytest.raises(RegistryError, match="failed its gate .*validity"):
        reg.promote("v3")
    assert reg.promote("v2") == "v1" and reg.promoted() == "v2"
    assert reg.info("v2").verdict == {"passed": True, "ndcg_drop": 0.01}
    assert reg.rollback() == "v1" and reg.promoted() == "v1"
    with pytest.raises(RegistryError, match="nothing to roll back"):
        reg.rollback()
    with pytest.raises(RegistryError, match="boolean 'passed'"):
        reg.set_verdict("v1", {"ok": 1})


_PUBLISHER = textwrap.dedent("""
    import sys, numpy as np, torch
    from actors.model_registry import ModelRegistry
    from models.generator.checkpoint import GeneratorBundle
    from models.generator.model import GenerativeRecommender, GeneratorConfig
    reg = ModelRegistry(sys.argv[1])
    torch.manual_seed(0)
    model = GenerativeRecommender(GeneratorConfig(level_sizes=(64, 64, 8), d_model=256, max_history=50))
    n = len(reg.versions())
    print("ready", flush=True)
    while True:
        reg.publish(f"v{n}", GeneratorBundle(model, None, (), None, "tok"))
        print("published", flush=True)
        n += 1
""")


def test_kill9_mid_publish_leaves_whole_versions_or_none(tmp_path):
    """A publisher killed at random moments (several times): every listed version loads, no name is
    half-published, and publishing goes on cleanly after each kill."""
    root = str(tmp_path / "reg")
    rng = random.Random(7)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for _ in range(4):
        p = subprocess.Popen([sys.executable, "-c", _PUBLISHER, root], stdout=subprocess.PIPE, env=env, cwd=ROOT)
        assert p.stdout.readline().strip() == b"ready"
        assert p.stdout.readline().strip() == b"published"   # then a kill at a random moment of later ones
        time.sleep(rng.uniform(0.0, 0.3))
        p.send_signal(signal.SIGKILL)
        p.wait()
    reg = ModelRegistry(root)
    listed = [i.version for i in reg.versions()]
    assert listed == [f"v{k}" for k in range(len(listed))] and len(listed) >= 4
    for v in listed:
        reg.load(v)
    leftovers = {p.name for p in (tmp_path / "reg" / "versions").iterdir()} - set(listed)
    assert len(leftovers) <= 1    # at most the one a kill interrupted: never listed, never loadable
    for v in leftovers:
        with pytest.raises(RegistryError, match="not in the registry"):
            reg.load(v)
    assert json.loads((tmp_path / "reg" / "versions" / listed[-1] / "meta.json").read_text())["version"] == listed[-1]


def test_a_version_folder_outside_the_registry_is_refused(tmp_path):
    """A symlink planted in versions/ that points at a folder outside the registry (holding a real, whole
    version) is neither listed nor loaded: the registry serves only folders it wrote."""
    reg = ModelRegistry(str(tmp_path / "reg"))
    reg.publish("v1", _bundle(1))
    outside = ModelRegistry(str(tmp_path / "elsewhere"))
    outside.publish("evil", _bundle(2))
    os.symlink(tmp_path / "elsewhere" / "versions" / "evil", tmp_path / "reg" / "versions" / "evil")
    assert [i.version for i in reg.versions()] == ["v1"]
    with pytest.raises(RegistryError, match="outside the registry"):
        reg.load("evil")
    with pytest.raises(RegistryError, match="outside the registry"):
        reg.promote("evil", require_verdict=False)
    assert reg.promoted() is None


def test_only_a_passing_verdict_lets_a_version_take_traffic(tmp_path):
    reg = ModelRegistry(str(tmp_path / "reg"))
    for v in ("v1", "v2", "v3"):
        reg.publish(v, _bundle())
    with pytest.raises(RegistryError, match="no gate verdict"):
        reg.require_passing("v1")
    assert reg.refused_by_gate("v1") is None               # unjudged: only promote --no-gate points at it
    reg.set_verdict("v2", {"passed": False, "reason": "ndcg failed: 0.10 < 0.19"})
    with pytest.raises(RegistryError, match="failed its gate .*ndcg failed"):
        reg.require_passing("v2")
    with pytest.raises(RegistryError, match="failed its gate"):
        reg.promote("v2", require_verdict=False)           # --no-gate waives a missing verdict, not a failed one
    assert "failed its gate" in reg.refused_by_gate("v2")
    # a hand-edited verdict whose 'passed' is not exactly true does not count as passing
    (tmp_path / "reg" / "versions" / "v3" / "verdict.json").write_text(json.dumps({"passed": "yes"}))
    with pytest.raises(RegistryError, match="failed its gate"):
        reg.promote("v3")
    reg.set_verdict("v3", {"passed": True})
    assert reg.require_passing("v3").version == "v3" and reg.promote("v3") is None


def test_artifacts_beside_versions_are_named_never_paths(tmp_path):
    reg = ModelRegistry(str(tmp_path / "reg"))
    assert reg.artifact_names("reward_models") == []
    d = reg.put_artifact("reward_models", "rm1", "config.json", b"{}")
    assert reg.read_artifact("reward_models", "rm1", "config.json") == b"{}"
    assert reg.read_artifact("reward_models", "rm1", "weights.safetensors") is None
    assert reg.artifact_names("reward_models") == ["rm1"] and d.endswith("reward_models/rm1")
    for bad in (("..", "x", "f"), ("reward_models", "../versions", "f"), ("reward_models", "x", "a/b")):
        with pytest.raises(RegistryError):
            reg.put_artifact(*bad, b"")
    assert not (tmp_path / "versions").exists() and reg.versions() == []
