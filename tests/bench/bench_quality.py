"""Suite ``quality``: generator vs SASRec vs popularity, leave-one-out, full ranking (issue 5).

``genrec bench quality --dataset ml100k|toys|synthetic|PATH [--quick]``.

Every model trains on the same training part of the same split, early-stops
on the same validation item, and ranks the whole catalog for every test user
with seen items excluded (:mod:`actors.eval_job`).

Equal compute: both models get the same training budget in **CPU seconds of
this process** (:mod:`models.evaluation.budget`), not wall seconds — the development
machines are small and shared, and a wall budget would hand whichever model
trained while a neighbour was busy fewer steps. Each model stops earlier when
its validation NDCG stops improving. ``train_s`` (wall) and ``train_cpu_s``
report what each actually used.

The generator runs at the sizes that fit that budget on two CPU cores: one
decoder layer and two-item training sessions (the decoder's cost per example
grows with layers × session length × SID length, and it dominates a training
step), with its code embeddings started from the item embeddings the SIDs
were fitted on (:mod:`models.generator.code_init`). The SID table shows what each of
those choices is worth.

Full run: 3 seeds (mean and sample std), plus a table of how the generator's
quality changes with the semantic-ID settings (levels, codebook size), the
tokenizer (RQ-KMeans vs RQ-VAE) and the code initialisation, one seed each at
a smaller budget. ``--quick``: a user subset, short budgets, one seed, a
two-row SID table — same metric names.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

if str(Path(__file__).resolve().parents[2]) not in sys.path:       # run as a script: the project on the path
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from actors.eval_job import GENERATOR_DEFAULTS, SASREC_DEFAULTS, TRAIN_DEFAULTS, EvalConfig  # noqa: E402

SUITE = "quality"
DATASETS = ("ml100k", "toys", "synthetic")

#: Synthetic world used by the suite (a mid-sized world: ~1.5k users, ~2k items).
SYNTHETIC = dict(n_users=1500, n_items=2000, n_topics=16, seed=7)

#: Training budget per model run, CPU seconds of this process (both models, every seed).
BUDGET_FULL, BUDGET_QUICK = 800.0, 20.0
#: Budget of each run in the SID-settings table (one seed, generator only).
SID_BUDGET_FULL, SID_BUDGET_QUICK = 60.0, 10.0
THREADS = 1  # on a CPU-second budget one thread wastes nothing on synchronisation
#: Runs side by side (seeds and SID settings are independent; CPU budgets keep them comparable).
WORKERS = int(os.environ.get("GENREC_BENCH_WORKERS", "4"))

#: Semantic-ID settings compared in the table: (tokenizer, levels, codebook size; 0 = auto, init codes).
SID_GRID_FULL = [("rq_kmeans", 3, 0, True), ("rq_kmeans", 3, 0, False), ("rq_kmeans", 2, 0, True),
                 ("rq_kmeans", 3, 16, True), ("rq_vae", 3, 0, True)]
SID_GRID_QUICK = [("rq_kmeans", 3, 0, True), ("rq_vae", 3, 0, True)]

#: Users per data set (the first N by raw id, for training and test alike; 0 = all). Toys keeps its first
#: 6,000 of 19,412 users, as decision 026 did: the generator's beam ranking of every user would take longer
#: than its training, and three seeds of both models must fit a working session.
EVAL_USERS = {"toys": 6000}

#: Every model runs at ``genrec eval``'s defaults, the best settings measured (actors/eval_job.py), so the
#: table shows what a user of ``genrec eval`` gets.
SASREC, GENERATOR, TRAIN = dict(SASREC_DEFAULTS), dict(GENERATOR_DEFAULTS), dict(TRAIN_DEFAULTS)
LEVELS, INIT_CODES, EMBEDDINGS = EvalConfig.levels, EvalConfig.init_codes, EvalConfig.embeddings


def _say(s: str) -> None:
    print(s, file=sys.stderr, flush=True)


def run(quick: bool = False, dataset: str | None = None) -> dict:
    import faiss
    import torch

    from dataclasses import replace

    from actors.eval_job import merge_runs, run_eval_many

    dataset = dataset or "ml100k"
    torch.set_num_threads(THREADS)
    faiss.omp_set_num_threads(1)  # OpenMP spinning on a loaded 2-core machine costs more than it gains
    kw = SYNTHETIC if dataset == "synthetic" else {}
    base = dict(dataset=dataset, dataset_kw=kw, sasrec=dict(SASREC), generator=dict(GENERATOR),
                train=dict(TRAIN), embeddings=EMBEDDINGS, levels=LEVELS, init_codes=INIT_CODES,
                budget_clock="cpu")
    if quick:
        base.update(max_users=200, seeds=(0,), budget_s=BUDGET_QUICK, train={**TRAIN, "val_max_users": 50})
    else:
        base.update(seeds=(0, 1, 2), budget_s=BUDGET_FULL, max_users=EVAL_USERS.get(dataset, 0))
    load0 = os.getloadavg()[0]
    cfg = EvalConfig(**base)
    grid = SID_GRID_QUICK if quick else SID_GRID_FULL
    sid_budget = SID_BUDGET_QUICK if quick else SID_BUDGET_FULL
    # every run is independent and CPU-budgeted: run them side by side (results do not depend on it)
    mains = [replace(cfg, seeds=(seed,)) for seed in cfg.seeds]
    subs = [replace(cfg, models=("generator",), seeds=cfg.seeds[:1], tokenizer=tok, levels=levels,
                    codebook_size=k, init_codes=init, budget_s=sid_budget) for tok, levels, k, init in grid]
    t0 = time.time()
    _say(f"quality/{dataset}: {len(mains)} comparison runs + {len(subs)} SID-settings runs, "
         f"{WORKERS} worker processes x {THREADS} thread(s)")
    results = run_eval_many(mains + subs, workers=WORKERS, threads=THREADS, say=_say)
    main = merge_runs(results[:len(mains)])
    s = main["summary"]
    g, r, p = s["generator"], s["sasrec"], s["popularity"]
    ratios = [gr["metrics"]["ndcg@10"] / max(sr["metrics"]["ndcg@10"], 1e-12)
              for gr, sr in zip(main["runs"]["generator"], main["runs"]["sasrec"])]
    metrics = {
        "ndcg10_generator": g["ndcg@10"]["mean"], "ndcg10_generator_std": g["ndcg@10"]["std"],
        "ndcg10_sasrec": r["ndcg@10"]["mean"], "ndcg10_sasrec_std": r["ndcg@10"]["std"],
        "ndcg10_popularity": p["ndcg@10"]["mean"],
        "hr10_generator": g["hr@10"]["mean"], "hr10_generator_std": g["hr@10"]["std"],
        "hr10_sasrec": r["hr@10"]["mean"], "hr10_sasrec_std": r["hr@10"]["std"],
        "hr10_popularity": p["hr@10"]["mean"],
        "ndcg10_ratio": g["ndcg@10"]["mean"] / max(r["ndcg@10"]["mean"], 1e-12),
        "ndcg10_ratio_min": min(ratios), "ndcg10_ratio_max": max(ratios),
        "hr50_generator": g["hr@50"]["mean"], "hr50_sasrec": r["hr@50"]["mean"],
        "mrr_generator": g["mrr"]["mean"], "mrr_sasrec": r["mrr"]["mean"],
        "coverage10_generator": g["coverage@10"]["mean"], "coverage10_sasrec": r["coverage@10"]["mean"],
        "invalid_rate": g["invalid_rate"]["max"],
        "seen_rate_max": max(s[m]["seen_rate"]["max"] for m in s),
        "train_s_generator": g["train_s"]["mean"], "train_s_sasrec": r["train_s"]["mean"],
        "train_cpu_s_generator": g["train_cpu_s"]["mean"], "train_cpu_s_sasrec": r["train_cpu_s"]["mean"],
        "sid_s_generator": g["sid_s"]["mean"] if "sid_s" in g else 0.0,
        "test_users": float(main["data"]["test_users"]), "seeds": float(len(cfg.seeds)),
        "diversity_users_top10": g["diversity@10"]["mean"], "diversity_users_top10_sasrec": r["diversity@10"]["mean"],
        "train_targets_per_s_generator": g["train_targets"]["mean"] / max(g["train_cpu_s"]["mean"], 1e-9),
        "train_targets_per_s_sasrec": r["train_targets"]["mean"] / max(r["train_cpu_s"]["mean"], 1e-9),
    }
    if "ndcg@10_no_prior" in g:   # the generator's own ranking, without the last item's transition prior
        no_prior = [gr["metrics"]["ndcg@10_no_prior"] / max(sr["metrics"]["ndcg@10"], 1e-12)
                    for gr, sr in zip(main["runs"]["generator"], main["runs"]["sasrec"])]
        metrics.update({"ndcg10_generator_no_prior": g["ndcg@10_no_prior"]["mean"],
                        "ndcg10_ratio_no_prior": sum(no_prior) / len(no_prior),
                        "transition_weight_mean": g["transition_weight"]["mean"]})
    pers = personalisation_run(cfg, dataset)
    metrics.update(pers["metrics"])
    tables = [f"**{dataset}: generator vs SASRec vs popularity** (leave-one-out, full ranking over "
              f"{main['data']['items']} items, {main['data']['test_users']} test users, mean ± std over "
              f"{len(cfg.seeds)} seed(s); train_s in seconds)\n\n" + main["table"]]

    # how quality changes with the semantic-ID settings (generator only, first seed, smaller budget)
    rows = ["| tokenizer | levels | codebook | init codes | SID level sizes | NDCG@10 | HR@10 | HR@50 | invalid | "
            "epochs | train_cpu_s |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for (tok, levels, k, init), res in zip(grid, results[len(mains):]):
        run0 = res["runs"]["generator"][0]
        m, info = run0["metrics"], run0["info"]
        rows.append(f"| {tok} | {levels} | {k or 'auto'} | {'yes' if init else 'no'} | "
                    f"{tuple(info.get('level_sizes', ()))} | {m['ndcg@10']:.4f} | {m['hr@10']:.4f} | "
                    f"{m['hr@50']:.4f} | {m['invalid_rate']:.4f} | {m.get('epochs', float('nan')):.0f} | "
                    f"{m['train_cpu_s']:.0f} |")
    tables.append(f"**{dataset}: generator quality vs semantic-ID settings** (seed 0, {sid_budget:.0f} CPU-s "
                  f"training budget per run, vs {cfg.budget_s:.0f} in the main comparison)\n\n" + "\n".join(rows))
    config = {"data": main["data"], "budget_cpu_s": cfg.budget_s, "sid_budget_cpu_s": sid_budget,
              "seeds": list(cfg.seeds), "threads": THREADS, "max_users": cfg.max_users, "sasrec": cfg.sasrec,
              "generator": cfg.generator, "train": cfg.train, "tokenizer": cfg.tokenizer, "levels": cfg.levels,
              "init_codes": cfg.init_codes, "embeddings": cfg.embeddings, "load_avg_at_start": round(load0, 1),
              "workers": WORKERS, "wall_s": round(time.time() - t0, 1)}
    tables.append(pers["table"])
    config["personalisation"] = pers["config"]
    return {"config": config, "metrics": metrics, "tables": tables}


#: Users served in the closed loop, and the length of each served session.
CLOSED_LOOP_USERS, SESSION_LEN = 500, 5


def personalisation_run(cfg, dataset: str) -> dict:
    """One more generator run (first seed, same settings and budget) in this process, for what the
    pooled runs cannot return: the share of test users it beats popularity for, and on the synthetic
    world the closed-loop reward of its served sessions vs popularity's and the oracle's
    (:mod:`models.evaluation.closed_loop`; same users, same request ids, same time)."""
    import numpy as np

    from actors.eval_job import load_log, run_generator, split_log
    from models.baselines.popularity import PopularityRanker
    from models.decoding.settings import DecodeSettings
    from models.evaluation.personalisation import inter_user_diversity, personalisation_report

    t0 = time.time()
    log_ = load_log(cfg.dataset, cfg.engaged_only, **cfg.dataset_kw)
    split = split_log(log_, cfg.max_users)
    test = split.test()
    ranker, _ = run_generator(split, cfg.seeds[0], cfg, _say, titles=log_.titles)
    pop = PopularityRanker(split.n_items).fit(split.train_valid())
    gen_top, pop_top = ranker.rank(test.histories, 10), pop.rank(test.histories, 10)
    rep = personalisation_report(gen_top, test.targets, split.n_items, baseline_ranked=pop_top)
    metrics = {"beats_popularity_generator": rep.beats_baseline, "loses_to_popularity_generator": rep.loses_to_baseline}
    rows = ["| policy | served to | diversity@10 (lists) | beats popularity | loses to popularity | "
            "session diversity@5 | closed-loop reward |", "|---|---|---|---|---|---|---|"]
    n = min(CLOSED_LOOP_USERS, len(test))
    sub = test.subset(np.arange(n))
    gen_s = ranker.sessions(sub.histories, SESSION_LEN).numpy()
    sampled = ranker.sessions(sub.histories, SESSION_LEN, settings=DecodeSettings(mode="sample", seed=0)).numpy()
    pop_s = pop_top[:n, :SESSION_LEN].numpy()
    metrics["diversity_users_sessions_generator"] = inter_user_diversity(gen_s, SESSION_LEN, split.n_items)
    rewards = {}
    if dataset == "synthetic":
        from ingest.synthetic import SyntheticWorld, WorldConfig
        from models.evaluation.closed_loop import closed_loop_rewards
        from serving.experiments.rewards import session_reward

        world = SyntheticWorld(WorldConfig(**cfg.dataset_kw))
        ts = world.cfg.start_ts_ms + world.cfg.duration_ms
        ids = split.item_ids
        users = [str(split.user_ids[u]) for u in sub.users]
        name = lambda row: [str(ids[i]) for i in row if i >= 0]  # noqa: E731
        sessions = {"generator": [name(r) for r in gen_s], "generator_sampled": [name(r) for r in sampled],
                    "popularity": [name(r) for r in pop_s],
                    "oracle": [world.best_items(u, SESSION_LEN, ts) for u in users]}
        res = closed_loop_rewards(users, sessions, world.respond, session_reward, ts, request_prefix="quality")
        rewards = res.mean
        metrics.update(res.as_dict())
    fmt = lambda x: f"{x:.3f}" if x == x else "—"  # noqa: E731
    rows.append(f"| generator | {n} | {fmt(rep.diversity)} | {fmt(rep.beats_baseline)} | {fmt(rep.loses_to_baseline)} | "
                f"{fmt(metrics['diversity_users_sessions_generator'])} | {fmt(rewards.get('generator', float('nan')))} |")
    rows.append(f"| generator, sampled sessions (T=1) | {n} | — | — | — | "
                f"{fmt(inter_user_diversity(sampled, SESSION_LEN, split.n_items))} | "
                f"{fmt(rewards.get('generator_sampled', float('nan')))} |")
    rows.append(f"| popularity | {n} | {fmt(inter_user_diversity(pop_top, 10, split.n_items))} | — | — | "
                f"{fmt(inter_user_diversity(pop_s, SESSION_LEN, split.n_items))} | "
                f"{fmt(rewards.get('popularity', float('nan')))} |")
    if rewards:
        rows.append(f"| oracle (true best items) | {n} | — | — | — | — | {fmt(rewards['oracle'])} |")
    table = (f"**{dataset}: personalisation** (one generator run, seed {cfg.seeds[0]}, {cfg.budget_s:.0f} CPU-s; "
             f"lists over all {len(test)} test users; sessions of {SESSION_LEN} items by beam search (width 4, seen "
             f"excluded) for the first {n}; closed-loop reward = mean session reward when the synthetic world's "
             "users answer the served sessions)\n\n" + "\n".join(rows))
    return {"metrics": metrics, "table": table, "config": {"users_served": n, "session_len": SESSION_LEN,
                                                           "wall_s": round(time.time() - t0, 1)}}
