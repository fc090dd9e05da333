"""Closed-loop value of served sessions: the mean reward users give them when they answer.

Offline NDCG asks whether the held-out next item is in a list; a simulated user
(:meth:`ingest.synthetic.SyntheticWorld.respond`, the model of
:mod:`ingest.user_response`) answers a *served session* instead — attention by
position, a logit choice between click, pass and dislike by true taste, fatigue
on repeated topics, leaving when bored — and the product's session reward
scores the answer. Comparing the generator's sessions with the baselines of
:mod:`models.evaluation.policies` (random, popularity, each user's true best
items) on the same users, served at the same time with the same request ids
(so every policy meets the same random draws: common random numbers), says how
much of the attainable value the generator reaches.
:func:`closed_loop_stats` gives the same comparison without sampling noise in
the reward (the world's expected session value) plus the behaviour rates the
calibration is stated in (docs/decisions/030-simulator-user-model.md).

Pure: the world's ``respond`` (or the world itself, only read) and the reward
function are passed in (this module does no I/O and imports neither the world
nor serving).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import numpy as np

#: ``respond(user_id, item_ids, request_id, ts) -> events`` (the world's answer to a served session).
Respond = Callable[[str, list[str], str, int], list]
#: ``reward(events) -> float`` (e.g. ``serving.experiments.rewards.session_reward``).
Reward = Callable[[Sequence], float]


@dataclass(frozen=True)
class ClosedLoopResult:
    """Mean (and per-user) reward of each policy's sessions; ``n_users`` users each."""

    mean: dict[str, float]
    per_user: dict[str, np.ndarray]   # policy -> [U] reward of each user's session
    n_users: int

    def as_dict(self, prefix: str = "closed_loop_reward_") -> dict[str, float]:
        return {f"{prefix}{k}": v for k, v in self.mean.items()}


def closed_loop_rewards(users: Sequence[str], sessions: Mapping[str, Sequence[Sequence[str]]], respond: Respond,
                        reward: Reward, ts: int, request_prefix: str = "cl") -> ClosedLoopResult:
    """Serve ``sessions[policy][u]`` (item ids, best first) to ``users[u]`` at ``ts`` and score the answers.

    Every policy's session of user ``u`` is served under the same request id
    ``{request_prefix}-{u}`` so that the world's random draws are shared across
    policies. Empty slots (``''`` / None) are dropped before serving.
    """
    users = [str(u) for u in users]
    if not sessions:
        raise ValueError("sessions must name at least one policy, e.g. {'generator': [...]}")
    for name, s in sessions.items():
        if len(s) != len(users):
            raise ValueError(f"policy {name!r} has {len(s)} sessions for {len(users)} users; give one per user")
    per_user: dict[str, np.ndarray] = {}
    for name, s in sessions.items():
        r = np.zeros(len(users), dtype=np.float64)
        for u, (uid, items) in enumerate(zip(users, s)):
            items = [str(i) for i in items if i is not None and str(i) != ""]
            if items:
                r[u] = float(reward(respond(uid, items, f"{request_prefix}-{u}", int(ts))))
        per_user[name] = r
    mean = {k: float(v.mean()) if len(v) else float("nan") for k, v in per_user.items()}
    return ClosedLoopResult(mean, per_user, len(users))


#: Rates :func:`closed_loop_stats` reports per policy.
STATS = ("mean_reward", "mean_reward_se", "click_rate", "click_rate_reached", "dislike_rate", "skip_rate", "leave_rate",
         "reached_share", "watch_min")


def closed_loop_stats(world, users: Sequence[str], sessions: Mapping[str, Sequence[Sequence[str]]], ts: int,
                      draws: int = 64, seed: int = 0, reward=None) -> dict[str, dict[str, float]]:
    """Per policy: the mean expected session reward (``world.expected_values``, the true value) and the
    user model's behaviour over ``draws`` answers of every session (``world.respond_arrays``).

    ``mean_reward_se`` is the standard error of ``mean_reward`` over users.
    Rates are per served item (``click_rate``, ``dislike_rate``, ``skip_rate``)
    or per impression the user reached (``click_rate_reached``); ``leave_rate``
    is the share of sessions the user left with items still to come,
    ``reached_share`` the share of served items the user reached, and
    ``watch_min`` the mean watch minutes per session. Every policy meets the
    same draws (seeded by ``seed``), different users and answers independent ones.
    """
    users = [str(u) for u in users]
    if not sessions:
        raise ValueError("sessions must name at least one policy, e.g. {'popularity': [...]}")
    uidx = np.array([world.user_index(u) for u in users], dtype=np.int64)
    k_max = max((len(s) for sess in sessions.values() for s in sess), default=0)
    # one row of draws per (user, answer), shared by every policy (drawn position by position, so a shorter
    # session reads the same draws as the first slots of a longer one)
    u_all = world.draw_uniforms(np.random.default_rng(seed), len(users) * draws, k_max)  # [U * draws, K_max, n]
    out: dict[str, dict[str, float]] = {}
    for name, sess in sessions.items():
        if len(sess) != len(users):
            raise ValueError(f"policy {name!r} has {len(sess)} sessions for {len(users)} users; give one per user")
        K = max((len(s) for s in sess), default=0)
        if K == 0:
            raise ValueError(f"policy {name!r} serves no items")
        items = np.full((len(users), K), -1, dtype=np.int64)  # [U, K]
        for j, s in enumerate(sess):
            items[j, :len(s)] = world.session_index(list(s))  # −1: not shown
        rep_items = np.repeat(items, draws, axis=0)  # [U * draws, K]
        rep_users = np.repeat(uidx, draws)
        rep_ts = np.full(rep_users.size, int(ts), dtype=np.int64)
        r = world.respond_arrays(u_all[:, :K], rep_users, rep_items, rep_ts)
        _, _, shown, length, _ = world.session_arrays(rep_users, rep_items, rep_ts)
        served = max(1, int(shown.sum()))
        values = world.expected_values(users, [list(s) for s in sess], ts, reward=reward, seed=seed)
        out[name] = {"mean_reward": float(values.mean()),
                     "mean_reward_se": float(values.std(ddof=1) / np.sqrt(values.size)) if values.size > 1 else 0.0,
                     "click_rate": float(r.click.sum() / served),
                     "click_rate_reached": float(r.click.sum() / max(1, int(r.reached.sum()))),
                     "dislike_rate": float(r.dislike.sum() / served),
                     "skip_rate": float(r.skip.sum() / served),
                     "leave_rate": float(r.left.mean()),
                     "reached_share": float(r.reached.sum() / served),
                     "watch_min": float(r.watch_ms(length).sum() / 60_000.0 / rep_users.size)}
    return out

