"""Demo part: one round of the alignment loop on what the serving part left behind, then base vs aligned A/B.

The base model (registry version ``v1``) has served and the reward joiners have written ``rewards``
(the ``serving`` part). This part:

1. archives ``served``, ``rewards`` and ``user-events`` into the demo's Parquet archive (the exactly-once
   archiver, resuming where the ingest part stopped);
2. runs one round of :func:`actors.align_job.run_align_round` on it: the session reward model trained on
   served ⋈ rewards with point-in-time histories and reported (per-head AUC) on a later window, a small
   IPA round from ``v1`` (the world is the true scorer: a predicted gain without a true gain stops it),
   and the gate (held-out NDCG@10, validity, coverage, a simulated canary) with its checks printed;
3. shows generated sessions of 3 users before and after the round beside their true tastes;
4. if the gate passed: the candidate goes into arm ``aligned`` of a new experiment ``align-ab``
   (:func:`serving.rollout.assign_arm_model` on an experiments file, the replica loads the version and
   reloads the experiments through the admin API), simulated users (:func:`serving.simulator.run_simulation`)
   call the live HTTP app, the reward joiners run again, and the A/B report and its plot are printed.
   If the gate refused the candidate, the part says why and sends it no traffic.

Sizes are small (users, candidates, steps) so that ``make demo`` stays within about ten minutes on two cores.
"""

from __future__ import annotations

import time

import numpy as np

TITLE = "Alignment: session reward model, one IPA round, the gate, base vs aligned A/B on simulated users"

ALIGN_EXPERIMENT = "align-ab"
EXPERIMENTS = """
default: {model_version: v1, decode: {mode: greedy}}
layers:
  - name: alignment
    salt: demo-alignment
    experiments:
      - name: align-ab
        control: base
        guardrails: [{metric: ctr, max_relative_drop: 0.05}]
        arms:
          - {name: base, weight: 1, model_version: v1}
          - {name: aligned, weight: 1, model_version: v1}
"""


def _sizes(quick: bool) -> dict:
    """Round, gate and traffic sizes (printed by the part)."""
    if quick:
        return {"round": {"user_share": 1.0, "max_users": 48, "n_candidates": 8, "steps": 12, "pair_batch": 16,
                          "ntp_batch": 32, "eval_users": 64, "eval_beam": 2, "lr": 2e-4, "beta": 0.5},
                "gate": {"max_users": 120, "canary_users": 120, "beam": 10}, "rm_epochs": 8,
                "rate": 6.0, "duration_s": 30.0}
    return {"round": {"user_share": 1.0, "max_users": 96, "n_candidates": 8, "steps": 24, "pair_batch": 16,
                      "ntp_batch": 32, "eval_users": 100, "eval_beam": 2, "lr": 2e-4, "beta": 0.5},
            "gate": {"max_users": 200, "canary_users": 200, "beam": 10}, "rm_epochs": 12,
            "rate": 10.0, "duration_s": 45.0}


def _archive_feedback(ctx, root: str) -> None:
    from ingest.archive import ArchiveConfig, Archiver
    from ingest.contract import REWARDS, SERVED, USER_EVENTS

    cfg = ArchiveConfig(root=root, topics=(USER_EVENTS, SERVED, REWARDS), max_rows=20_000, flush_interval_s=2.0)
    t0 = time.perf_counter()
    with Archiver(ctx.kafka, cfg) as arch:
        res = arch.run(until_idle=True, timeout_s=120)
    ctx.say(f"archived served + rewards + user-events in {time.perf_counter() - t0:.1f} s: "
            + ", ".join(f"{t} +{s.rows:,}" for t, s in res.items()))


