"""``genrec train``: train the generator on a data set or the Parquet archive and save a model file."""

from __future__ import annotations

import json


def register(sub) -> None:
    from infra.cpu_priority import add_background_arg

    p = sub.add_parser("train", help="train the generative recommender (SIDs + encoder-decoder) and save it",
                       description="Load a data set (synthetic, ml100k, a file) or the Parquet archive, embed "
                                   "items (content / collaborative / fusion), fit the SID tokenizer, train the "
                                   "generator with early stopping on a leave-one-out validation item (through Ray "
                                   "Train: one worker here, data-parallel workers on a cluster; --no-ray for "
                                   "in-process), report test NDCG@10 / HR@10 and write one model file: "
                                   "safetensors weights and SIDs with the JSON config, tokenizer version and "
                                   "metrics in its header.")
    p.add_argument("--data", default="synthetic",
                   help="synthetic | synthetic-small | ml100k | a file (CSV/TSV user,item,timestamp[,title] "
                        "or SASRec text) (default: synthetic)")
    p.add_argument("--archive", default="", help="train from this Parquet archive root instead of --data")
    p.add_argument("--out", default="generator.safetensors",
                   help="model file to write: safetensors weights with the JSON config in its header "
                        "(default generator.safetensors)")
    p.add_argument("--registry", default="", metavar="URI",
                   help="also publish the trained model into this model registry (a directory or pyarrow URI), "
                        "as --version; `genrec serve --registry URI` serves it once promoted")
    p.add_argument("--version", default="", help="registry version name (default: train-<UTC time>)")
    p.add_argument("--parent", default=None, help="registry version this one was trained from (lineage)")
    p.add_argument("--embeddings", default="fusion", choices=["content", "collab", "fusion"])
    p.add_argument("--tokenizer", default="rq_kmeans", choices=["rq_kmeans", "rq_vae"])
    p.add_argument("--levels", type=int, default=3, help="residual SID levels (plus one de-duplication level)")
    p.add_argument("--codebook-size", type=int, default=0, help="codes per level (0: from the catalog size)")
    p.add_argument("--d-model", type=int, default=64)
    p.add_argument("--layers", type=int, default=2, help="encoder layers (and decoder layers unless --dec-layers)")
    p.add_argument("--dec-layers", type=int, default=0, help="decoder layers (0 = same as --layers); the decoder "
                   "dominates training cost on CPU")
    p.add_argument("--heads", type=int, default=2)
    p.add_argument("--dropout", type=float, default=0.2)
    p.add_argument("--max-history", type=int, default=50)
    p.add_argument("--session-len", type=int, default=3, help="items per generated session")
    p.add_argument("--moe-experts", type=int, default=0, help="mixture-of-experts decoder FFN (0 = dense)")
    p.add_argument("--epochs", type=int, default=30, help="upper bound; early stopping usually ends sooner")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--patience", type=int, default=3)
    p.add_argument("--max-seconds", type=float, default=0.0, help="training time budget (0 = none)")
    p.add_argument("--max-events", type=int, default=0, help="use only the first N user events (0 = all)")
    p.add_argument("--threads", type=int, default=0,
                   help="torch CPU threads (0 = fit the machine: half its usable CPUs, 1 on 2 cores)")
    p.add_argument("--quick", action="store_true", help="a short run: 3 epochs on at most 20k events")
    p.add_argument("--no-init-codes", action="store_true",
                   help="start SID code embeddings at random instead of from the item embeddings the SIDs "
                        "were fitted on")
    p.add_argument("--ray-workers", type=int, default=1, metavar="N",
                   help="train through Ray Train with N data-parallel workers (default 1: one worker on this "
                        "machine; more on a Ray cluster, RAY_ADDRESS); 0 = in this process, like --no-ray")
    p.add_argument("--no-ray", action="store_true", help="train in this process, without Ray (quick runs, tests)")
    p.add_argument("--gpu", action="store_true", help="give every Ray Train worker a GPU")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_background_arg(p)
    p.add_argument("--json", action="store_true", help="print the saved metrics as JSON at the end")
    p.set_defaults(func=run)


def run(args) -> int:
    import torch

    from actors.train_job import TrainJobConfig, run_train_job
    if args.background:
        from infra.cpu_priority import make_background

        make_background()
    from models.generator.training import TrainConfig

    from models.evaluation.budget import fit_threads

    fit_threads(args.threads)
    ray_train = None
    if args.ray_workers < 0:
        raise ValueError(f"--ray-workers {args.ray_workers}: use N >= 1 workers, or 0 (--no-ray) for in-process")
    if args.ray_workers and not args.no_ray:
        import os

        from actors.ray_train import RayTrainConfig

        if args.gpu and not torch.cuda.is_available() and not os.environ.get("RAY_ADDRESS"):
            raise ValueError("--gpu: this machine has no CUDA GPU; drop --gpu, or set RAY_ADDRESS to a Ray "
                             "cluster with GPU workers")
        # each worker gets the CPU threads in-process training would use (fit_threads above)
        ray_train = RayTrainConfig(num_workers=args.ray_workers, use_gpu=args.gpu,
                                   cpus_per_worker=max(1, torch.get_num_threads()))
    epochs, max_events = args.epochs, args.max_events
    if args.quick:
        epochs = min(epochs, 3)
        max_events = min(max_events or 20_000, 20_000)
    cfg = TrainJobConfig(
        data=args.data, archive=args.archive, out=args.out, embeddings=args.embeddings, tokenizer=args.tokenizer,
        levels=args.levels, codebook_size=args.codebook_size, max_events=max_events, seed=args.seed,
        init_codes=not args.no_init_codes,
        generator=dict(d_model=args.d_model, enc_layers=args.layers, dec_layers=args.dec_layers or args.layers, heads=args.heads,
                       dropout=args.dropout, max_history=args.max_history, session_len=args.session_len,
                       moe_experts=args.moe_experts),
        train=TrainConfig(epochs=epochs, batch_size=args.batch_size, lr=args.lr, patience=args.patience,
                          max_seconds=args.max_seconds, seed=args.seed, progress=not args.no_progress,
                          val_max_users=1000))
    res = run_train_job(cfg, ray_train=ray_train)
    if args.registry:
        info = publish_result(res, args.registry, args.version, args.parent)
        print(f"published {info.version} into {args.registry}; promote it with "
              f"`genrec models promote {info.version} --registry {args.registry}` after its gate")
    if args.json:
        print(json.dumps(res.metrics))
    return 0


def publish_result(res, registry: str, version: str = "", parent: str | None = None):
    """Publish a :class:`actors.train_job.TrainJobResult` into the model registry; its :class:`VersionInfo`."""
    import time

    from actors.model_registry import ModelRegistry
    from models.generator.checkpoint import GeneratorBundle
    from models.sid.tokenizer import tokenizer_to_bytes

    bundle = GeneratorBundle(res.model, None, tuple(str(i) for i in res.data.split.item_ids), res.item_sids,
                             res.tokenizer.version, tokenizer_to_bytes(res.tokenizer))
    name = version or time.strftime("train-%Y%m%d-%H%M%S", time.gmtime())
    return ModelRegistry(registry).publish(name, bundle, parent=parent, metrics=res.metrics,
                                           data_window={"data": res.metrics.get("data")})
