"""Suite ``quality``: generator vs SASRec vs popularity, leave-one-out, full ranking (issue 5).

``genrec bench quality --dataset ml100k|synthetic|PATH [--quick]``.

Every model trains on the same training part of the same split, early-stops
on the same validation item, and ranks the whole catalog for every test user
with seen items excluded (:mod:`actors.eval_job`).

Equal compute: both models get the same training budget in **CPU seconds of
this process** (:mod:`models.budget`), not wall seconds — the development
machines are small and shared, and a wall budget would hand whichever model
trained while a neighbour was busy fewer steps. Each model stops earlier when
its validation NDCG stops improving. ``train_s`` (wall) and ``train_cpu_s``
report what each actually used.

The generator runs at the sizes that fit that budget on two CPU cores: one
decoder layer and two-item training sessions (the decoder's cost per example
grows with layers × session length × SID length, and it dominates a training
step), with its code embeddings started from the item embeddings the SIDs
were fitted on (:mod:`models.code_init`). The SID table shows what each of
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

SUITE = "quality"
DATASETS = ("ml100k", "synthetic")

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

#: Sizes for the shared 2-core CPU machines (scale up on a GPU): SASRec reads the last 50
#: events (random 50-event windows of longer histories during training).
SASREC = dict(max_len=50, lr=2e-3, eval_every=2, patience=3)
GENERATOR: dict = dict(d_model=64, heads=2, dec_layers=1, session_len=2)
#: The generator validates on every validation user each epoch and does not stop early: its
#: learning rate follows a cosine over the budget, so the low-rate last epochs are usually the
#: best, and a noisy validation sample with patience stopped some seeds at a high-rate epoch.
TRAIN = dict(val_max_users=0, val_beam=10, patience=0)
LEVELS = 3
INIT_CODES = True
EMBEDDINGS = "collab"  # co-occurrence only: MiniLM on titles costs minutes of CPU per run here


def _say(s: str) -> None:
    print(s, file=sys.stderr, flush=True)


def run(quick: bool = False, dataset: str | None = None) -> dict:
    import faiss
    import torch

    from dataclasses import replace

    from actors.eval_job import EvalConfig, merge_runs, run_eval_many

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
        base.update(seeds=(0, 1, 2), budget_s=BUDGET_FULL)
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
    }
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
    return {"config": config, "metrics": metrics, "tables": tables}
