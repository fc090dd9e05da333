"""The sequence supervisor: creates one shard actor per partition group, restarts the dead, reports.

Ray already restarts a crashed shard (``max_restarts``); the supervisor
covers what Ray gives up on (restarts exhausted, node lost) by re-creating
the shard, which then recovers from its checkpoint exactly like a Ray restart.
Its :meth:`status` gathers every shard's numbers — consumer lag, events/s,
freshness (event time → applied), checkpoint age — and :func:`format_status`
prints them; the same dict later feeds ``/metrics``.

The supervisor lives in the driver process (``genrec sequences``, the demo,
tests). Shards are named Ray actors (``{name_prefix}{namespace}-{i}``) so a
serving process in the same Ray namespace can find them with
:meth:`SequenceSupervisor.connect`-style look-ups (:func:`router_from_names`).
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field, replace

from actors.actor_fleet import Monitor, create_named, recreate_dead, status_rows, stop_all
from actors.checkpoint import CheckpointConfig
from actors.router import SequenceRouter, partitions_of_shard
from actors.sequence_shard import ShardConfig, shard_actor_class
from actors.sequence_state import SequenceConfig
from ingest.consumer_loop import ConsumerConfig
from ingest.contract import USER_EVENTS
from ingest.kafka_client import KafkaConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SupervisorConfig:
    """How many shards, where checkpoints go, and how the actors are sized and restarted.

    ``num_shards=None`` means one shard per partition. ``num_cpus`` is the Ray
    CPU reservation per shard (fractional, so several shards share a core on a
    laptop). ``max_concurrency``: threads for ``histories()`` reads (their own
    concurrency group) and, separately, for control calls. ``monitor_s``: how often the background monitor checks liveness
    (0 = no monitor thread; call :meth:`check` yourself). ``freshness_window_s``:
    the span of recent events the freshness percentiles in ``status()`` cover.
    ``fetch_max_wait_ms``, ``niceness``, ``gil_switch_ms``, ``gc_gen0_threshold``:
    per-shard process knobs, see :class:`~actors.sequence_shard.ShardConfig`.
    """

    kafka: KafkaConfig
    checkpoint: CheckpointConfig
    num_shards: int | None = None
    sequence: SequenceConfig = SequenceConfig()
    consumer: ConsumerConfig = ConsumerConfig(max_batch=5000, poll_timeout_ms=20)
    topic: str = USER_EVENTS
    group_id: str = "genrec-sequences"
    max_restarts: int = 20
    num_cpus: float = 0.25
    max_concurrency: int = 4
    monitor_s: float = 2.0
    freshness_window_s: float = 10.0
    fetch_max_wait_ms: int | None = 20
    niceness: int | None = 0
    gil_switch_ms: float | None = 1.0
    gc_gen0_threshold: int | None = 50_000
    name_prefix: str = "genrec-seq-"
    extra: dict = field(default_factory=dict, hash=False, compare=False)

    def __post_init__(self) -> None:
        if self.num_shards is not None and self.num_shards < 1:
            raise ValueError(f"SupervisorConfig.num_shards={self.num_shards} must be >= 1 (or None: one per partition)")
        if self.max_restarts < -1:
            raise ValueError(f"SupervisorConfig.max_restarts={self.max_restarts} must be >= -1 (-1 = unlimited)")
        if self.num_cpus < 0:
            raise ValueError(f"SupervisorConfig.num_cpus={self.num_cpus} must be >= 0")
        if self.max_concurrency < 2:
            raise ValueError(f"SupervisorConfig.max_concurrency={self.max_concurrency} must be >= 2 "
                             "(reads run beside status calls)")
        if self.monitor_s < 0:
            raise ValueError(f"SupervisorConfig.monitor_s={self.monitor_s} must be >= 0")

    def shard_name(self, i: int) -> str:
        return f"{self.name_prefix}{self.kafka.namespace}{self.topic}-{i}"


class SequenceSupervisor:
    """Owns the shard actors of one topic. Use as a context manager or call :meth:`shutdown`."""

    def __init__(self, config: SupervisorConfig):
        self.config = config
        self.num_partitions = 0
        self.shard_configs: list[ShardConfig] = []
        self.shards: list = []
        self.recreated = 0
        self._pids: dict[int, int] = {}
        self.restarts_seen: dict[int, int] = {}
        self._monitor: Monitor | None = None
        self._lock = threading.Lock()

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> "SequenceSupervisor":
        """Create the shard actors (Ray must be initialised by the caller)."""
        from ingest.topics import partition_count

        cfg = self.config
        physical = cfg.kafka.topic(cfg.topic)
        self.num_partitions = partition_count(cfg.kafka, physical)
        if not self.num_partitions:
            raise ValueError(f"topic {physical!r} does not exist at {cfg.kafka.bootstrap}; "
                             "create it first (genrec topics / ensure_topics)")
        n = min(cfg.num_shards or self.num_partitions, self.num_partitions)
        self.shard_configs = [
            ShardConfig(shard_id=i, num_shards=n, partitions=partitions_of_shard(i, self.num_partitions, n),
                        kafka=cfg.kafka, checkpoint=cfg.checkpoint, sequence=cfg.sequence,
                        consumer=cfg.consumer, topic=cfg.topic, group_id=cfg.group_id,
                        freshness_window_s=cfg.freshness_window_s, fetch_max_wait_ms=cfg.fetch_max_wait_ms,
                        niceness=cfg.niceness, gil_switch_ms=cfg.gil_switch_ms,
                        gc_gen0_threshold=cfg.gc_gen0_threshold)
            for i in range(n)]
        self.shards = [self._create(i) for i in range(n)]
        self.restarts_seen = {i: 0 for i in range(n)}
        if cfg.monitor_s:
            self._monitor = Monitor(self.check, cfg.monitor_s, "sequence supervisor").start()
        return self

    def _create(self, i: int):
        cfg = self.config
        return create_named(shard_actor_class(read_threads=cfg.max_concurrency), cfg.shard_name(i),
                            self.shard_configs[i], max_restarts=cfg.max_restarts, max_task_retries=3,
                            max_concurrency=cfg.max_concurrency, num_cpus=cfg.num_cpus, **cfg.extra)

    def wait_ready(self, timeout_s: float = 120.0) -> None:
        """Block until every shard answers (worker processes started, checkpoints loaded)."""
        import ray

        ray.get([s.ping.remote() for s in self.shards], timeout=timeout_s)

    def check(self, timeout_s: float = 10.0) -> list[int]:
        """Re-create shards Ray has given up on; returns the shard ids re-created."""
        with self._lock:
            redone, pids = recreate_dead(self.shards, self._create, "sequence shard", timeout_s)
            self.recreated += len(redone)
            for i, pid in pids.items():
                old = self._pids.get(i)
                if old is not None and old != pid:
                    self.restarts_seen[i] = self.restarts_seen.get(i, 0) + 1
                self._pids[i] = pid
        return redone

    def shutdown(self, checkpoint: bool = True, timeout_s: float = 30.0) -> None:
        """Stop the monitor, let every shard write a final checkpoint, then kill the actors."""
        if self._monitor is not None:
            self._monitor.stop(timeout_s)
        stop_all(self.shards, checkpoint, timeout_s)
        self.shards = []

    def __enter__(self) -> "SequenceSupervisor":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.shutdown()

    # -- reads -----------------------------------------------------------------------------

    def router(self) -> SequenceRouter:
        return SequenceRouter(self.shards, self.num_partitions)

    def router_spec(self) -> dict:
        """Plain data another process needs to read histories: :meth:`SequenceRouter.from_spec`."""
        import ray

        return {"names": [self.config.shard_name(i) for i in range(len(self.shards))],
                "namespace": ray.get_runtime_context().namespace, "num_partitions": self.num_partitions}

    def histories(self, user_ids, max_len: int | None = None) -> dict:
        return self.router().histories(user_ids, max_len)

    def status(self, timeout_s: float = 10.0) -> dict:
        """``{"shards": [per-shard dict], "total": {...}}``; a shard that does not answer says so."""
        rows = status_rows(self.shards, "shard", lambda i: self.shard_configs[i].partitions, timeout_s)
        for i, st in enumerate(rows):
            st["restarts_seen"] = self.restarts_seen.get(i, 0)
        live = [r for r in rows if r["state"] == "running"]
        total = {
            "shards": len(rows),
            "running": len(live),
            "partitions": self.num_partitions,
            "users": sum(r["users"] for r in live),
            "events_applied": sum(r["events_applied"] for r in live),
            "duplicates_dropped": sum(r["duplicates_dropped"] for r in live),
            "dead_lettered": sum(r["dead_lettered"] for r in live),
            "lag": sum(r["lag"] for r in live),
            "events_per_s": round(sum(r["events_per_s"] for r in live), 1),
            "freshness_p99_ms": max((r["freshness_p99_ms"] for r in live if r["freshness_samples"]), default=0.0),
            "ingest_p99_ms": max((r["ingest_p99_ms"] for r in live if r["freshness_samples"]), default=0.0),
            "max_checkpoint_age_s": max((r["checkpoint_age_s"] for r in live), default=0.0),
            "recreated": self.recreated,
        }
        return {"shards": rows, "total": total}

    def caught_up(self, end_offsets: dict[int, int], timeout_s: float = 10.0) -> bool:
        """True when every shard's applied offsets reached ``end_offsets`` ({partition: end})."""
        st = self.status(timeout_s)
        applied: dict[int, int] = {}
        for r in st["shards"]:
            if r["state"] != "running":
                return False
            applied.update({int(p): o for p, o in r["offsets"].items()})
        return all(applied.get(p, 0) >= e for p, e in end_offsets.items())


