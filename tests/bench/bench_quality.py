"""Suite ``quality``: generator vs SASRec vs popularity, leave-one-out, full ranking (issue 5).

``genrec bench quality --dataset ml100k|synthetic|PATH [--quick]``.

Every model trains on the same training part of the same split, early-stops
on the same validation item, and ranks the whole catalog for every test user
with seen items excluded (:mod:`actors.eval_job`). Training is budgeted
(SASRec in seconds, the generator in optimizer steps — see the constants
below) so that the suite finishes on the shared 2-core development machines;
neither model reaches full convergence in those budgets there, and
``train_s_*`` report what each actually used. Raise the budgets on a bigger
machine.

Full run: 3 seeds (mean and sample std), plus a table of how the generator's
quality changes with the semantic-ID settings (levels, codebook size) and the
tokenizer (RQ-KMeans vs RQ-VAE), one seed each. ``--quick``: a user subset,
short budgets, one seed, a two-row SID table — same metric names.
"""

from __future__ import annotations

import sys
import time

SUITE = "quality"
DATASETS = ("ml100k", "synthetic")

#: Synthetic world used by the suite (a mid-sized world: ~1.5k users, ~2k items).
SYNTHETIC = dict(n_users=1500, n_items=2000, n_topics=16, seed=7)

#: Training budgets. SASRec: wall-clock seconds per run. Generator: optimizer steps (its loop
#: checks a time budget only at epoch ends, and one ML-100K epoch is ~380 steps), so the
#: cosine schedule completes inside the budget. Measured train_s of both are reported.
BUDGET_FULL, BUDGET_QUICK = 180.0, 15.0
GEN_STEPS_FULL, GEN_STEPS_QUICK = 60, 4
SID_STEPS_FULL, SID_STEPS_QUICK = 30, 3

#: Semantic-ID settings compared in the table: (tokenizer, levels, codebook size; 0 = auto).
SID_GRID_FULL = [("rq_kmeans", 3, 0), ("rq_kmeans", 2, 0), ("rq_kmeans", 3, 16), ("rq_vae", 3, 0)]
SID_GRID_QUICK = [("rq_kmeans", 3, 0), ("rq_vae", 3, 0)]

#: Sizes for the shared 2-core CPU machines (scale up on a GPU): SASRec reads the last 50
#: events (random 50-event windows of longer histories during training); the generator is
#: the default architecture at d_model 64.
SASREC = dict(max_len=50, lr=2e-3, eval_every=2, patience=3)
GENERATOR: dict = dict(d_model=64, heads=2)
TRAIN = dict(val_max_users=200, val_beam=10, patience=3)
EMBEDDINGS = "collab"  # co-occurrence only: MiniLM on titles costs minutes of CPU per run here


def _say(s: str) -> None:
    print(s, file=sys.stderr, flush=True)


def run(quick: bool = False, dataset: str | None = None) -> dict:
    import faiss
    import torch

    from actors.eval_job import EvalConfig, load_log, run_eval

    dataset = dataset or "ml100k"
    torch.set_num_threads(2)
    faiss.omp_set_num_threads(1)  # OpenMP spinning on a loaded 2-core machine costs more than it gains
    kw = SYNTHETIC if dataset == "synthetic" else {}
    log = load_log(dataset, **kw)
    base = dict(dataset=dataset, dataset_kw=kw, sasrec=dict(SASREC), generator=dict(GENERATOR),
                train={**TRAIN, "max_steps": GEN_STEPS_FULL}, embeddings=EMBEDDINGS)
    if quick:
        base.update(max_users=200, seeds=(0,), budget_s=BUDGET_QUICK,
                    train={**TRAIN, "val_max_users": 50, "max_steps": GEN_STEPS_QUICK})
    else:
        base.update(seeds=(0, 1, 2), budget_s=BUDGET_FULL)
    cfg = EvalConfig(**base)
    t0 = time.time()
    main = run_eval(cfg, say=_say, log_=log)
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
        "sid_s_generator": g["sid_s"]["mean"] if "sid_s" in g else 0.0,
        "test_users": float(main["data"]["test_users"]), "seeds": float(len(cfg.seeds)),
    }
    tables = [f"**{dataset}: generator vs SASRec vs popularity** (leave-one-out, full ranking over "
              f"{main['data']['items']} items, {main['data']['test_users']} test users, mean ± std over "
              f"{len(cfg.seeds)} seed(s); train_s in seconds)\n\n" + main["table"]]

    # how quality changes with the semantic-ID settings (generator only, first seed)
    rows = ["| tokenizer | levels | codebook | SID level sizes | NDCG@10 | HR@10 | HR@50 | invalid | train_s |",
            "|---|---|---|---|---|---|---|---|---|"]
    grid = SID_GRID_QUICK if quick else SID_GRID_FULL
    steps = SID_STEPS_QUICK if quick else SID_STEPS_FULL
    for tok, levels, k in grid:
        same_as_main = (tok, levels, k) == (cfg.tokenizer, cfg.levels, cfg.codebook_size)
        if same_as_main:
            run0 = main["runs"]["generator"][0]
            note = " (main run, seed 0)"
        else:
            sub = EvalConfig(**{**base, "models": ("generator",), "seeds": cfg.seeds[:1], "tokenizer": tok,
                                "levels": levels, "codebook_size": k,
                                "train": {**base["train"], "max_steps": steps}})
            run0 = run_eval(sub, say=_say, log_=log)["runs"]["generator"][0]
            note = ""
        m, info = run0["metrics"], run0["info"]
        rows.append(f"| {tok}{note} | {levels} | {k or 'auto'} | {tuple(info.get('level_sizes', ()))} | "
                    f"{m['ndcg@10']:.4f} | {m['hr@10']:.4f} | {m['hr@50']:.4f} | {m['invalid_rate']:.4f} | "
                    f"{m['train_s']:.0f} |")
    tables.append(f"**{dataset}: generator quality vs semantic-ID settings** (seed 0; {steps} training "
                  f"steps per run except the main run's {cfg.train['max_steps']})\n\n" + "\n".join(rows))
    config = {"data": main["data"], "budget_s": cfg.budget_s, "sid_steps": steps, "seeds": list(cfg.seeds),
              "max_users": cfg.max_users, "sasrec": cfg.sasrec, "generator": cfg.generator, "train": cfg.train,
              "tokenizer": cfg.tokenizer, "levels": cfg.levels, "embeddings": cfg.embeddings,
              "wall_s": round(time.time() - t0, 1)}
    return {"config": config, "metrics": metrics, "tables": tables}
