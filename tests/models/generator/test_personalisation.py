"""A trained generator must give users with different tastes different sessions that follow their tastes.

A tiny world with clearly separated tastes: 4 topics of 16 items, every user
likes one topic (the most popular topic has as many users as the other three
together, so a model that ignores the history and serves the popular topic to
everyone scores well on loss). Item SIDs carry the topic in their first code,
as content SIDs do. After a short training run, sessions generated for fresh
users (histories drawn from their topic) must (a) differ across users of
different topics and (b) land in each user's topic far more often than chance.
The check itself is shown to fail on a model that gives everyone one session.
"""

from __future__ import annotations

import numpy as np
import torch

from models.evaluation.generator_ranker import GeneratorRanker
from models.evaluation.personalisation import inter_user_diversity
from models.generator.model import GeneratorConfig
from models.generator.training import TrainConfig, fit_generator

N_TOPICS, PER_TOPIC, HIST, K = 4, 16, 10, 3
N_ITEMS = N_TOPICS * PER_TOPIC
USER_SHARE = np.array([0.5, 1 / 6, 1 / 6, 1 / 6])  # topic 0 is as popular as the other three together


def _topic(item: np.ndarray) -> np.ndarray:
    return np.asarray(item) // PER_TOPIC


def _item_sids() -> tuple[np.ndarray, tuple[int, ...]]:
    """[N_ITEMS, 3]: (topic, 2 sub-codes of 4 within the topic, a unique last code)."""
    i = np.arange(N_ITEMS)
    within = i % PER_TOPIC
    sids = np.stack([_topic(i), within // 4, within % 4], 1).astype(np.int64)
    return sids, (N_TOPICS, 4, 4)


def _user(rng: np.random.Generator, topic: int, n: int) -> np.ndarray:
    """A history of ``n`` distinct items: 90% from the user's topic (Zipf within it), 10% anywhere."""
    w = 1.0 / np.arange(1, PER_TOPIC + 1)
    out: list[int] = []
    while len(out) < n:
        if rng.random() < 0.9:
            it = topic * PER_TOPIC + int(rng.choice(PER_TOPIC, p=w / w.sum()))
        else:
            it = int(rng.integers(N_ITEMS))
        if it not in out:
            out.append(it)
    return np.array(out, dtype=np.int64)


def _world(rng: np.random.Generator, n_users: int) -> tuple[list[np.ndarray], np.ndarray]:
    topics = rng.choice(N_TOPICS, size=n_users, p=USER_SHARE)
    return [_user(rng, int(t), HIST + 2) for t in topics], topics


def session_personalisation(sessions: np.ndarray, topics: np.ndarray) -> tuple[float, float, float]:
    """(inter-user diversity of the sessions, share of session items in the user's topic, the chance share)."""
    div = inter_user_diversity(sessions, sessions.shape[1], N_ITEMS)
    ok = sessions >= 0
    match = float((_topic(np.maximum(sessions, 0)) == topics[:, None])[ok].mean())
    return div, match, 1.0 / N_TOPICS


def assert_personalised(sessions: np.ndarray, topics: np.ndarray) -> None:
    div, match, chance = session_personalisation(sessions, topics)
    assert div > 0.5, f"users get nearly the same sessions (inter-user diversity {div:.2f})"
    assert match > chance + 0.45, f"sessions follow the users' tastes {match:.2f} of the time (chance {chance:.2f})"
    # users of different topics: their sessions share (almost) nothing
    for a in range(N_TOPICS):
        for b in range(a + 1, N_TOPICS):
            sa = set(sessions[topics == a].ravel()) - {-1}
            sb = set(sessions[topics == b].ravel()) - {-1}
            if sa and sb:
                assert len(sa & sb) < 0.5 * min(len(sa), len(sb)), f"topics {a} and {b} get the same items"


def test_trained_generator_personalises_sessions():
    torch.manual_seed(0)
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    seqs, _ = _world(rng, 400)
    sids, sizes = _item_sids()
    gcfg = GeneratorConfig(level_sizes=sizes, d_model=32, heads=2, enc_layers=1, dec_layers=1, dropout=0.1,
                           max_history=HIST, session_len=2)
    tcfg = TrainConfig(epochs=6, batch_size=128, lr=5e-3, patience=0, val_metric="loss", progress=False, seed=0)
    model, rep = fit_generator(seqs, sids, gcfg, tcfg)
    assert rep.train_targets > 0 and rep.train_loss[-1] < rep.train_loss[0]

    # fresh users, 10 per topic, histories from their topic
    topics = np.repeat(np.arange(N_TOPICS), 10)
    hist = [_user(rng, int(t), HIST) for t in topics]
    # the serving interface: K items, item after item, by session beam search, seen items excluded
    sessions = GeneratorRanker(model, sids).sessions(hist, K, beam_width=4).numpy()      # [40, K]
    assert (sessions >= 0).all()
    assert not any(np.isin(row, h).any() for row, h in zip(sessions, hist))
    assert_personalised(sessions, topics)

    # the check fails for a model that gives every user one session (the bug this test guards against)
    same = np.repeat(sessions[:1], len(sessions), axis=0)
    try:
        assert_personalised(same, topics)
    except AssertionError:
        pass
    else:
        raise AssertionError("assert_personalised accepted identical sessions for every user")