def format_status(status: dict) -> str:
    """A fixed-width table of :meth:`SequenceSupervisor.status` (what ``genrec sequences`` prints).

    ``fresh``: event time → applied (the product number for live traffic; for a
    replay of old events it is the events' age). ``ingest``: Kafka message
    timestamp (produce time) → applied: broker, fetch and apply together.
    ``apply``: poll returned → applied (visible to reads), the shard's own
    share of ``ingest``.
    """
    head = (f"{'shard':>5} {'parts':<9} {'state':<10} {'users':>7} {'applied':>10} {'dups':>6} {'dlq':>5} "
            f"{'lag':>8} {'ev/s':>9} {'fresh p50':>10} {'fresh p99':>10} {'ingest p99':>10} {'apply p99':>9} "
            f"{'ckpt age':>9} {'restarts':>8}")
    lines = [head, "-" * len(head)]
    for r in status["shards"]:
        parts = ",".join(map(str, r.get("partitions", [])))
        if r.get("state") != "running":
            lines.append(f"{r['shard']:>5} {parts:<9} {r['state']}")
            continue
        lines.append(
            f"{r['shard']:>5} {parts:<9} {'running':<10} {r['users']:>7,} {r['events_applied']:>10,} "
            f"{r['duplicates_dropped']:>6,} {r['dead_lettered']:>5,} {r['lag']:>8,} {r['events_per_s']:>9,.0f} "
            f"{_ms(r['freshness_p50_ms'], r):>10} {_ms(r['freshness_p99_ms'], r):>10} "
            f"{_ms(r['ingest_p99_ms'], r):>10} {_ms(r.get('apply_p99_ms', 0.0), r, 1):>9} "
            f"{r['checkpoint_age_s']:>8.1f}s {r.get('restarts_seen', 0):>8}")
    t = status["total"]
    lines.append(f"total: {t['running']}/{t['shards']} shards over {t['partitions']} partitions, "
                 f"{t['users']:,} users, {t['events_applied']:,} events applied, lag {t['lag']:,}, "
                 f"{t['events_per_s']:,.0f} ev/s, {t['dead_lettered']} dead-lettered, "
                 f"{t['duplicates_dropped']} duplicates dropped")
    return "\n".join(lines)


