"""Rollout on the ingress side: the followed registry version as the default, candidates into arms (only with a
passing gate verdict), the experiments YAML rewritten so that every user keeps their arm."""

from __future__ import annotations

import pytest
import torch

from actors.model_registry import ModelRegistry, RegistryError
from models.generator.checkpoint import GeneratorBundle
from models.generator.model import GenerativeRecommender, GeneratorConfig
from serving.experiments.config import ExperimentRegistry, ExperimentsConfig
from serving.rollout import (FollowingExperiments, Refused, arm_with_model, assign_arm_model, check_promotable,
                             config_yaml, registered)

YAML = """
default: {model_version: v1, decode: {mode: greedy}}
layers:
  - name: models
    salt: m-1
    experiments:
      - name: cand-ab
        traffic: 0.6
        guardrails: [{metric: ctr, max_relative_drop: 0.05}]
        analysis: {primary: [ctr], sequential: true}
        arms:
          - {name: control, weight: 2}
          - {name: cand, weight: 1, decode: {mode: beam, beam_width: 2}}
"""


@pytest.fixture
def reg(tmp_path):
    r = ModelRegistry(str(tmp_path / "reg"))
    for i, (name, tok) in enumerate((("p1", "t1"), ("good", "t1"), ("bad", "t1"), ("other", "t2"))):
        torch.manual_seed(i)
        r.publish(name, GeneratorBundle(GenerativeRecommender(GeneratorConfig(level_sizes=(4, 4, 2), d_model=16)),
                                        tokenizer_version=tok))
    for name in ("good", "other"):
        r.set_verdict(name, {"passed": True})
    r.set_verdict("bad", {"passed": False, "reason": "coverage failed"})
    return r


def test_the_followed_version_is_the_default_and_arms_keep_theirs():
    exps = ExperimentRegistry(ExperimentsConfig.from_yaml(YAML))
    routing = FollowingExperiments(exps)
    users = [f"u{i}" for i in range(200)]
    before = {u: routing.resolve(u) for u in users}
    assert {r.model_version for r in before.values()} == {"v1"}
    routing.promoted = "p7"
    after = {u: routing.resolve(u) for u in users}
    assert {r.model_version for r in after.values()} == {"p7"}
    assert all(before[u].assignments == after[u].assignments for u in users)   # nobody changes arm
    assert routing.config.default_model_version == "p7" and exps.config.default_model_version == "v1"
    routing.promoted = None
    assert routing.config is exps.config


def test_arm_with_model_round_trips_through_yaml_and_keeps_every_user_in_place():
    cfg = ExperimentsConfig.from_yaml(YAML)
    new = arm_with_model(cfg, "cand-ab", "cand", "good")
    again = ExperimentsConfig.from_yaml(config_yaml(new))
    exp = again.experiment("cand-ab")
    assert {a.name: a.model_version for a in exp.arms} == {"control": None, "cand": "good"}
    assert exp.arms[1].decode == {"mode": "beam", "beam_width": 2} and exp.analysis.sequential
    assert exp.guardrails == cfg.experiment("cand-ab").guardrails and exp.traffic == 0.6
    from serving.experiments.config import resolve

    for u in (f"user-{i}" for i in range(300)):
        assert resolve(cfg, u).assignments == resolve(again, u).assignments
        if resolve(again, u).arm == "cand":
            assert resolve(again, u).model_version == "good"
    with pytest.raises(KeyError, match="no arm 'x'"):
        arm_with_model(cfg, "cand-ab", "x", "good")
    with pytest.raises(KeyError, match="no experiment 'nope'"):
        arm_with_model(cfg, "nope", "cand", "good")


def test_assign_arm_model_needs_a_passing_verdict_and_rewrites_the_file(reg, tmp_path):
    path = tmp_path / "experiments.yaml"
    path.write_text(YAML)
    with pytest.raises(RegistryError, match="failed its gate"):
        assign_arm_model(path, "cand-ab", "cand", "bad", reg)
    with pytest.raises(RegistryError, match="no gate verdict"):
        assign_arm_model(path, "cand-ab", "cand", "p1", reg)
    assert path.read_text() == YAML
    assign_arm_model(path, "cand-ab", "cand", "good", reg)
    arms = ExperimentsConfig.from_yaml(path).experiment("cand-ab").arms
    assert [a.model_version for a in arms] == [None, "good"] and not list(tmp_path.glob(".experiments*"))


def test_promotable_checks(reg):
    assert registered(reg, "good") and not registered(reg, "v9")
    with pytest.raises(Refused, match="never a path") as e:
        registered(reg, "../good")
    assert e.value.status == 400
    check_promotable(reg, "good", "p1")
    for version, match in (("bad", "failed its gate"), ("p1", "no gate verdict"), ("other", "tokenizer 't2'")):
        with pytest.raises(Refused, match=match) as e:
            check_promotable(reg, version, "p1")
        assert e.value.status == 409
    check_promotable(reg, "other", None)          # nothing followed yet: no tokenizer to keep
    check_promotable(reg, "good", "untrained-v1")  # the followed version is not a registry version


def test_check_arms_refuses_a_failed_version_anywhere(reg):
    from serving.rollout import check_arms

    cfg = ExperimentsConfig.from_yaml(YAML)
    check_arms(cfg, reg)
    check_arms(arm_with_model(cfg, "cand-ab", "cand", "good"), reg)
    with pytest.raises(ValueError, match="arm cand-ab/cand names model version 'bad' failed its gate"):
        check_arms(arm_with_model(cfg, "cand-ab", "cand", "bad"), reg)
    with pytest.raises(ValueError, match="default names"):
        check_arms(ExperimentsConfig(cfg.layers, "bad"), reg)
