"""The align job end to end on a tiny deployment: a tiny world, a base generator in a temp registry, an archive
of its user events plus served sessions answered by the world (rewards by the joiner's own code), one round.

Checks: the round trains and stores a reward model (safetensors + JSON beside the registry), publishes a
candidate, writes the gate's verdict and puts a passing candidate into the arm; a failing gate leaves the
experiments file untouched; the split follows the parent's catalog order; continuous mode stops on SIGTERM
between or inside a round without leaving a half version.
"""

from __future__ import annotations

import os
import signal
import threading

import pyarrow.parquet as pq
import pytest
import torch

from actors.align_job import (AlignJobConfig, RewardModelStore, default_version, parse_duration, run_align_round,
                              run_every, split_in_catalog, window_bounds)
from actors.model_registry import ModelRegistry
from actors.reward_data import exploration_served, simulate_rewards
from ingest.archive import file_name, topic_dir
from ingest.arrow_schemas import to_table
from ingest.contract import REWARDS, SERVED, USER_EVENTS, UserEvent
from serving.experiments.config import ExperimentsConfig
from tiny_generator import tiny_base

torch.set_num_threads(1)

EXPERIMENTS = """
default: {model_version: base}
layers:
  - name: alignment
    salt: test-align
    experiments:
      - name: align-ab
        control: base
        arms:
          - {name: base, weight: 1, model_version: base}
          - {name: aligned, weight: 1, model_version: base}
"""

ROUND = {"user_share": 1.0, "max_users": 60, "n_candidates": 4, "steps": 8, "pair_batch": 16, "ntp_batch": 32,
         "eval_users": 30, "eval_beam": 2, "hack_tolerance": 100.0}
LOOSE = {"max_ndcg_drop": 0.9, "min_coverage_ratio": 0.1, "canary_tolerance": 1.0, "canary_abs_floor": 10.0}


@pytest.fixture(scope="module")
def deployment(tmp_path_factory):
    """(world, archive root, base bundle): the base model, and an archive of the world's log + served traffic."""
    tb = tiny_base(120, 200, d_model=32, epochs=2)
    world, data, bundle = tb.world, tb.data, tb.bundle
    ds = world.dataset()
    end = world.cfg.start_ts_ms + world.cfg.duration_ms
    served = exploration_served(world, 240, 3, seed=1, start_ts=end - 3 * 86_400_000, end_ts=end,
                                model_version="base")
    rewards, answers = simulate_rewards(world, served)
    root = tmp_path_factory.mktemp("archive")
    for topic, recs in ((USER_EVENTS, list(ds.user_events) + answers), (SERVED, served), (REWARDS, rewards)):
        d = topic_dir(root, topic) / "date=2026-01-01"
        d.mkdir(parents=True)
        n = len(recs)
        pq.write_table(to_table(recs, topic, [0] * n, range(n)), d / file_name(0, 0, n, 0, 1))
    return world, str(root), bundle


def _setup(tmp_path, bundle):
    reg = ModelRegistry(str(tmp_path / "registry"))
    reg.publish("base", bundle)
    reg.promote("base", require_verdict=False)
    exp = tmp_path / "experiments.yaml"
    exp.write_text(EXPERIMENTS)
    return reg, exp


def _cfg(archive, reg, exp, gate) -> AlignJobConfig:
    return AlignJobConfig(archive=archive, registry=reg.uri, window_days=0, rm_epochs=3, rm_d_model=16,
                          min_examples=50, round=ROUND, gate=gate, experiment="align-ab", arm="aligned",
                          experiments_file=str(exp))


def _arm_models(exp) -> dict:
    cfg = ExperimentsConfig.from_yaml(exp)
    return {a.name: a.model_version for e in cfg.experiments() for a in e.arms}