def _show_sessions(ctx, registry, versions: list[str], split, n_users: int = 3) -> None:
    """Generated sessions (beam, the served one) of a few users under each version, beside their tastes."""
    import torch

    from actors.aligner import UserHistories, generate_candidates
    from models.alignment.config import AlignConfig
    from models.evaluation.generator_ranker import build_trie

    world = ctx.world
    names = world.topic_names
    titles = {e.item_id: e.title for e in world.catalog}
    users = [u for u in range(split.n_users) if len(split.items[u]) >= 3][:n_users]
    hist = UserHistories([split.items[u] for u in users], [split.ts[u] for u in users],
                         [split.types[u] for u in users], user_ids=[str(split.user_ids[u]) for u in users])
    sessions = {}
    for v in versions:
        b = registry.load(v)
        trie = build_trie(b.item_sids, b.model.cfg.level_sizes)
        with torch.no_grad():
            items, _ = generate_candidates(b.model.eval(), hist, b.item_sids, trie, AlignConfig(), n=2)
        sessions[v] = items[:, 0]                                                      # [U, K]
    ids = [str(i) for i in split.item_ids]
    ts = int(world.cfg.start_ts_ms + world.cfg.duration_ms)

    def label(i: int) -> str:
        iid = ids[i]
        return f"{titles.get(iid, iid)} [{names[int(world.item_primary[world.item_index(iid)])]}]"

    ctx.say("\ngenerated sessions before / after alignment (beam, seen items excluded), beside true tastes:")
    for b, u in enumerate(users):
        uid = str(split.user_ids[u])
        pref = world.preference(uid)
        top = ", ".join(f"{names[int(k)]} {pref[k]:.2f}" for k in np.argsort(-pref)[:3])
        ctx.say(f"  user {uid} — true tastes: {top}")
        for v in versions:
            row = [int(i) for i in sessions[v][b] if i >= 0]
            val = world.expected_values([uid], [[ids[i] for i in row]], ts)[0]
            ctx.say(f"    {v:<14} (true value {val:+.3f}): " + "; ".join(label(i) for i in row))


def _admin(url: str, token: str, path: str, body: dict) -> dict:
    import httpx

    r = httpx.post(url + path, json=body, headers={"Authorization": f"Bearer {token}"}, timeout=120)
    if r.status_code != 200:
        raise RuntimeError(f"POST {path}: {r.status_code} {r.text[:300]}")
    return r.json()


def _ab(ctx, app, registry, candidate: str, sizes: dict) -> None:
    """Candidate into arm ``aligned``, simulated users over HTTP, reward joiners, the A/B report and its plot."""
    from infra.demo_parts.serving import start_reward_joiners, wait_for_windows, print_report
    from serving.rollout import assign_arm_model
    from serving.simulator import SimulatorConfig, run_simulation

    path = ctx.workdir / "experiments-align.yaml"
    path.write_text(EXPERIMENTS)
    assign_arm_model(path, ALIGN_EXPERIMENT, "aligned", candidate, registry)       # refuses a failed verdict
    loaded = _admin(app.url, app.admin_token, "/v1/admin/models/load", {"model_version": candidate})
    _admin(app.url, app.admin_token, "/v1/admin/experiments/reload", {"yaml": path.read_text()})
    ctx.say(f"\n{candidate} put into arm 'aligned' of {ALIGN_EXPERIMENT} ({path.name}, rewritten by "
            f"assign_arm_model); the replica loaded it (models {loaded.get('models')}) and reloaded the experiments")
    sup = start_reward_joiners(ctx)
    users = min(len(ctx.world.user_ids), 400 if ctx.quick else 1000)
    cfg = SimulatorConfig(url=app.url, users=users, rate=sizes["rate"], duration_s=sizes["duration_s"], k=5,
                          concurrency=16, timeout_s=60.0, seed=11)
    ctx.say(f"simulated users: {users} of the world, {cfg.rate:g} sessions/s for {cfg.duration_s:g} s through "
            f"POST /v1/recommend, their answers through POST /v1/events (serving.simulator)")
    try:
        summary = run_simulation(cfg, ctx.world)
        end_ms = int(time.time() * 1000)
        for line in summary.lines():
            ctx.say("  " + line)
        wait_for_windows(ctx, sup, app.url, list(ctx.world.user_ids)[:users], end_ms)
    finally:
        sup.shutdown()
        ctx.say("  reward joiners stopped")
    print_report(ctx, app.url, ALIGN_EXPERIMENT, "A/B report base vs aligned", "ab_align.png")


