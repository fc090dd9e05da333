"""The recommender's config: the ``recommender`` section of ``genrec.yaml`` (:class:`RecommenderConfig`)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Callable, Sequence

from ingest.kafka_client import KafkaConfig
from serving.requests import ModelSpec

if TYPE_CHECKING:
    import numpy as np

    from ingest.contract import ItemEvent

SEEDED_LEVEL_SIZES = (16, 16, 8)   # an untrained seeded model's SID levels when neither it nor the config names them


@dataclass(frozen=True)
class RecommenderConfig:
    """Everything a recommender needs to build its backend (picklable, validated); ``kafka`` is the kafka section.

    ``registry``: the model registry (a directory or pyarrow URI, :mod:`actors.model_registry`).
    ``models``: the versions served side by side, each ``{version}`` (a registry version, loaded by name) or
    ``{version, seed, config}`` (an untrained generator, for tests and speed measurements); a seeded
    model's ``config.level_sizes`` defaults to ``level_sizes`` (or :data:`SEEDED_LEVEL_SIZES`). Empty with a
    registry: its promoted version (:func:`serving.application.load_configs` resolves it).
    ``level_sizes``: the catalog's SID levels; ``None`` takes the first served version's own, and a
    registry version that carries its catalog (item ids and SIDs, as ``genrec train`` publishes it) seeds the
    live catalog with it, so ``genrec train`` → ``genrec models promote`` → ``genrec serve`` needs no setting.
    ``history``: ``"kafka"`` (fold user-events in the recommender) or ``"shards"`` (read the sequence
    shard actors ``shard_names`` in ``shard_namespace``); ``history_timeout_s``: the longest a read from the
    shards may take — users of a shard that has not answered by then (restarting) get a cold-start session
    (:class:`serving.live_state.ShardHistory`).
    ``max_batch_size``: the rows decoding together (continuous batching; static batches for the modes that
    cannot join between items); ``None``: by device (:data:`DEFAULT_MAX_BATCH`).
    ``batch_wait_timeout_s``: how long an idle recommender waits for company before a static batch.
    ``max_queued_requests``: split topology: the recommender deployment's queue before Serve sheds (-1: no bound).
    ``num_replicas``: split topology: recommender replicas. ``num_cpus``: per recommender.
    ``process_niceness``: the recommender process runs at this nice value when permitted, so decoding
    gets a core before the HTTP side. ``start_timeout_s``: bound on its start-up (model, feeds).
    ``indexer_actor``: a running item indexer actor (in ``indexer_namespace``) whose catalog deltas
    (its tokenizer's SIDs) the catalog follows, instead of hashing ``item-events`` itself.
    ``promoted_poll_s``: with a registry, how often the recommender reads the registry's promoted pointer;
    a new promoted version is loaded beside the running ones and becomes the default when loaded (no
    restart; :mod:`serving.recommender_follow`). 0 turns following off.
    ``seed_catalog`` (``(item_ids, sids [N, D])``) and ``sid_assigner`` (codes of new items; default: a hash,
    :class:`serving.live_state.HashSidAssigner`) are set in code, not in YAML.
    """

    kafka: KafkaConfig
    # models and their catalog
    level_sizes: tuple[int, ...] | None = None
    registry: str | None = None
    models: tuple[ModelSpec, ...] = ()
    promoted_poll_s: float = 5.0
    seed_catalog: tuple | None = field(default=None, hash=False, compare=False)
    sid_assigner: Callable[[Sequence[ItemEvent]], np.ndarray] | None = field(default=None, hash=False, compare=False)
    item_feed: bool = True
    indexer_actor: str | None = None
    indexer_namespace: str | None = None
    # where histories come from
    history: str = "kafka"
    shard_names: tuple[str, ...] = ()
    shard_namespace: str | None = None
    num_partitions: int = 0
    max_history: int = 50
    history_timeout_s: float = 1.0
    # batching
    max_batch_size: int | None = None
    batch_wait_timeout_s: float = 0.0
    max_queued_requests: int = 256
    # the process and its resources
    num_replicas: int = 1
    torch_threads: int = 1
    device: str = "auto"
    num_cpus: float = 0.5
    process_niceness: int = -5
    start_timeout_s: float = 300.0

    def __post_init__(self) -> None:
        if not isinstance(self.kafka, KafkaConfig):
            raise TypeError("RecommenderConfig.kafka is the kafka section's KafkaConfig; set it there")
        if self.level_sizes is not None:
            object.__setattr__(self, "level_sizes", tuple(int(x) for x in self.level_sizes))
        object.__setattr__(self, "shard_names", tuple(self.shard_names))
        object.__setattr__(self, "models", tuple(self._model_spec(m) for m in self.models))
        if self.history not in ("kafka", "shards"):
            raise ValueError(f"RecommenderConfig.history={self.history!r}: use 'kafka' or 'shards'")
        if isinstance(self.history_timeout_s, bool) or not isinstance(self.history_timeout_s, (int, float)) or \
                not 0.01 <= self.history_timeout_s <= 60:
            raise ValueError(f"RecommenderConfig.history_timeout_s={self.history_timeout_s!r} must be seconds in "
                             "[0.01, 60], e.g. 1.0 (a slower shard's users are served without history)")
        if self.history == "shards" and (not self.shard_names or self.num_partitions < 1):
            raise ValueError("RecommenderConfig.history='shards' needs shard_names and num_partitions "
                             "(from the SequenceSupervisor)")
        if not self.models and not self.registry:
            raise ValueError("RecommenderConfig.models is empty and there is no registry: set recommender.registry "
                             "(its promoted version is served) or list models (genrec serve --registry URI "
                             "[--model VERSION])")
        if len({m.version for m in self.models}) != len(self.models):
            raise ValueError(f"duplicate model versions in {[m.version for m in self.models]}")
        if isinstance(self.promoted_poll_s, bool) or not isinstance(self.promoted_poll_s, (int, float)) or \
                not (self.promoted_poll_s == 0 or 0.05 <= self.promoted_poll_s <= 3600):
            raise ValueError(f"RecommenderConfig.promoted_poll_s={self.promoted_poll_s!r} must be 0 (do not follow "
                             "the registry's promoted version) or seconds in [0.05, 3600], e.g. 5")
        if self.max_batch_size is not None and not 1 <= self.max_batch_size <= 1024:
            raise ValueError(f"RecommenderConfig.max_batch_size={self.max_batch_size} must be in 1..1024 "
                             "(or null: by device)")
        if not 0 <= self.batch_wait_timeout_s <= 1:
            raise ValueError(f"RecommenderConfig.batch_wait_timeout_s={self.batch_wait_timeout_s} must be in [0, 1]")
        if self.max_queued_requests < -1 or self.max_queued_requests == 0:
            raise ValueError(f"RecommenderConfig.max_queued_requests={self.max_queued_requests}: use -1 "
                             "(unbounded) or a positive bound")
        if self.num_replicas < 1:
            raise ValueError(f"RecommenderConfig.num_replicas={self.num_replicas} must be >= 1")
        if not -20 <= self.process_niceness <= 19:
            raise ValueError(f"RecommenderConfig.process_niceness={self.process_niceness} must be a nice value "
                             "in -20..19 (lower runs first)")
        if self.start_timeout_s <= 0:
            raise ValueError(f"RecommenderConfig.start_timeout_s={self.start_timeout_s} must be > 0 seconds")

    def _model_spec(self, m) -> ModelSpec:
        """A ``models`` entry as a :class:`ModelSpec` (YAML gives mappings)."""
        if isinstance(m, ModelSpec):
            return m
        if isinstance(m, dict) and "path" in m:
            raise ValueError(f"RecommenderConfig.models entry {m!r}: models are not loaded from paths; publish "
                             "the model into the registry (genrec train --registry URI --version NAME) and "
                             "list {version: NAME} with recommender.registry set")
        if not isinstance(m, dict) or "version" not in m or set(m) - {"version", "seed", "config"}:
            raise ValueError(f"RecommenderConfig.models entry {m!r}: use {{version}} (a registry version) or "
                             "{version, seed, config} (untrained)")
        if not m.get("config"):
            if not self.registry:
                raise ValueError(f"RecommenderConfig.models entry {m!r} names a registry version but "
                                 "recommender.registry is not set")
            return ModelSpec(str(m["version"]), registry=self.registry)
        cfg = dict(m["config"])
        cfg["level_sizes"] = tuple(cfg.get("level_sizes", self.level_sizes or SEEDED_LEVEL_SIZES))
        return ModelSpec(str(m["version"]), cfg, None, int(m.get("seed", 0)))

    @property
    def max_ongoing_requests(self) -> int:
        """A recommender deployment replica's concurrency: the rows decoding and as many waiting."""
        return 2 * (self.max_batch_size or max(DEFAULT_MAX_BATCH.values()))


def cluster_has_gpu(device: str = "auto") -> bool:
    """Whether recommenders will decode on a GPU: the Ray cluster has one and ``device`` allows it."""
    if device not in ("auto", "cuda"):
        return False
    try:
        import ray

        return ray.is_initialized() and ray.cluster_resources().get("GPU", 0) >= 1
    except Exception:  # noqa: BLE001 - no cluster info: CPU
        return False


#: ``max_batch_size`` by device: the rows decoding together. On a CPU more rows buy answers per second
#: with admitted latency under overload, and 4 keeps admitted p99 near 2x unloaded on 2 cores; on a GPU
#: 32 rows cost about as much as one (BENCHMARKS.md, ``serving`` and ``batching``).
DEFAULT_MAX_BATCH = {"cpu": 4, "gpu": 32}


def default_max_batch_size(device: str = "auto") -> int:
    return DEFAULT_MAX_BATCH["gpu" if cluster_has_gpu(device) else "cpu"]


def for_cluster(cfg: RecommenderConfig) -> RecommenderConfig:
    """``cfg`` with its by-device defaults resolved for the running Ray cluster (GPU when it has one)."""
    if cfg.max_batch_size is None:
        cfg = replace(cfg, max_batch_size=default_max_batch_size(cfg.device))
    if cfg.device == "auto" and cluster_has_gpu(cfg.device):
        cfg = replace(cfg, device="cuda")
    return cfg


def default_max_inflight(cfg: RecommenderConfig) -> int:
    """Admitted ``/recommend`` per ingress replica before 503: the rows decoding, times the recommender replicas.

    A request admitted beyond the rows would only wait for one (continuous batching starts a request at
    the next item boundary).
    """
    return (cfg.max_batch_size or default_max_batch_size(cfg.device)) * cfg.num_replicas
