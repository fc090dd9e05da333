"""Gated rollout over real sockets: two colocated replicas serve the registry's promoted version, follow its
pointer without a restart, never serve a version that failed its gate (or that the registry refuses), and a
rollback brings the previous version back on every replica."""

from __future__ import annotations

import json
import os
import time
import uuid
from pathlib import Path

import httpx
import pytest

from tests.serving.conftest import ADMIN_TOKEN, LEVEL_SIZES

AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}

EXPERIMENTS = """
default: {model_version: p1, decode: {mode: greedy}}
layers:
  - name: models
    salt: rollout-1
    experiments:
      - name: cand-ab
        traffic: 0.5
        arms:
          - {name: control, weight: 1}
          - {name: cand, weight: 1}
"""

POLL_S = 0.5
APP_OVERRIDES = {"serving": {"experiments": EXPERIMENTS, "num_replicas": 2},
                 "recommender": {"models": [], "promoted_poll_s": POLL_S}}   # [] = the promoted version


def _verdict(ndcg: float) -> dict:
    from models.evaluation.gate import GateConfig, gate_verdict

    parent = {"ndcg@10": 0.2, "coverage@10": 0.5, "validity": 1.0}
    return gate_verdict({**parent, "ndcg@10": ndcg}, parent, None, GateConfig(require_canary=False)).to_dict()


def prepare_registry(uri: str) -> None:
    """p1 promoted (a first version, --no-gate); good passed its gate; bad failed it; broken passed but its
    weights were damaged afterwards; othertok passed but was trained with another tokenizer."""
    import torch

    from actors.model_registry import ModelRegistry
    from models.generator.checkpoint import GeneratorBundle
    from models.generator.model import GenerativeRecommender, GeneratorConfig

    reg = ModelRegistry(uri)
    for seed, (name, tok) in enumerate((("p1", "tok-1"), ("good", "tok-1"), ("bad", "tok-1"),
                                        ("broken", "tok-1"), ("othertok", "tok-2"))):
        torch.manual_seed(seed)
        model = GenerativeRecommender(GeneratorConfig(level_sizes=LEVEL_SIZES, d_model=32, max_history=20))
        reg.publish(name, GeneratorBundle(model, tokenizer_version=tok), parent=None if name == "p1" else "p1")
    reg.promote("p1", require_verdict=False)
    for name in ("good", "broken", "othertok"):
        reg.set_verdict(name, _verdict(0.2))
    reg.set_verdict("bad", _verdict(0.05))
    weights = Path(uri) / "versions" / "broken" / "weights.safetensors"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF
    weights.write_bytes(bytes(data))


@pytest.fixture(scope="module")
def replicas(serve_app) -> list[str]:
    """The direct URL of each of the two ingress replicas."""
    from serving.direct_ingress import ingress_urls

    deadline = time.monotonic() + 60
    while len(urls := ingress_urls("genrec", "127.0.0.1")) < 2:
        assert time.monotonic() < deadline, f"two ingress replicas expected, got {urls}"
        time.sleep(0.2)
    return sorted(urls)


def _versions_served(url: str, n: int = 6, prefix: str = "u") -> set[str]:
    with httpx.Client(base_url=url, timeout=60) as c:
        out = set()
        for i in range(n):
            r = c.post("/v1/recommend", json={"user_id": f"{prefix}-{uuid.uuid4().hex[:6]}-{i}", "k": 3})
            assert r.status_code == 200, r.text
            out.add(r.json()["model_version"])
        return out


def _default_everywhere(replicas: list[str], version: str, timeout_s: float = 30) -> None:
    """Wait until every replica's users outside model arms get ``version``."""
    deadline = time.monotonic() + timeout_s
    for url in replicas:
        while True:
            st = httpx.get(url + "/v1/admin/models", headers=AUTH, timeout=30).json()
            if st["default_model_version"] == version and (st["promoted"] or {}).get("version") == version:
                break
            assert time.monotonic() < deadline, f"{url} still serves {st}"
            time.sleep(0.2)


def _point(registry: str, version: str, history: list[str]) -> None:
    """Set the promoted pointer by hand (what a broken tool or an attacker with file access could do)."""
    Path(registry, "promoted.json").write_text(json.dumps({"version": version, "history": history}))


def test_every_replica_serves_the_promoted_version(serve_app, replicas):
    for url in replicas:
        assert _versions_served(url) == {"p1"}
        st = httpx.get(url + "/v1/admin/models", headers=AUTH, timeout=30).json()
        assert st["promoted"]["version"] == "p1" and st["default_model_version"] == "p1"
    assert httpx.get(replicas[0] + "/v1/admin/models", timeout=30).status_code == 401