def test_one_round_trains_the_reward_model_gates_and_assigns_the_arm(deployment, tmp_path):
    world, archive, bundle = deployment
    reg, exp = _setup(tmp_path, bundle)
    cfg = _cfg(archive, reg, exp, {"max_users": 60, "canary_users": 40, "beam": 8, "gate": LOOSE})
    lines = []
    res = run_align_round(cfg, version="cand1", world=world, say=lines.append)
    assert res.parent == "base" and res.round is not None and res.round.published, res.to_dict()
    assert res.round.validity == 1.0 and res.round.n_pairs > 0
    assert res.gate is not None and res.passed and res.exit_code == 0
    info = reg.info("cand1")
    assert info.parent == "base" and info.verdict["passed"] is True
    assert info.data_window["reward_model"] == "cand1" and info.data_window["served"] == 240
    assert _arm_models(exp) == {"base": "base", "aligned": "cand1"} and res.assigned == "align-ab/aligned"
    # the reward model is stored beside the candidate, loads back, and was reported on a later window
    store = RewardModelStore(reg)
    assert store.names() == ["cand1"]
    model, meta = store.load("cand1")
    assert meta["n_eval"] > 0 and 0.0 <= res.rm_report["rm_auc_click"] <= 1.0
    assert sum(p.numel() for p in model.parameters()) > 0
    assert any("reward model: trained on" in s for s in lines)
    # a second round reuses the latest reward model when asked, from the promoted parent by default
    cfg2 = AlignJobConfig(**{**cfg.__dict__, "reward_model": "latest", "experiment": "", "arm": "",
                             "experiments_file": "", "round": {**ROUND, "steps": 2},
                             "gate": {"max_users": 20, "world": "none", "gate": LOOSE}})
    res2 = run_align_round(cfg2, version="cand2", say=lines.append)
    assert res2.reward_model == "cand1" and store.names() == ["cand1"] and res2.round.published
    assert reg.info("cand2").data_window["reward_model"] == "cand1"


def test_a_failing_gate_leaves_the_arm_untouched(deployment, tmp_path):
    _, archive, bundle = deployment
    reg, exp = _setup(tmp_path, bundle)
    before = exp.read_text()
    # feedback mode (served sessions' real rewards, no reward model); no simulator at hand and a canary
    # required: the gate cannot pass
    cfg = _cfg(archive, reg, exp, {"max_users": 60, "world": "none", "gate": {**LOOSE, "require_canary": True}})
    cfg = AlignJobConfig(**{**cfg.__dict__, "mode": "feedback"})
    res = run_align_round(cfg, version="cand-f", say=lambda _: None)
    assert res.round.published and res.round.mode == "feedback" and res.round.n_pairs > 0 and not res.reward_model
    assert res.gate is not None and not res.passed and res.exit_code == 1
    assert "canary" in res.gate.verdict.reason
    assert reg.info("cand-f").verdict["passed"] is False
    assert exp.read_text() == before and res.assigned == ""


def test_too_few_rewards_refuse_the_round_and_publish_nothing(deployment, tmp_path):
    _, archive, bundle = deployment
    reg, exp = _setup(tmp_path, bundle)
    cfg = AlignJobConfig(**{**_cfg(archive, reg, exp, {}).__dict__, "min_examples": 10_000})
    res = run_align_round(cfg, version="c", say=lambda _: None)
    assert res.refused and "min_examples" in res.refused and res.exit_code == 2
    assert [v.version for v in reg.versions()] == ["base"]


def test_split_follows_the_parent_catalog_and_the_window():
    ev = [UserEvent(event_id=f"e{k}", user_id=u, item_id=i, type=t, ts=ts)
          for k, (u, i, t, ts) in enumerate([("u", "b", "click", 10), ("u", "b", "like", 11), ("u", "zz", "click", 12),
                                             ("u", "a", "click", 13), ("u", "c", "impression", 14),
                                             ("v", "c", "click", 1), ("v", "a", "click", 20)])]
    split, c = split_in_catalog(ev, ["a", "b", "c"])
    assert list(split.item_ids) == ["a", "b", "c"] and list(split.user_ids) == ["u", "v"]
    assert split.items[0].tolist() == [1, 0] and split.items[1].tolist() == [2, 0]
    assert c["unknown_item"] == 1
    split, _ = split_in_catalog(ev, ["a", "b", "c"], start_ms=12)
    assert split.items[0].tolist() == [0] and split.items[1].tolist() == [0]
    assert window_bounds([5, 100 * 86_400_000], 1.0) == (99 * 86_400_000, 100 * 86_400_000)
    assert window_bounds([5, 10], 0) == (5, 10)


