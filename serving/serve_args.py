"""Plain-dict arguments → the Serve application (shared by ``serve run``/``serve deploy`` and ``genrec serve``).

The keys (all optional but ``bootstrap``), as written under ``args:`` in
``infra/serve_config.yaml``::

    bootstrap: 127.0.0.1:9092        # or the KAFKA_BOOTSTRAP environment variable
    namespace: ""                    # topic-name prefix (GENREC_TOPIC_NAMESPACE)
    experiments: infra/experiments.yaml
    admin_token: null                # or GENREC_ADMIN_TOKEN
    level_sizes: [16, 16, 8]         # codes per SID level, dedup level included
    models:                          # versions served side by side
      - {version: v1, path: /models/v1.pt}
      - {version: v2, seed: 2, config: {d_model: 64, heads: 2, enc_layers: 1, dec_layers: 1}}
    history: kafka                   # or shards (+ shard_names, shard_namespace, num_partitions)
    max_batch_size: null             # default by device: 4 on CPU, 32 on GPU (serving.recommender.DEFAULT_MAX_BATCH);
                                     # with continuous batching: the rows decoding together
    batch_wait_timeout_s: 0.0        # take what is queued: no wait when the queue is empty
    continuous_batching: true        # colocated: greedy requests join the running decode between items
    max_inflight: null               # default (serving.recommender.default_max_inflight): max_batch_size with
                                     # continuous batching, else 2 x max_batch_size (one batch running, one
                                     # queued), per recommender replica; beyond it: 503 + Retry-After
    ingress_slack: 1024              # ingress concurrency beyond max_inflight (its 503s carry adaptive Retry-After)
    ingress_queue: 64                # proxy queue in front of the ingress; beyond it the proxy sheds
    shed_retry_after_s: 5            # Retry-After of the proxy's own 503s
    reject_spread_s: 1.0             # the ingress answers each of its 503s after a random delay in [0, this)
    recommender_replicas: 1          # split topology: recommender replicas behind the ingress
    topology: colocated              # or split: ingress and batching recommender as two deployments
    rec_transport: grpc              # split: the ingress -> recommender handle's transport (or ray)
    indexer_actor: null              # name of a running item indexer actor: serve its SIDs (catalog deltas)
    indexer_namespace: null
"""

from __future__ import annotations

import os


def configs_from_args(args: dict):
    """``(AppSettings, RecommenderConfig)`` from the argument dict (errors name the bad key)."""
    from ingest.kafka_client import KafkaConfig
    from serving.app import AppSettings
    from serving.backend import ModelSpec
    from serving.recommender import RecommenderConfig, default_max_batch_size, default_max_inflight

    args = dict(args or {})
    known = {"bootstrap", "namespace", "experiments", "admin_token", "level_sizes", "models", "history",
             "shard_names", "shard_namespace", "num_partitions", "max_batch_size", "batch_wait_timeout_s",
             "max_inflight", "recommender_replicas", "ingress_replicas", "max_queued_requests", "max_history",
             "device", "max_k", "latency_target_ms", "indexer_actor", "indexer_namespace", "ingress_slack", "ingress_queue", "shed_retry_after_s",
             "reject_spread_s", "topology", "rec_transport", "continuous_batching"}
    unknown = set(args) - known
    if unknown:
        raise ValueError(f"unknown serve arguments {sorted(unknown)}; known: {sorted(known)}")
    bootstrap = args.get("bootstrap") or os.environ.get("KAFKA_BOOTSTRAP")
    if not bootstrap:
        raise ValueError("no Kafka bootstrap: set args.bootstrap in the Serve config or KAFKA_BOOTSTRAP=host:port")
    kafka = KafkaConfig(bootstrap=bootstrap,
                        namespace=args.get("namespace", os.environ.get("GENREC_TOPIC_NAMESPACE", "")))
    level_sizes = tuple(int(x) for x in args.get("level_sizes", (16, 16, 8)))
    models = []
    for m in args.get("models") or [{"version": "v1", "seed": 1}]:
        if not isinstance(m, dict) or "version" not in m:
            raise ValueError(f"models entry {m!r} must be a mapping with a version (and path or config)")
        cfg = dict(m.get("config") or {})
        if not m.get("path"):
            cfg.setdefault("level_sizes", level_sizes)
            cfg["level_sizes"] = tuple(cfg["level_sizes"])
            cfg.setdefault("d_model", 64)
            cfg.setdefault("heads", 2)
            cfg.setdefault("enc_layers", 1)
            cfg.setdefault("dec_layers", 1)
        models.append(ModelSpec(str(m["version"]), cfg, _resolve_path(m["path"]) if m.get("path") else None,
                                int(m.get("seed", 0))))
    rec = RecommenderConfig(
        kafka=kafka, level_sizes=level_sizes, models=tuple(models), history=args.get("history", "kafka"),
        shard_names=tuple(args.get("shard_names") or ()), shard_namespace=args.get("shard_namespace"),
        num_partitions=int(args.get("num_partitions", 0)), max_history=int(args.get("max_history", 50)),
        max_batch_size=int(default_max_batch_size(args.get("device", "auto")) if args.get("max_batch_size") is None
                           else args["max_batch_size"]),
        batch_wait_timeout_s=float(args.get("batch_wait_timeout_s", 0.0)),
        max_queued_requests=int(args.get("max_queued_requests", 256)),
        num_replicas=int(args.get("recommender_replicas", 1)), device=args.get("device", "auto"),
        indexer_actor=args.get("indexer_actor") or None, indexer_namespace=args.get("indexer_namespace"),
        continuous_batching=bool(args.get("continuous_batching", True)))
    exp = _resolve_path(args.get("experiments") or "")
    settings = AppSettings(kafka=kafka, experiments=str(exp),
                           admin_token=args.get("admin_token") or os.environ.get("GENREC_ADMIN_TOKEN") or None,
                           max_inflight=int(args.get("max_inflight")
                                            or default_max_inflight(rec, args.get("topology") or "colocated")),
                           num_replicas=int(args.get("ingress_replicas", 1)),
                           latency_target_ms=(float(args["latency_target_ms"]) if args.get("latency_target_ms")
                                              else None), max_k=int(args.get("max_k", 100)),
                           **({"reject_spread_s": float(args["reject_spread_s"])}
                              if args.get("reject_spread_s") is not None else {}),
                           **{k: int(args[k]) for k in ("ingress_slack", "ingress_queue", "shed_retry_after_s")
                              if args.get(k) is not None},
                           **{k: str(args[k]) for k in ("topology", "rec_transport") if args.get(k) is not None})
    return settings, rec


def _resolve_path(p: str) -> str:
    """A relative path that is not under the working directory resolves against the repository root.

    (``serve run`` builds the app in a Ray worker whose working directory may differ.)
    """
    from pathlib import Path

    if not p or "\n" in p or Path(p).is_absolute() or Path(p).exists():
        return str(Path(p).resolve()) if p and "\n" not in p and Path(p).exists() else p
    repo = Path(__file__).resolve().parents[1]
    return str(repo / p) if (repo / p).exists() else p


def app_from_args(args: dict):
    from serving.app import build_app

    settings, rec = configs_from_args(args)
    return build_app(settings, rec)