def run(ctx) -> None:
    import torch

    from actors.align_job import AlignJobConfig, RewardModelStore, read_window, run_align_round, split_in_catalog
    from actors.model_registry import ModelRegistry
    from models.evaluation.gate import render_checks

    app = ctx.state.get("serve_app")
    archive = ctx.state.get("archive_root")
    if app is None or not app.up or not app.registry or archive is None:
        ctx.say("skipped: needs the ingest_archive, generator and serving parts (the served base model, its "
                "rewards and the archive)")
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        _archive_feedback(ctx, archive)
        sizes = _sizes(ctx.quick)
        r = sizes["round"]
        ctx.say(f"round sizes: {r['max_users']} users x {r['n_candidates']} beam candidates, {r['steps']} DPO+NTP "
                f"steps; reward model {sizes['rm_epochs']} epochs at most; gate on {sizes['gate']['max_users']} "
                f"held-out users + a canary of {sizes['gate']['canary_users']} simulated users")
        cfg = AlignJobConfig(archive=archive, registry=app.registry, window_days=0, rm_epochs=sizes["rm_epochs"],
                             rm_max_seconds=40.0, min_examples=50, round=r, gate={**sizes["gate"], "world": "none"})
        candidate = "v1-a1"
        res = run_align_round(cfg, parent="v1", version=candidate, world=ctx.world, say=ctx.say)
        registry = ModelRegistry(app.registry)
        if res.rm_report:
            from models.reward_model.data import HEADS

            ctx.say("reward model per head on the later window (AUC / expected calibration error / mean "
                    "predicted vs observed rate):")
            for h in HEADS:
                g = res.rm_report.get
                if not g(f"rm_n_{h}", 0):
                    ctx.say(f"  {h:<6} n/a: no session in the later window has this target (no watch fraction "
                            "in the events)" if h == "watch" else f"  {h:<6} n/a: no target in the later window")
                    continue
                ctx.say(f"  {h:<6} AUC {g(f'rm_auc_{h}', float('nan')):.3f}  ECE {g(f'rm_ece_{h}', float('nan')):.3f}  "
                        f"pred {g(f'rm_mean_pred_{h}', float('nan')):.3f} vs obs {g(f'rm_mean_obs_{h}', float('nan')):.3f}"
                        f"  (n {int(g(f'rm_n_{h}', 0))})")
            ctx.say(f"  stored beside the candidate: {RewardModelStore(registry).root}/{res.reward_model}/ "
                    "(safetensors + JSON)")
        if res.gate is not None:
            ctx.say("\ngate checks:\n" + render_checks(res.gate.verdict))
        window = read_window(archive, 0)
        split, _ = split_in_catalog(window.user_events, registry.load("v1").item_ids)
        shown = ["v1"] + ([candidate] if res.round is not None and res.round.published else [])
        _show_sessions(ctx, registry, shown, split)
        if res.refused:
            ctx.say(f"\nthe round was REFUSED: {res.refused}\nno candidate was published, so nothing takes "
                    "traffic; base v1 keeps serving")
            return
        if not res.passed:
            ctx.say(f"\nthe gate REFUSED {candidate}: {res.gate.verdict.reason}\nit never receives traffic "
                    "(an arm or a promote naming it is refused); base v1 keeps serving")
            return
        ctx.say(f"\nthe gate PASSED {candidate} (round + gate {res.round_s:.0f} s): it may enter an A/B arm")
        _ab(ctx, app, registry, candidate, sizes)
    finally:
        torch.set_num_threads(threads)
        app.shutdown()
