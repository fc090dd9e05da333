"""Calibration of the simulator's user model (docs/decisions/030-simulator-user-model.md): behaviour and
session value of the baseline policies on a world's users at the end of its stream.

Run: ``PYTHONPATH=. .venv/bin/python tests/ingest/user_model_calibration.py`` (the small and the default
world; a markdown table per world). ``tests/ingest/test_user_response.py`` asserts on :func:`calibrate`.
"""

from __future__ import annotations

import time

from models.evaluation.closed_loop import STATS, closed_loop_stats
from models.evaluation.policies import POLICIES, baseline_sessions

#: Users, items per session, answers per session, seed of the calibration.
N_USERS, K, DRAWS, SEED = 400, 6, 64, 0


def calibrate(world, n_users: int = N_USERS, k: int = K, draws: int = DRAWS, seed: int = SEED,
              ts: int | None = None) -> dict[str, dict[str, float]]:
    """:func:`closed_loop_stats` of every baseline policy for the world's first ``n_users`` users at ``ts``
    (default: the end of the stream)."""
    ts = world.cfg.start_ts_ms + world.cfg.duration_ms if ts is None else ts
    users = world.user_ids[:n_users]
    sessions = baseline_sessions(world, users, k, ts, seed=seed)
    return closed_loop_stats(world, users, sessions, ts, draws=draws, seed=seed)


def table(stats: dict[str, dict[str, float]]) -> str:
    """A markdown table: one row per policy, one column per statistic."""
    rows = ["| policy | " + " | ".join(STATS) + " |", "|---" * (len(STATS) + 1) + "|"]
    for p in POLICIES:
        rows.append(f"| {p} | " + " | ".join(f"{stats[p][s]:.3f}" for s in STATS) + " |")
    return "\n".join(rows)


def main() -> None:
    from ingest.synthetic import SyntheticWorld, WorldConfig

    for name, cfg in (("WorldConfig.small(seed=0)", WorldConfig.small(0)), ("WorldConfig(seed=0)", WorldConfig())):
        t0 = time.perf_counter()
        world = SyntheticWorld(cfg)
        stats = calibrate(world)
        print(f"**{name}**: {N_USERS} users, sessions of {K} items at the end of the stream, {DRAWS} answers "
              f"per session, seed {SEED} ({time.perf_counter() - t0:.1f} s)\n")
        print(table(stats) + "\n")


if __name__ == "__main__":
    main()