def _ms(v: float, row: dict | None = None, digits: int = 0) -> str:
    if row is not None and not row.get("freshness_samples", 1):
        return "-"  # nothing applied in the freshness window
    return f"{v / 1000:.1f}s" if v >= 10_000 else f"{v:.{digits}f}ms"


def router_from_names(config: SupervisorConfig, num_partitions: int, num_shards: int) -> SequenceRouter:
    """A router over running shards found by name (e.g. from a serving replica in the same namespace)."""
    import ray

    return SequenceRouter([ray.get_actor(config.shard_name(i)) for i in range(num_shards)], num_partitions)


def with_checkpoint_dir(config: SupervisorConfig, uri: str) -> SupervisorConfig:
    """A copy of ``config`` checkpointing to ``uri``."""
    return replace(config, checkpoint=replace(config.checkpoint, uri=uri))


#: Per-shard status fields exported as metrics (name suffix, status key).
_METRIC_FIELDS = (
    ("lag_messages", "lag"), ("events_applied_total", "events_applied"), ("events_per_second", "events_per_s"),
    ("duplicates_dropped_total", "duplicates_dropped"), ("users", "users"),
    ("freshness_p50_ms", "freshness_p50_ms"), ("freshness_p99_ms", "freshness_p99_ms"),
    ("ingest_p99_ms", "ingest_p99_ms"), ("apply_p99_ms", "apply_p99_ms"),
    ("checkpoint_age_seconds", "checkpoint_age_s"), ("restarts_seen_total", "restarts_seen"),
)


def metric_samples(status: dict, prefix: str = "genrec_sequences_") -> list[tuple[str, dict, float]]:
    """``(name, labels, value)`` samples of a :meth:`SequenceSupervisor.status` (for ``/metrics``).

    One sample per shard and field, labelled ``shard`` and ``partitions``,
    plus ``{prefix}shard_up`` (1 running, 0 restarting or dead).
    """
    out = []
    for r in status["shards"]:
        labels = {"shard": str(r["shard"]), "partitions": ",".join(map(str, r.get("partitions", [])))}
        up = r.get("state") == "running"
        out.append((f"{prefix}shard_up", labels, 1.0 if up else 0.0))
        if not up:
            continue
        for name, key in _METRIC_FIELDS:
            out.append((prefix + name, labels, float(r.get(key, 0) or 0)))
    return out
