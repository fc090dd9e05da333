"""A Parquet archive of one A/B experiment's traffic with a planted effect (tests of reports and promotion)."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq

from ingest.archive import file_name, topic_dir
from ingest.arrow_schemas import to_table
from ingest.contract import ITEM_EVENTS, REWARDS, SERVED, ItemEvent, Reward, Served


def ab_archive(root, exp_cfg, effect: float, n_users: int = 1000, seed: int = 0, experiment: str = "align-ab",
               treated: str = "aligned") -> str:
    """``genrec archive``'s layout under ``root``: served, rewards and item-events records of ``experiment``
    (users assigned by its own salt); arm ``treated``'s users engage ``1 + effect`` times as often as the others."""
    exp = exp_cfg.experiment(experiment)
    rng = np.random.default_rng(seed)
    day = 86_400_000
    t0 = 20 * day
    items = [f"i{k}" for k in range(50)]
    served, rewards = [], []
    for i in range(n_users):
        u = f"user-{i}"
        arm = exp.arm_for(u).name
        p = rng.beta(1, 6)
        for s in range(int(rng.integers(1, 5))):
            ts = t0 + int(rng.integers(0, day))
            rid = f"r{i}-{s}"
            shown = [items[k] for k in rng.choice(len(items), 5, replace=False)]
            served.append(Served(request_id=rid, user_id=u, ts=ts, model_version="m", experiment=experiment, arm=arm,
                                 items=shown, sids=[[0]] * 5, scores=[0.0] * 5, latency_ms=float(rng.uniform(5, 20))))
            q = min(1.0, p * (1 + effect)) if arm == treated else p
            e = float(rng.binomial(5, q))
            comp = {"impressions": 5.0, "clicks": e, "engaged": e, "events": e, "dislikes": 0.0, "skips": 0.0,
                    "watch_ms": 1000.0 * e}
            rewards.append(Reward(request_id=rid, user_id=u, experiment=experiment, arm=arm, model_version="m",
                                  components=comp, reward=e, window_closed_ts=ts + 60_000, ts=ts))
    item_events = [ItemEvent(item_id=k, ts=t0 - 30 * day, embedding=[0.0, 1.0]) for k in items]
    for topic, recs in ((SERVED, served), (REWARDS, rewards), (ITEM_EVENTS, item_events)):
        d = topic_dir(root, topic) / "date=2026-01-20"
        d.mkdir(parents=True)
        pq.write_table(to_table(recs, topic, [0] * len(recs), range(len(recs))), d / file_name(0, 0, len(recs), 0, 1))
    return str(root)
