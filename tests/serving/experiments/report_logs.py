"""Logs of an experiment as the topics hold them: a pre-period, the experiment's sessions, item arrivals.

Shared by the report-input tests (in memory, on the embedded broker, through the CLI and the archive):
``decode-ab`` (the demo's config: greedy control, beam4 treatment, every user in it), users with a latent
click propensity that shows in both periods (so CUPED has something to explain), served records that carry
the ingress's latency (beam4 slower), and a catalog with a few items that arrived an hour before the
experiment (new) besides the old ones, one of them retired.
"""

from __future__ import annotations

import numpy as np

from actors.reward_spec import session_components
from ingest.contract import ItemEvent, Reward, Served, UserEvent
from infra.demo_parts.serving import EXPERIMENTS
from serving.experiments.config import ExperimentsConfig

T0 = 1_767_225_600_000          # the experiment's first exposure (2026-01-01)
HOUR, DAY = 3_600_000, 86_400_000
EXP = ExperimentsConfig.from_yaml(EXPERIMENTS).experiment("decode-ab")
OLD_ITEMS = [f"i{k}" for k in range(200)]
NEW_ITEMS = [f"n{k}" for k in range(10)]


def items() -> list[ItemEvent]:
    """Old items (30 days before), new ones (an hour before), an update of an old one and a retired one."""
    out = [ItemEvent(it, T0 - 30 * DAY + k) for k, it in enumerate(OLD_ITEMS)]
    out += [ItemEvent(it, T0 - HOUR + k) for k, it in enumerate(NEW_ITEMS)]
    out.append(ItemEvent("i0", T0 - DAY, title="updated"))          # not a new arrival: first seen 30 days ago
    out.append(ItemEvent("i1", T0 - DAY, op="retire"))               # out of the catalog
    return out


def _session(rng, rid, user, ts, exp, arm, p, latency):
    shown = [str(x) for x in rng.choice(OLD_ITEMS[2:], size=5, replace=False)]
    if rng.random() < 0.4:
        shown[-1] = NEW_ITEMS[int(rng.integers(len(NEW_ITEMS)))]
    s = Served(request_id=rid, user_id=user, ts=ts, model_version="v1", experiment=exp, arm=arm, items=shown,
               sids=[[1, 2]] * 5, scores=[0.0] * 5, latency_ms=latency)
    clicks = [UserEvent(event_id=f"{rid}-{k}", user_id=user, item_id=shown[k], type="click", ts=ts + 100,
                        request_id=rid, position=k) for k in range(5) if rng.random() < p]
    comp = session_components(s, clicks)  # what the reward joiners write
    r = Reward(request_id=rid, user_id=user, experiment=exp, arm=arm, model_version="v1", components=comp,
               reward=comp["clicks"], window_closed_ts=ts + 60_000, ts=ts)
    return s, r


def logs(n_users: int = 240, per_user: int = 3, pre_users: int | None = None, latency: bool = True,
         seed: int = 0) -> tuple[list[Served], list[Reward], list[ItemEvent]]:
    """``(served, rewards, item events)``: a pre-period week (``pre_users`` users, default all, outside any
    experiment) and ``per_user`` sessions of every user in ``decode-ab`` from :data:`T0` on."""
    rng = np.random.default_rng(seed)
    served, rewards = [], []
    pre_users = n_users if pre_users is None else pre_users
    for u in range(n_users):
        user = f"u{u}"
        p = float(rng.beta(1.5, 6))
        if u < pre_users:
            for k in range(int(rng.integers(2, 5))):
                s, r = _session(rng, f"p{u}-{k}", user, T0 - 7 * DAY + int(rng.integers(0, 7 * DAY - HOUR)),
                                "", "", p, 15.0 if latency else None)
                served.append(s)
                rewards.append(r)
        arm = EXP.arm_for(user).name
        for k in range(per_user):
            lat = (float(rng.uniform(10, 30)) if arm == "greedy" else float(rng.uniform(40, 80))) if latency else None
            s, r = _session(rng, f"r{u}-{k}", user, T0 + u * 1000 + k * 60_000, "decode-ab", arm, p, lat)
            served.append(s)
            rewards.append(r)
    return served, rewards, items()
