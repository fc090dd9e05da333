"""``genrec eval``: offline comparison of the generator, SASRec and popularity (leave-one-out, full ranking)."""

from __future__ import annotations

import json
import sys


def register(sub) -> None:
    from infra.cpu_priority import add_background_arg

    p = sub.add_parser(
        "eval", help="offline evaluation: generator vs SASRec vs popularity (leave-one-out, full ranking)",
        description="Split the data leave-one-out (last item test, second-to-last validation), train each model "
                    "on the rest, rank the whole catalog for every test user and print HR@{1,5,10,50}, "
                    "NDCG@{5,10,50}, MRR, coverage and invalid-ID rate per model; --out writes it all as JSON.")
    p.add_argument("--data", default="synthetic",
                   help="synthetic | ml100k | interactions CSV/TSV (user,item,timestamp[,title]) | "
                        "SASRec text file (user item item ...) | Parquet archive directory (default: synthetic)")
    p.add_argument("--models", default="generator,sasrec,popularity",
                   help="comma-separated subset of generator,sasrec,popularity")
    p.add_argument("--seeds", default="0", help="comma-separated training seeds (mean ± std is reported)")
    p.add_argument("--max-users", type=int, default=0, help="evaluate on the first N users only (0 = all)")
    p.add_argument("--all-events", action="store_true",
                   help="keep non-engaged events (impressions, skips) in the sequences too")
    p.add_argument("--tokenizer", choices=("rq_kmeans", "rq_vae"), default="rq_kmeans")
    p.add_argument("--levels", type=int, default=3, help="residual SID levels (a dedup level is added)")
    p.add_argument("--codebook-size", type=int, default=0, help="codes per level (0 = sized from the catalog)")
    p.add_argument("--embeddings", choices=("collab", "content", "fusion"), default="collab",
                   help="item embeddings the SIDs quantise (default collab, the quality suite's: co-occurrence "
                        "of the training sequences; fusion: text + co-occurrence, as genrec train; "
                        "co-occurrence alone when items have no text)")
    p.add_argument("--no-transition-prior", action="store_true",
                   help="rank by the generator alone: without the last item's co-occurrence prior, whose weight "
                        "is otherwise chosen on the validation users (the result keeps the ranking without it: "
                        "ndcg@10_no_prior)")
    p.add_argument("--budget-s", type=float, default=0.0, help="time cap per training run in seconds (0 = none)")
    p.add_argument("--budget-clock", choices=("wall", "cpu"), default="cpu",
                   help="what --budget-s counts: wall time, or this process's CPU time (equal compute for "
                        "every model on a shared machine)")
    p.add_argument("--epochs", type=int, default=0, help="cap on training epochs of both models (0 = defaults)")
    add_background_arg(p)
    p.add_argument("--threads", type=int, default=0,
                   help="torch CPU threads (0 = fit the machine: half its usable CPUs, 1 on 2 cores)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda (default: CUDA when present)")
    p.add_argument("--out", default=None, help="write the full result (config, per-seed metrics, summary) as JSON")
    p.add_argument("--json", action="store_true", help="print the result as JSON instead of a table")
    p.set_defaults(func=run)


def run(args) -> int:
    from actors.eval_job import EvalConfig, run_eval, write_json
    from models.evaluation.budget import fit_threads

    if getattr(args, "background", False):
        from infra.cpu_priority import make_background

        make_background()

    fit_threads(getattr(args, "threads", 0))
    try:
        import faiss

        faiss.omp_set_num_threads(1)  # OpenMP spinning on small shared machines costs more than it gains
    except ImportError:
        pass

    try:
        seeds = tuple(int(s) for s in args.seeds.split(",") if s.strip())
    except ValueError:
        raise ValueError(f"--seeds {args.seeds!r}: give comma-separated integers, e.g. 0,1,2") from None
    extra = {}
    if args.epochs:
        extra = {"sasrec": {"epochs": args.epochs}, "train": {"epochs": args.epochs}}
    cfg = EvalConfig(dataset=args.data, models=tuple(m.strip() for m in args.models.split(",") if m.strip()),
                     seeds=seeds, max_users=args.max_users, engaged_only=not args.all_events,
                     tokenizer=args.tokenizer, levels=args.levels, codebook_size=args.codebook_size,
                     embeddings=args.embeddings, budget_s=args.budget_s, budget_clock=args.budget_clock,
                     device=args.device, transition_prior=not args.no_transition_prior, **extra)
    say = (lambda s: print(s, file=sys.stderr, flush=True)) if args.json else (lambda s: print(s, flush=True))
    result = run_eval(cfg, say=say)
    if args.json:
        print(json.dumps({k: result[k] for k in ("data", "summary")}))
    else:
        print()
        print(result["table"])
    if args.out:
        path = write_json(result, args.out)
        print(f"wrote {path}", file=sys.stderr)
    return 0
