"""Experiments: deterministic bucketing, weights within SRM bounds, layers, reload, validation."""

from __future__ import annotations

from collections import Counter

import pytest

from serving.experiments.report import srm_check
from serving.experiments.config import (
    BUCKETS, ExperimentRegistry, ExperimentsConfig, bucket_of, resolve, split_assignments,
)

YAML = """
default: {model_version: v1, decode: {mode: beam, beam_width: 4}}
layers:
  - name: decoding
    salt: L1
    experiments:
      - name: decode-ab
        traffic: 0.6
        control: beam
        guardrails: [{metric: ctr, max_relative_drop: 0.05}]
        arms:
          - {name: beam, weight: 1, decode: {mode: beam}}
          - {name: greedy, weight: 3, decode: {mode: greedy}}
      - name: other
        traffic: 0.4
        arms: [{name: a}, {name: b}]
  - name: models
    salt: L2
    experiments:
      - name: model-ab
        arms:
          - {name: old, weight: 1, model_version: v1}
          - {name: new, weight: 1, model_version: v2}
"""


def test_100k_users_split_within_weights_and_stable():
    cfg = ExperimentsConfig.from_yaml(YAML)
    users = [f"u{i}" for i in range(100_000)]
    res = [resolve(cfg, u) for u in users]
    per_exp: dict[str, Counter] = {}
    for r in res:
        for e, a in r.assignments:
            per_exp.setdefault(e, Counter())[a] += 1
    # layer 1: mutually exclusive, shares 0.6 / 0.4 of users
    n_l1 = sum(per_exp["decode-ab"].values()) + sum(per_exp["other"].values())
    assert n_l1 == 100_000
    assert abs(sum(per_exp["decode-ab"].values()) / 1e5 - 0.6) < 0.01
    # layer 2 covers everybody, orthogonally
    assert sum(per_exp["model-ab"].values()) == 100_000
    for name in ("decode-ab", "other", "model-ab"):
        exp = cfg.experiment(name)
        check = srm_check(dict(per_exp[name]), exp.weights())
        assert not check["srm"], (name, check)
    # 1:3 weights
    frac = per_exp["decode-ab"]["greedy"] / sum(per_exp["decode-ab"].values())
    assert abs(frac - 0.75) < 0.01
    # orthogonality: inside decode-ab, model-ab arms are still 50/50
    inside = Counter(dict(r.assignments)["model-ab"] for r in res if "decode-ab" in dict(r.assignments))
    assert abs(inside["new"] / sum(inside.values()) - 0.5) < 0.015
    # determinism: a fresh config object gives every user the same arm
    cfg2 = ExperimentsConfig.from_yaml(YAML)
    assert all(resolve(cfg2, u) == r for u, r in zip(users[:5000], res[:5000]))


def test_srm_check_flags_a_broken_split():
    assert srm_check({"a": 5000, "b": 5600}, {"a": 0.5, "b": 0.5})["srm"]
    assert not srm_check({"a": 5000, "b": 5050}, {"a": 0.5, "b": 0.5})["srm"]


def test_resolution_merges_layers_and_joins_names():
    cfg = ExperimentsConfig.from_yaml(YAML)
    r = resolve(cfg, "some-user")
    assert r.model_version in ("v1", "v2")
    assert r.decode["beam_width"] == 4  # default kept where no arm overrides it
    back = split_assignments(r.experiment, r.arm)
    assert back == dict(r.assignments)
    assert set(back) & {"decode-ab", "other"} and "model-ab" in back


def test_bucket_is_stable_and_in_range():
    assert bucket_of("s", "u1") == bucket_of("s", "u1")
    assert bucket_of("s", "u1") != bucket_of("t", "u1") or bucket_of("s", "u2") != bucket_of("t", "u2")
    assert all(0 <= bucket_of("x", str(i)) < BUCKETS for i in range(1000))


@pytest.mark.parametrize("bad,needle", [
    ("layers: [{name: l, experiments: [{name: e, traffic: 0.7, arms: [{name: a}]}, "
     "{name: f, traffic: 0.5, arms: [{name: a}]}]}]", "adds up to"),
    ("layers: [{name: l, experiments: [{name: e, arms: [{name: a, weight: 0}]}]}]", "weight"),
    ("layers: [{name: l, experiments: [{name: e, arms: [{name: a, decode: {mode: warp}}]}]}]", "decode mode"),
    ("layers: [{name: l, experiments: [{name: e, control: z, arms: [{name: a}]}]}]", "control"),
    ("layers: [{name: l, experiments: [{name: e, arms: []}]}]", "no arms"),
    ("bogus: 1", "unknown keys"),
    ("layers: [{name: l, experiments: [{name: e, guardrails: [{metric: nope}], arms: [{name: a}]}]}]", "metric"),
])
def test_bad_config_names_the_problem(bad, needle):
    with pytest.raises(ValueError, match=needle):
        ExperimentsConfig.from_yaml(bad)


def test_registry_reload_promote_rollback(tmp_path):
    p = tmp_path / "exp.yaml"
    p.write_text(YAML)
    reg = ExperimentRegistry(source=p)
    before = reg.resolve("u1")
    p.write_text(YAML.replace("traffic: 0.6", "traffic: 0.0001").replace("traffic: 0.4", "traffic: 0.9999"))
    reg.reload()
    assert reg.version == 2
    # with decode-ab at one bucket, nearly everyone is in 'other' now
    n_other = sum("other" in dict(reg.resolve(f"u{i}").assignments) for i in range(500))
    assert n_other >= 498
    with pytest.raises(ValueError):
        reg.reload("layers: [{name: l, experiments: [{name: e, arms: []}]}]")
    assert reg.version == 2  # a bad reload keeps the old config
    assert reg.promote("v9") == "v1"
    assert reg.config.default_model_version == "v9"
    assert reg.rollback() == "v1"
    with pytest.raises(ValueError, match="nothing to roll back"):
        reg.rollback()
    assert before.model_version in ("v1", "v2")


@pytest.mark.parametrize("analysis,needle", [
    ("{correction: bonferroni}", "holm: family-wise"),
    ("{alpha: 0.7}", "alpha"),
    ("{primary: [ctrr]}", "unknown metrics"),
    ("{primary: []}", "primary is empty"),
    ("{primary: [ctr], secondary: [ctr]}", "both primary and secondary"),
    ("{sequential: maybe}", "true or false"),
    ("{planned_users: 5}", "planned_users"),
    ("{looks: 3}", "unknown keys"),
    ("[1, 2]", "must be a mapping"),
])
def test_bad_analysis_names_the_fix(analysis, needle):
    with pytest.raises(ValueError, match=needle) as e:
        ExperimentsConfig.from_yaml(f"layers: [{{name: l, experiments: [{{name: e, analysis: {analysis}, "
                                    "arms: [{name: a}, {name: b}]}]}]")
    assert "experiments[0].analysis" in str(e.value)


def test_analysis_defaults_and_describe():
    cfg = ExperimentsConfig.from_yaml(YAML)
    a = cfg.experiment("decode-ab").analysis
    assert a.primary == ("ctr",) and a.correction == "holm" and a.alpha == 0.05 and not a.sequential
    cfg = ExperimentsConfig.from_yaml("layers: [{name: l, experiments: [{name: e, analysis: {sequential: true, "
                                      "correction: bh, primary: ctr, secondary: [dislike_rate]}, arms: [{name: a}]}]}]")
    d = cfg.describe()["layers"][0]["experiments"][0]["analysis"]
    assert d["sequential"] and d["correction"] == "bh"
    assert d["primary"] == ["ctr"] and d["secondary"] == ["dislike_rate"]
