"""One alignment round end to end on a small synthetic world: pairs by the world's true value, DPO, publish.

A tiny generator is trained for a few seconds (module fixture) and published as ``base``; each test runs a
round from it into a fresh registry. Checks: the chosen-vs-rejected margin rises and the true value of
the aligned model's sessions does not fall; validity stays 100%; a scorer that rewards what the world
does not value is caught as reward hacking and nothing is published; a round killed between training
and publish, or in the middle of the publish, leaves the registry unchanged and the next round starts
cleanly; feedback mode trains on served sessions' real rewards; and the training runs through Ray Train.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from actors.aligner import (AlignmentError, RayTrainConfig, RoundData, ServedSessions, UserHistories,
                            WorldValueScorer, generate_candidates, run_round)
from actors.model_registry import ModelRegistry
from actors.train_job import fit_tokenizer, interactions_from_records
from ingest.synthetic import SyntheticWorld, WorldConfig
from models.alignment.config import AlignConfig
from models.evaluation.generator_ranker import build_trie
from models.evaluation.metrics import validity
from models.generator.checkpoint import GeneratorBundle
from models.generator.model import GeneratorConfig
from models.generator.training import TrainConfig, fit_generator
from tiny_generator import tiny_base

torch.set_num_threads(1)



@pytest.fixture(scope="module")
def base():
    tb = tiny_base(200, 300, d_model=32, epochs=3)
    return tb.world, tb.data, tb.bundle


# the NDCG guard off: these tests are about the round's other parts (the guard's own tests are at the end)
ROUND = AlignConfig(user_share=1.0, max_users=110, n_candidates=8, steps=40, pair_batch=16, ntp_batch=32, beta=0.5,
                    lr=1e-3, eval_users=48, guard_every=0, seed=0)


@pytest.fixture(scope="module")
def base():
    world = SyntheticWorld(WorldConfig.small(seed=0, n_users=200, n_items=300))
    ds = world.dataset()
    data = interactions_from_records("synthetic", ds.user_events, ds.item_events)
    content = np.stack([world.item_topics(str(i)) for i in data.split.item_ids])
    content = (content + 0.05 * np.random.default_rng(0).standard_normal(content.shape)).astype(np.float32)
    tok, sids = fit_tokenizer(content, levels=2, codebook_size=8)
    gcfg = GeneratorConfig(level_sizes=tuple(int(x) for x in tok.sid_level_sizes), d_model=32, heads=2, enc_layers=1,
                           dec_layers=1, dropout=0.1, max_history=20, session_len=3)
    tv = data.split.train_valid()
    model, _ = fit_generator(tv.items, sids, gcfg, TrainConfig(epochs=3, batch_size=64, lr=3e-3, patience=0,
                                                               eval_every=100, progress=False),
                             types=tv.types, ts=tv.ts, validate=False, item_emb=content)
    bundle = GeneratorBundle(model, None, tuple(str(i) for i in data.split.item_ids), sids, tok.version, b"")
    return world, data, bundle


@pytest.fixture
def registry(base, tmp_path):
    reg = ModelRegistry(str(tmp_path / "registry"))
    reg.publish("base", base[2])
    return reg


def _names(reg) -> list[str]:
    return [v.version for v in reg.versions()]


class AntiValueScorer:
    """Rewards what the world does not value: the negative of the true value (clickbait the users dislike)."""

    def __init__(self, truth):
        self.truth = truth

    def score(self, histories, sessions):
        return -self.truth.score(histories, sessions)


def test_round_on_true_value_raises_margin_keeps_validity_and_publishes(base, registry):
    world, data, _ = base
    truth = WorldValueScorer(world, data.split.item_ids, draws=64)
    # DPO's own pull on the margin: without the KL anchor, which holds the policy near the parent on purpose
    # (its test: tests/models/alignment/test_train.py)
    cfg = AlignConfig(**{**ROUND.to_dict(), "ntp_kl_weight": 0.0})
    rep = run_round(cfg, registry, RoundData(data.split), truth, parent="base", version="a1", true_scorer=truth,
                    say=lambda _: None)
    assert rep.published and not rep.refused and not rep.reward_hacking
    assert rep.n_pairs > 10
    assert rep.margin_after > rep.margin_before + 0.5, rep.summary()
    assert rep.reward_margin > 0 and rep.pair_accuracy > 0.7
    assert rep.validity == 1.0
    assert rep.eval_heldout                                             # compared on users it did not train on
    assert rep.true_value >= rep.true_value_parent, rep.summary()       # the aligned sessions are not worse
    assert rep.kl_ref > 0 and np.isfinite(rep.ntp_loss) and np.isfinite(rep.dpo_loss)
    for k in ("hr50", "ndcg10", "coverage10", "hr50_parent", "ndcg10_parent", "coverage10_parent"):
        assert 0.0 <= getattr(rep, k) <= 1.0
    info = registry.info("a1")
    assert info.parent == "base" and info.metrics["alignment"]["n_pairs"] == rep.n_pairs
    aligned = registry.load("a1").model
    base_m = registry.load("base").model
    assert any(not torch.equal(a, b) for a, b in zip(aligned.state_dict().values(), base_m.state_dict().values()))
    with pytest.raises(AlignmentError, match="already exists"):
        run_round(ROUND, registry, RoundData(data.split), truth, parent="base", version="a1", say=lambda _: None)


def test_reward_hacking_is_caught_and_nothing_is_published(base, registry):
    world, data, _ = base
    truth = WorldValueScorer(world, data.split.item_ids, draws=64)
    cfg = AlignConfig(**{**ROUND.to_dict(), "dpo_weight": 4.0})   # the pairs, not NTP, lead (as a strong λ would)
    rep = run_round(cfg, registry, RoundData(data.split), AntiValueScorer(truth), parent="base", version="hacked",
                    true_scorer=truth, say=lambda _: None)
    assert rep.predicted_gain > 0 and rep.true_gain < 0, rep.summary()
    assert rep.reward_hacking and not rep.published and "REWARD HACKING" in rep.refused
    assert _names(registry) == ["base"]


def test_bad_scorers_are_refused(base, registry):
    world, data, bundle = base

    class Wrong:
        def score(self, histories, sessions):
            return np.zeros(len(sessions))

    with pytest.raises(AlignmentError, match=r"one score per session \[U, N\]"):
        run_round(ROUND, registry, RoundData(data.split), Wrong(), parent="base", version="w", say=lambda _: None)
    assert _names(registry) == ["base"]


class Killed(BaseException):
    """Stands for the process being killed (not an Exception: nothing may catch and carry on)."""


def test_kill_between_training_and_publish_leaves_registry_unchanged(base, registry):
    world, data, _ = base
    truth = WorldValueScorer(world, data.split.item_ids, draws=16)

    def kill(model, report):
        raise Killed()

    with pytest.raises(Killed):
        run_round(ROUND, registry, RoundData(data.split), truth, parent="base", version="a2", before_publish=kill,
                  say=lambda _: None)
    assert _names(registry) == ["base"]
    rep = run_round(ROUND, registry, RoundData(data.split), truth, parent="base", version="a2", say=lambda _: None)
    assert rep.published and _names(registry) == ["base", "a2"]


def test_kill_in_the_middle_of_publish_leaves_no_half_version(base, registry, monkeypatch):
    world, data, _ = base
    truth = WorldValueScorer(world, data.split.item_ids, draws=16)
    real_put = registry._put

    def put(path, data_):
        if path.endswith("meta.json"):   # weights and config are written, the version's meta.json never is
            raise Killed()
        real_put(path, data_)

    monkeypatch.setattr(registry, "_put", put)
    with pytest.raises(Killed):
        run_round(ROUND, registry, RoundData(data.split), truth, parent="base", version="a3", say=lambda _: None)
    monkeypatch.setattr(registry, "_put", real_put)
    assert _names(registry) == ["base"]
    fresh = ModelRegistry(registry.uri)                          # another process's view
    assert _names(fresh) == ["base"]
    rep = run_round(ROUND, fresh, RoundData(data.split), truth, parent="base", version="a3", say=lambda _: None)
    assert rep.published and fresh.load("a3").model is not None


def test_feedback_mode_trains_on_served_rewards(base, registry):
    world, data, bundle = base
    truth = WorldValueScorer(world, data.split.item_ids, draws=32)
    split = data.split
    users = np.arange(0, split.n_users, 3)[:40]
    hist = UserHistories([split.train().items[u] for u in users], user_ids=[split.user_ids[u] for u in users])
    cfg = AlignConfig(**{**ROUND.to_dict(), "mode": "feedback", "generation": "sample", "n_candidates": 4})
    trie = build_trie(bundle.item_sids, bundle.model.cfg.level_sizes)
    served, _ = generate_candidates(bundle.model, hist, bundle.item_sids, trie, cfg)      # [U, 4, K] sampled
    assert validity(served, len(bundle.item_sids)) == 1.0 and served.shape[1] == 4
    rewards = truth.score(hist, served)                                                   # [U, 4] real value
    sv = ServedSessions(np.repeat(users, 4), served.reshape(-1, served.shape[2]), rewards.reshape(-1))
    rep = run_round(cfg, registry, RoundData(split, served=sv), None, parent="base", version="fb1", say=lambda _: None)
    assert rep.published and rep.mode == "feedback" and rep.validity == 1.0
    assert rep.n_pairs > 0 and np.isfinite(rep.dpo_loss) and np.isfinite(rep.ntp_loss)
    with pytest.raises(AlignmentError, match="served sessions"):
        run_round(cfg, registry, RoundData(split), None, parent="base", version="fb2", say=lambda _: None)


def test_round_trains_through_ray_train(base, registry, local_ray):
    world, data, _ = base
    truth = WorldValueScorer(world, data.split.item_ids, draws=16)
    cfg = AlignConfig(**{**ROUND.to_dict(), "steps": 10, "eval_users": 24})
    rep = run_round(cfg, registry, RoundData(data.split), truth, parent="base", version="ray1",
                    ray_train=RayTrainConfig(num_workers=1, use_gpu=False), say=lambda _: None)
    assert rep.backend == "ray" and rep.published and rep.steps == 10
    assert rep.reward_margin > 0 and np.isfinite(rep.dpo_loss)
    assert registry.info("ray1").parent == "base"


def test_ntp_reads_the_whole_fresh_window_while_pairs_come_from_the_sampled_users(base, registry):
    """RoundData.ntp_split: NTP on every user's training part, candidates and pairs only from ``split``'s users."""
    from actors.aligner import _ntp_examples
    from models.evaluation.splits import LeaveOneOut

    world, data, bundle = base
    full = data.split
    users = np.arange(0, full.n_users, 4)
    sub = LeaveOneOut(full.user_ids[users], full.item_ids, [full.items[u] for u in users],
                      [full.ts[u] for u in users], [full.types[u] for u in users], full.min_events)
    truth = WorldValueScorer(world, full.item_ids, draws=8)
    cfg = AlignConfig(**{**ROUND.to_dict(), "steps": 3, "eval_users": 16})
    rep = run_round(cfg, registry, RoundData(sub, ntp_split=full), truth, parent="base", version="ntp-all",
                    say=lambda _: None)
    k = bundle.model.cfg.session_len
    n_full, n_sub = len(_ntp_examples(full, full.n_items, k)), len(_ntp_examples(sub, sub.n_items, k))
    assert rep.ntp_examples == n_full > n_sub and rep.n_users <= len(users)
    rep_sub = run_round(cfg, registry, RoundData(sub), truth, parent="base", version="ntp-sub", say=lambda _: None)
    assert rep_sub.ntp_examples == n_sub
    other = LeaveOneOut(full.user_ids, full.item_ids[:-1], full.items, full.ts, full.types, full.min_events)
    with pytest.raises(AlignmentError, match="same catalog"):
        run_round(cfg, registry, RoundData(sub, ntp_split=other), truth, parent="base", version="ntp-bad",
                  say=lambda _: None)


# ---- the narrowing guard (models/alignment/guard.py, decision 037) ------------------------------

def _same_weights(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_guard_keeps_the_last_snapshot_within_the_bound(base, registry, monkeypatch):
    """The guard sees NDCG fall below the bound at steps 40 and 30 and hold at 20: the published candidate is
    exactly the policy after 20 steps (the same round without a guard, 20 steps), not the last step."""
    import actors.aligner as aligner

    world, data, _ = base
    truth = WorldValueScorer(world, data.split.item_ids, draws=16)
    seen = []
    schedule = iter([0.100, 0.050, 0.060, 0.099])            # parent, then steps 40, 30, 20 (newest first)

    def fake_ndcg(model, cases, item_sids, trie, beam=50):
        seen.append(len(cases))
        return next(schedule)

    monkeypatch.setattr(aligner, "guard_ndcg", fake_ndcg)
    guarded = AlignConfig(**{**ROUND.to_dict(), "guard_every": 10, "guard_max_drop": 0.02})
    rep = run_round(guarded, registry, RoundData(data.split), truth, parent="base", version="g20", say=lambda _: None)
    assert rep.published and rep.guard_step == 20 and rep.steps == 40
    assert [s for s, _ in rep.guard_checked] == [40, 30, 20] and rep.guard_ndcg == pytest.approx(0.099)
    # the guard ranks the held-out users the round did not sample for pairs (all of them when none is left)
    cases = data.split.test()
    unsampled = int((~np.isin(cases.users, aligner._sample_users(data.split, guarded))).sum())
    assert 0 < unsampled < len(cases)
    assert rep.guard_users == unsampled == seen[0] and len(seen) == 4   # step 10 never evaluated
    monkeypatch.undo()
    plain = run_round(AlignConfig(**{**ROUND.to_dict(), "steps": 20}), registry, RoundData(data.split), truth,
                      parent="base", version="p20", say=lambda _: None)
    last = run_round(ROUND, registry, RoundData(data.split), truth, parent="base", version="p40", say=lambda _: None)
    assert plain.published and last.published
    assert _same_weights(registry.load("g20").model, registry.load("p20").model)
    assert not _same_weights(registry.load("g20").model, registry.load("p40").model)


def test_guard_refuses_the_round_when_no_snapshot_holds(base, registry, monkeypatch):
    import actors.aligner as aligner

    world, data, _ = base
    truth = WorldValueScorer(world, data.split.item_ids, draws=16)
    schedule = iter([0.100, 0.050, 0.050])                   # parent, then steps 20 and 10: both narrowed
    monkeypatch.setattr(aligner, "guard_ndcg", lambda model, cases, item_sids, trie, beam=50: next(schedule))
    before = _names(registry)
    cfg = AlignConfig(**{**ROUND.to_dict(), "guard_every": 10, "steps": 20})
    rep = run_round(cfg, registry, RoundData(data.split), truth, parent="base", version="narrow", say=lambda _: None)
    assert not rep.published and "NDCG GUARD" in rep.refused and rep.guard_step == 0
    assert [s for s, _ in rep.guard_checked] == [20, 10]
    assert rep.reward_margin > 0          # the last step was measured (it trained), just not published
    assert _names(registry) == before


def test_guard_runs_inside_the_ray_train_worker(base, registry, local_ray):
    world, data, _ = base
    truth = WorldValueScorer(world, data.split.item_ids, draws=16)
    cfg = AlignConfig(**{**ROUND.to_dict(), "steps": 10, "eval_users": 24, "guard_every": 5, "guard_max_drop": 0.99,
                         "guard_users": 20})
    rep = run_round(cfg, registry, RoundData(data.split), truth, parent="base", version="ray-guard",
                    ray_train=RayTrainConfig(num_workers=1, use_gpu=False), say=lambda _: None)
    assert rep.backend == "ray" and rep.published and rep.guard_users == 20
    assert rep.guard_step == 10 and rep.guard_checked[0][0] == 10 and rep.guard_ndcg_parent > 0
