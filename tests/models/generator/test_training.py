"""Training: a tiny set is overfitted and regenerated; validation, early stopping and callbacks work."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models.decoding.constraint import SidConstraint
from models.decoding.search import greedy_session
from models.generator.model import GeneratorConfig
from models.evaluation.generator_ranker import build_trie
from models.generator.features import FlatEvents
from models.generator.sessions import SessionConfig, build_sessions
from models.generator.training import TrainConfig, fit_generator, lr_factor, train_generator

torch.set_num_threads(1)

LEVELS = (4, 4, 4)


def _tiny():
    """8 users with disjoint 5-item sequences over 40 items with unique random SIDs."""
    rng = np.random.default_rng(0)
    space = np.array([(a, b, c) for a in range(4) for b in range(4) for c in range(4)])
    sids = space[rng.choice(len(space), 40, replace=False)]
    seqs = [rng.permutation(np.arange(5 * u, 5 * u + 5)) for u in range(8)]
    return sids, seqs


def test_overfits_tiny_set_and_regenerates_sessions():
    sids, seqs = _tiny()
    ev = FlatEvents.from_sequences(seqs, n_items=40, default_type=1)
    ex = build_sessions(ev, SessionConfig(session_len=2, min_history=1))
    gcfg = GeneratorConfig(level_sizes=LEVELS, d_model=48, heads=2, enc_layers=1, dec_layers=2, dropout=0.0,
                           max_history=8, session_len=2)
    tcfg = TrainConfig(epochs=120, batch_size=64, lr=4e-3, weight_decay=0.0, warmup_frac=0.02,
                       later_item_weight=1.0, patience=0, progress=False)
    model, rep = train_generator(ex, None, sids, gcfg, tcfg)
    assert rep.train_loss[-1] < 0.05 < rep.train_loss[0]
    hist, _, _ = ex.batch(np.arange(len(ex)), sids, 8, 16)
    trie = build_trie(sids, LEVELS)
    out = greedy_session(model, hist, SidConstraint.of(trie), session_len=2)
    got, want = out.items.numpy(), ex.targets
    known = want >= 0
    assert (got[known] == want[known]).mean() == 1.0


def test_fit_generator_validates_and_checkpoints():
    sids, seqs = _tiny()
    calls = []
    gcfg = GeneratorConfig(level_sizes=LEVELS, d_model=32, heads=2, enc_layers=1, dec_layers=1, dropout=0.1,
                           max_history=8, session_len=2)
    tcfg = TrainConfig(epochs=6, batch_size=16, lr=3e-3, patience=2, progress=False, val_beam=10)
    model, rep = fit_generator(seqs, sids, gcfg, tcfg, on_epoch_end=lambda e, m, r: calls.append(e))
    assert calls == list(range(1, rep.epochs_run + 1))
    assert rep.n_val_examples == 8                     # each user's last item held out
    assert len(rep.val_ndcg10) == rep.epochs_run and all(0 <= v <= 1 for v in rep.val_ndcg10)
    assert 1 <= rep.best_epoch <= rep.epochs_run
    assert rep.best_val == max(rep.val_ndcg10)
    assert not model.training


def test_early_stopping_stops():
    sids, seqs = _tiny()
    gcfg = GeneratorConfig(level_sizes=LEVELS, d_model=16, heads=2, enc_layers=1, dec_layers=1,
                           max_history=8, session_len=1)
    # a learning rate far too small: validation never improves after the first pass
    tcfg = TrainConfig(epochs=50, batch_size=64, lr=1e-9, warmup_frac=0.0, patience=2, progress=False,
                       val_metric="loss")
    _, rep = fit_generator(seqs, sids, gcfg, tcfg)
    assert rep.stopped_early and rep.epochs_run < 50


def test_lr_schedule():
    assert lr_factor(0, 100, 10, 0.1) == pytest.approx(0.1)
    assert lr_factor(9, 100, 10, 0.1) == pytest.approx(1.0)
    assert lr_factor(100, 100, 10, 0.1) == pytest.approx(0.1)
    assert 0.1 < lr_factor(55, 100, 10, 0.1) < 1.0


def test_bad_inputs_are_clear_errors():
    sids, seqs = _tiny()
    gcfg = GeneratorConfig(level_sizes=(2, 2, 2), d_model=16, heads=2)
    with pytest.raises(ValueError, match="level_sizes"):
        fit_generator(seqs, sids, gcfg, TrainConfig(progress=False))
    with pytest.raises(ValueError, match="val_metric"):
        TrainConfig(val_metric="auc")
    ev = FlatEvents.from_sequences([np.array([], dtype=np.int64)], n_items=40, default_type=1)
    with pytest.raises(ValueError, match="no training examples"):
        train_generator(build_sessions(ev, SessionConfig(2)), None, sids,
                        GeneratorConfig(level_sizes=LEVELS, d_model=16, heads=2), TrainConfig(progress=False))


def test_window_batches_equal_separate_prefixes():
    """Training on windows (causal encoder, many prefixes per window) computes exactly what
    encoding each prefix separately computes — the property the efficient loop relies on."""
    from models.generator.model import GenerativeRecommender, HistoryBatch
    from models.generator.sessions import window_batches

    rng = np.random.default_rng(0)
    seqs = [rng.integers(0, 30, rng.integers(1, 25)) for _ in range(6)]
    ts = [np.sort(rng.integers(0, 10**7, len(s))) for s in seqs]
    types = [rng.choice([1, 7], len(s)) for s in seqs]          # clicks and skips
    ev = FlatEvents.from_sequences(seqs, types, ts, n_items=25)  # items 25..29 unknown to the catalog
    ex = build_sessions(ev, SessionConfig(2))
    sids = np.stack([np.arange(25) % 5, np.arange(25) // 5], 1)
    torch.manual_seed(0)
    m = GenerativeRecommender(GeneratorConfig(level_sizes=(5, 5), d_model=32, heads=2, dropout=0.0,
                                              max_history=6, session_len=2)).eval()
    covered = []
    for wb in window_batches(ex, sids, 6, 16, batch_size=7, rng=np.random.default_rng(1)):
        out = m.forward_anchors(wb.window, wb.anchor_row, wb.anchor_len, wb.targets).logits
        for i in range(len(wb.anchor_row)):
            w, n = int(wb.anchor_row[i]), int(wb.anchor_len[i])
            h = HistoryBatch(*(x[w:w + 1, :n] for x in wb.window))
            ref = m(h, wb.targets[i:i + 1]).logits[0]
            fin = torch.isfinite(ref)
            assert torch.allclose(out[i][fin], ref[fin], atol=1e-5)
        covered.append(len(wb.anchor_row))
    assert sum(covered) == len(ex)                              # every example exactly once per epoch


# ---- data-parallel workers (what actors/ray_train.py runs on Ray Train) ---------------------------

def test_shard_examples_splits_by_user_without_overlap():
    from models.generator.training import shard_examples

    sids, seqs = _tiny()
    ev = FlatEvents.from_sequences(seqs, n_items=40, default_type=1)
    ex = build_sessions(ev, SessionConfig(session_len=2))
    assert shard_examples(ex, 0, 1) is ex
    shards = [shard_examples(ex, r, 3) for r in range(3)]
    anchors = np.concatenate([s.anchors for s in shards])
    assert sorted(anchors.tolist()) == sorted(ex.anchors.tolist())               # every example exactly once
    users = [set((np.searchsorted(ev.user_offsets, s.anchors, side="right") - 1).tolist()) for s in shards]
    assert all(not (a & b) for i, a in enumerate(users) for b in users[i + 1:])   # a user on one worker only
    assert all(len(s) for s in shards)


def test_data_parallel_config_is_checked():
    from models.generator.training import DataParallel

    with pytest.raises(ValueError, match="rank=2"):
        DataParallel(rank=2, world_size=2, all_max=lambda v: v)
    with pytest.raises(ValueError, match="needs all_max"):
        DataParallel(rank=0, world_size=2)


def test_workers_with_uneven_shards_run_the_same_steps_and_rank0_decides_the_stop():
    """Two workers in threads, the collective a barrier: user 0 has far more events than the rest, so the
    shards differ in size; both workers must still take the same steps and stop together."""
    import threading

    from models.generator.training import DataParallel

    rng = np.random.default_rng(1)
    space = np.array([(a, b, c) for a in range(4) for b in range(4) for c in range(4)])
    sids = space[rng.choice(len(space), 40, replace=False)]
    seqs = [rng.integers(0, 40, 60)] + [rng.integers(0, 40, 4) for _ in range(7)]
    ev = FlatEvents.from_sequences(seqs, n_items=40, default_type=1)
    ex = build_sessions(ev, SessionConfig(session_len=2))
    gcfg = GeneratorConfig(level_sizes=LEVELS, d_model=16, heads=2, enc_layers=1, dec_layers=1, max_history=8,
                           session_len=2)
    tcfg = TrainConfig(epochs=6, batch_size=8, lr=1e-3, patience=1, val_max_users=8, val_beam=4, progress=False)
    barrier, box, lock = threading.Barrier(2, timeout=60), {}, threading.Lock()   # a worker left alone fails

    def all_max(values):
        with lock:
            box.setdefault("in", []).append(values)
        if barrier.wait() == 0:
            box["out"] = [max(v) for v in zip(*box.pop("in"))]
        barrier.wait()
        out = box["out"]
        barrier.wait()
        return out

    epochs_seen = {0: [], 1: []}
    reports = {}

    def run(rank):
        dp = DataParallel(rank, 2, None, all_max, lambda e, r: epochs_seen[rank].append((e, r.steps)))
        torch.manual_seed(0)
        reports[rank] = train_generator(ex, ex, sids, gcfg, tcfg, parallel=dp)[1]

    threads = [threading.Thread(target=run, args=(r,), daemon=True) for r in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert set(reports) == {0, 1}
    assert epochs_seen[0] == epochs_seen[1] and reports[0].steps == reports[1].steps > 0
    assert reports[0].n_train_examples != reports[1].n_train_examples            # uneven shards
    assert len(reports[0].val_ndcg10) == reports[0].epochs_run and not reports[1].val_ndcg10   # rank 0 validates
    assert reports[1].epochs_run == reports[0].epochs_run