def test_a_candidate_that_failed_its_gate_never_receives_traffic(serve_app, replicas):
    from actors.model_registry import ModelRegistry

    reg = ModelRegistry(serve_app.registry)
    with httpx.Client(base_url=serve_app.url, timeout=60) as c:
        r = c.post("/v1/admin/models/promote", json={"model_version": "bad"}, headers=AUTH)
        assert r.status_code == 409 and "failed its gate" in r.text and "ndcg failed" in r.text, r.text
        r = c.post("/v1/admin/experiments/cand-ab/arms/cand", json={"model_version": "bad"}, headers=AUTH)
        assert r.status_code == 409 and "failed its gate" in r.text
        r = c.post("/v1/admin/models/load", json={"model_version": "bad"}, headers=AUTH)
        assert r.status_code == 400 and "failed its gate" in r.text
        bad_arm = EXPERIMENTS.replace("{name: cand, weight: 1}", "{name: cand, weight: 1, model_version: bad}")
        r = c.post("/v1/admin/experiments/reload", json={"yaml": bad_arm}, headers=AUTH)
        assert r.status_code == 400 and "arm cand-ab/cand names model version 'bad' failed its gate" in r.text
    assert reg.promoted() == "p1"
    # even a pointer set by hand to the failed version: every replica refuses it and keeps p1
    _point(serve_app.registry, "bad", ["p1"])
    try:
        deadline = time.monotonic() + 20
        for url in replicas:
            while (st := httpx.get(url + "/v1/admin/models", headers=AUTH, timeout=30).json())["promoted"][
                    "failures"] < 1:
                assert time.monotonic() < deadline, st
                time.sleep(0.2)
            assert "failed its gate" in st["promoted"]["last_error"] and "bad" not in st["models"]
        time.sleep(3 * POLL_S)
        for url in replicas:
            assert _versions_served(url, 8, "gate") == {"p1"}
    finally:
        _point(serve_app.registry, "p1", [])


def test_bad_registry_entries_are_refused_and_serving_keeps_its_version(serve_app, replicas, tmp_path):
    from actors.model_registry import ModelRegistry
    from models.generator.checkpoint import GeneratorBundle
    from models.generator.model import GenerativeRecommender, GeneratorConfig

    with httpx.Client(base_url=serve_app.url, timeout=60) as c:
        r = c.post("/v1/admin/models/promote", json={"model_version": "broken"}, headers=AUTH)
        assert r.status_code == 400 and "SHA-256" in r.text and "keeps its version" in r.text, r.text
        r = c.post("/v1/admin/models/promote", json={"model_version": "othertok"}, headers=AUTH)
        assert r.status_code == 409 and "tokenizer 'tok-2'" in r.text, r.text
        # a version folder that is a symlink to a whole version outside the registry
        outside = ModelRegistry(str(tmp_path / "elsewhere"))
        outside.publish("evil", GeneratorBundle(GenerativeRecommender(GeneratorConfig(
            level_sizes=LEVEL_SIZES, d_model=32, max_history=20)), tokenizer_version="tok-1"))
        outside.set_verdict("evil", {"passed": True})
        os.symlink(tmp_path / "elsewhere" / "versions" / "evil", Path(serve_app.registry) / "versions" / "evil")
        r = c.post("/v1/admin/models/promote", json={"model_version": "evil"}, headers=AUTH)
        assert r.status_code == 400 and "outside the registry" in r.text, r.text
    assert ModelRegistry(serve_app.registry).promoted() == "p1"
    # the same entries named by the pointer directly: each refused by every replica's follower, p1 stays
    for target, why in (("broken", "SHA-256"), ("othertok", "tokenizer"), ("evil", "outside the registry"),
                        ("../p1", "never a path")):
        before = {u: httpx.get(u + "/v1/admin/models", headers=AUTH, timeout=30).json()["promoted"]["failures"]
                  for u in replicas}
        _point(serve_app.registry, target, ["p1"])
        try:
            deadline = time.monotonic() + 20
            for url in replicas:
                while True:
                    st = httpx.get(url + "/v1/admin/models", headers=AUTH, timeout=30).json()
                    if st["promoted"]["failures"] > before[url]:
                        break
                    assert time.monotonic() < deadline, (target, st)
                    time.sleep(0.2)
                assert why in st["promoted"]["last_error"], (target, st["promoted"]["last_error"])
                assert st["promoted"]["version"] == "p1" and st["default_model_version"] == "p1"
                assert _versions_served(url, 3, f"bad-{target[-3:]}") == {"p1"}
        finally:
            _point(serve_app.registry, "p1", [])


def test_a_passing_candidate_enters_an_arm_then_every_replica_and_rollback_restores(serve_app, replicas):
    from actors.model_registry import ModelRegistry

    with httpx.Client(base_url=serve_app.url, timeout=60) as c:
        r = c.post("/v1/admin/experiments/cand-ab/arms/cand", json={"model_version": "good"}, headers=AUTH)
        assert r.status_code == 200 and r.json()["model_version"] == "good", r.text
        assert c.post("/v1/admin/experiments/cand-ab/arms/nope", json={"model_version": "good"},
                      headers=AUTH).status_code == 404
        arms = {}
        for i in range(40):
            body = c.post("/v1/recommend", json={"user_id": f"arm-{i}", "k": 3}).json()
            arms.setdefault(body["arm"] or "-", set()).add(body["model_version"])
        assert arms["cand"] == {"good"} and arms["control"] == {"p1"} and arms["-"] == {"p1"}, arms
        r = c.post("/v1/admin/models/promote", json={"model_version": "good"}, headers=AUTH)
        assert r.status_code == 200 and r.json()["previous"] == "p1", r.text
    assert ModelRegistry(serve_app.registry).promoted() == "good"
    _default_everywhere(replicas, "good")
    for url in replicas:
        assert "good" in _versions_served(url, 4, "after")
    r = httpx.post(serve_app.url + "/v1/admin/models/rollback", headers=AUTH, timeout=60)
    assert r.status_code == 200 and r.json()["default_model_version"] == "p1", r.text
    _default_everywhere(replicas, "p1")
    for url in replicas:
        st = httpx.get(url + "/v1/admin/models", headers=AUTH, timeout=30).json()
        assert "good" in st["models"] and "p1" in st["models"]          # loaded beside, switched back, no restart
    r = httpx.post(serve_app.url + "/v1/admin/models/rollback", headers=AUTH, timeout=60)
    assert r.status_code == 409 and "nothing to roll back" in r.text