def test_config_and_durations_are_validated():
    assert parse_duration("30m") == 1800 and parse_duration("6h") == 21600 and parse_duration("45") == 45
    for bad in ("", "-1h", "soon", "0s"):
        with pytest.raises(ValueError, match="positive number"):
            parse_duration(bad)
    with pytest.raises(ValueError, match="go together"):
        AlignJobConfig(experiment="e")
    with pytest.raises(ValueError, match="align.round"):
        AlignJobConfig(round={"n_candidates": 1})
    with pytest.raises(ValueError, match="align.gate"):
        AlignJobConfig(gate={"canary_users": 1})
    with pytest.raises(ValueError, match="reward_model"):
        AlignJobConfig(reward_model="maybe")
    # the round's NDCG guard holds the gate's bound unless the round names its own
    assert AlignJobConfig().align_config().guard_max_drop == 0.02
    assert AlignJobConfig(gate={"gate": {"max_ndcg_drop": 0.05}}).align_config().guard_max_drop == 0.05
    assert AlignJobConfig(round={"guard_max_drop": 0.01},
                          gate={"gate": {"max_ndcg_drop": 0.05}}).align_config().guard_max_drop == 0.01
    assert default_version("v1", 0).startswith("v1-a19700101T")


def test_continuous_mode_stops_on_sigterm_inside_a_round(tmp_path):
    calls = []

    def round_fn():
        calls.append(1)
        if len(calls) == 2:                      # SIGTERM arrives in the middle of the second round
            os.kill(os.getpid(), signal.SIGTERM)
            raise AssertionError("the signal must abort the round before this line")
        return "ok"

    old = signal.getsignal(signal.SIGTERM)
    out = run_every(round_fn, 0.01, say=lambda _: None)
    assert out == ["ok"] and len(calls) == 2
    assert signal.getsignal(signal.SIGTERM) == old          # the previous handler is restored

    stop = threading.Event()
    failing = iter([RuntimeError("broken archive"), None])

    def flaky():
        e = next(failing)
        if e:
            raise e
        stop.set()
        return "done"

    out = run_every(flaky, 0.0, stop=stop, say=lambda _: None)
    assert isinstance(out[0], RuntimeError) and out[1] == "done"      # a failed round does not end the job


def _promote_cfg(archive, reg, exp, **kw) -> AlignJobConfig:
    return AlignJobConfig(archive=archive, registry=reg.uri, experiment="align-ab", arm="aligned",
                          experiments_file=str(exp), auto_promote=True, promote_min_users=50, **kw)


def test_auto_promote_makes_a_winning_arm_the_parent_of_the_next_round(deployment, tmp_path):
    from actors.align_job import promote_if_won
    from tests.serving.experiments.ab_archive import ab_archive

    _, _, bundle = deployment
    reg, exp = _setup(tmp_path, bundle)
    reg.publish("cand1", bundle, parent="base")
    exp.write_text(EXPERIMENTS.replace("{name: aligned, weight: 1, model_version: base}",
                                       "{name: aligned, weight: 1, model_version: cand1}")
                   .replace("control: base", "control: base\n        analysis: {primary: [ctr], sequential: true, planned_users: 1000}"))
    cfg_exp = ExperimentsConfig.from_yaml(exp)
    lines: list[str] = []
    # no effect: wait, nothing promoted
    flat = ab_archive(tmp_path / "flat", cfg_exp, effect=0.0, seed=3)
    d = promote_if_won(_promote_cfg(flat, reg, exp), reg, lines.append)
    assert d is not None and not d["promote"] and reg.promoted() == "base", d
    # a clear win, but cand1 has no gate verdict: the registry refuses, nothing is forced
    win = ab_archive(tmp_path / "win", cfg_exp, effect=0.5)
    d = promote_if_won(_promote_cfg(win, reg, exp), reg, lines.append)
    assert d["promote"] and d["promoted"] is None and reg.promoted() == "base", d
    assert any("registry refused" in r for r in d["reasons"])
    # with a passing verdict it becomes the promoted version: the next round's default parent
    reg.set_verdict("cand1", {"passed": True, "reason": "test"})
    d = promote_if_won(_promote_cfg(win, reg, exp), reg, lines.append)
    assert d["promote"] and d["promoted"] == "cand1" and reg.promoted() == "cand1", d
    assert any("PROMOTE" in s for s in lines)
    with pytest.raises(ValueError, match="auto_promote needs"):
        AlignJobConfig(archive=win, registry=reg.uri, auto_promote=True)
