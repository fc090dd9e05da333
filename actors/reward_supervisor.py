"""Owns the reward joiner actors: creates them over the partition map, restarts the lost ones, reports.

Joiner ``j`` of ``n`` gets partitions ``p % n == j`` of ``served`` and
``user-events`` (:func:`actors.router.partitions_of_shard`, the sequence
shards' map). Ray restarts a killed joiner (``max_restarts``) and the restart
recovers from its checkpoint; :meth:`RewardSupervisor.check` re-creates one
Ray gave up on. :func:`format_status` is the line ``genrec rewards`` prints,
:func:`metric_samples` the Prometheus counters and gauges, which :class:`MetricsServer` serves at
``/metrics`` (``genrec rewards --metrics-port``).
"""

from __future__ import annotations

import logging
import threading
from typing import Callable

from actors.actor_fleet import Monitor, create_named, recreate_dead, status_rows, stop_all
from actors.reward_joiner import JoinerConfig, RewardJoinerConfig, joiner_actor_class
from actors.router import partitions_of_shard
from ingest.consumer_loop import ConsumerConfig
from ingest.contract import SERVED, USER_EVENTS
from ingest.kafka_client import KafkaConfig

log = logging.getLogger(__name__)


class RewardSupervisor:
    """Start, watch and stop the joiners of one deployment (Ray must be initialised by the caller)."""

    def __init__(self, kafka: KafkaConfig, config: RewardJoinerConfig = RewardJoinerConfig(),
                 consumer: ConsumerConfig | None = None, name_prefix: str = "genrec-rewards-"):
        self.kafka, self.config, self.consumer = kafka, config, consumer
        self.name_prefix = name_prefix
        self.num_partitions = 0
        self.joiner_configs: list[JoinerConfig] = []
        self.joiners: list = []
        self.recreated = 0
        self._monitor: Monitor | None = None
        self._lock = threading.Lock()

    def joiner_name(self, i: int) -> str:
        return f"{self.name_prefix}{self.kafka.namespace}{i}"

    def start(self) -> "RewardSupervisor":
        from ingest.topics import partition_count

        n_served = partition_count(self.kafka, self.kafka.topic(SERVED))
        n_events = partition_count(self.kafka, self.kafka.topic(USER_EVENTS))
        if not n_served or n_served != n_events:
            raise ValueError(f"{self.kafka.topic(SERVED)} has {n_served} partitions and "
                             f"{self.kafka.topic(USER_EVENTS)} {n_events}; the joiner needs both to exist with "
                             "the same count (both are keyed by user) — create them with genrec topics")
        self.num_partitions = n_served
        n = min(self.config.num_joiners or n_served, n_served)
        extra = {} if self.consumer is None else {"consumer": self.consumer}
        self.joiner_configs = [
            JoinerConfig(joiner_id=i, num_joiners=n, partitions=partitions_of_shard(i, n_served, n),
                         kafka=self.kafka, rewards=self.config, **extra)
            for i in range(n)]
        self.joiners = [self._create(i) for i in range(n)]
        if self.config.monitor_s:
            self._monitor = Monitor(self.check, self.config.monitor_s, "reward supervisor").start()
        return self

    def _create(self, i: int):
        return create_named(joiner_actor_class(), self.joiner_name(i), self.joiner_configs[i],
                            max_restarts=self.config.max_restarts, max_task_retries=3, max_concurrency=4,
                            num_cpus=self.config.num_cpus)

    def wait_ready(self, timeout_s: float = 120.0) -> None:
        import ray

        ray.get([j.ping.remote() for j in self.joiners], timeout=timeout_s)

    def check(self, timeout_s: float = 10.0) -> list[int]:
        """Re-create joiners Ray has given up on (they recover from their checkpoints)."""
        with self._lock:
            redone, _ = recreate_dead(self.joiners, self._create, "reward joiner", timeout_s)
        self.recreated += len(redone)
        return redone

    def status(self, timeout_s: float = 10.0) -> dict:
        """``{"joiners": [per-joiner dict], "total": {...}}``; a joiner that does not answer says so."""
        rows = status_rows(self.joiners, "joiner", lambda i: self.joiner_configs[i].partitions, timeout_s)
        live = [r for r in rows if r["state"] == "running"]
        keys = ("served", "events", "joined", "duplicates", "late_total", "orphans", "late_served",
                "closed", "closed_without_feedback", "rewards_sent", "rewards_already_in_topic", "open_windows",
                "waiting_events", "lag", "dead_lettered")
        total = {k: sum(r[k] for r in live) for k in keys}
        late: dict[str, int] = {}
        for r in live:
            for k, v in r["late"].items():
                late[k] = late.get(k, 0) + v
        total.update(joiners=len(rows), running=len(live), late=late, recreated=self.recreated,
                     rewards_per_s=round(sum(r["rewards_per_s"] for r in live), 1),
                     records_per_s=round(sum(r["records_per_s"] for r in live), 1),
                     reward_latency_p99_ms=max((r["reward_latency_p99_ms"] for r in live), default=0.0),
                     max_checkpoint_age_s=max((r["checkpoint_age_s"] for r in live), default=0.0))
        return {"joiners": rows, "total": total}

    def caught_up(self, ends: dict[str, dict[int, int]], timeout_s: float = 10.0) -> bool:
        """True when every joiner consumed ``ends`` (``{topic: {partition: end offset}}``)."""
        st = self.status(timeout_s)
        if any(r["state"] != "running" for r in st["joiners"]):
            return False
        have: dict[str, dict[int, int]] = {SERVED: {}, USER_EVENTS: {}}
        for r in st["joiners"]:
            for t, offs in r["offsets"].items():
                have[t].update({int(p): o for p, o in offs.items()})
        return all(have[t].get(p, 0) >= e for t, pe in ends.items() for p, e in pe.items())

    def shutdown(self, checkpoint: bool = True, timeout_s: float = 30.0) -> None:
        """Stop the monitor, let every joiner write a final checkpoint, then kill the actors."""
        if self._monitor is not None:
            self._monitor.stop(timeout_s)
        stop_all(self.joiners, checkpoint, timeout_s)
        self.joiners = []

    def __enter__(self) -> "RewardSupervisor":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.shutdown()


def format_status(status: dict) -> str:
    """One line per joiner and a total: lag, open windows, rewards/s, late and orphan counts."""
    lines = []
    for r in status["joiners"]:
        parts = ",".join(map(str, r.get("partitions", [])))
        if r.get("state") != "running":
            lines.append(f"joiner {r['joiner']} [{parts}] {r['state']}")
            continue
        lines.append(f"joiner {r['joiner']} [{parts}] lag {r['lag']:,}  open {r['open_windows']:,}  "
                     f"rewards {r['rewards_sent']:,} ({r['rewards_per_s']:,.0f}/s)  late {r['late_total']:,}  "
                     f"orphans {r['orphans']:,}  dups {r['duplicates']:,}  ckpt {r['checkpoint_age_s']:.1f}s"
                     + ("  restored" if r.get("restored") else ""))
    t = status["total"]
    late = ", ".join(f"{k} {v:,}" for k, v in sorted(t["late"].items())) or "0"
    lines.append(f"total: {t['running']}/{t['joiners']} joiners, lag {t['lag']:,}, windows open "
                 f"{t['open_windows']:,}, {t['rewards_per_s']:,.0f} rewards/s, {t['rewards_sent']:,} rewards, "
                 f"late {t['late_total']:,} ({late}), orphans {t['orphans']:,}, "
                 f"latency p99 {t['reward_latency_p99_ms']:.0f} ms")
    return "\n".join(lines)


#: Per-joiner metrics: (name suffix, status key, kind, help). Counters come from the joiners' checkpointed
#: engine state (a restarted joiner goes back to its checkpoint's counts and counts the replay again, which
#: Prometheus reads as a counter reset) or, for ``rewards``/``dead_letters``/``checkpoints``, from the
#: running incarnation.
_METRICS = (
    ("served_total", "served", "counter", "served records read"),
    ("events_total", "events", "counter", "user-events records read"),
    ("events_joined_total", "joined", "counter", "events that counted for their session"),
    ("duplicate_events_total", "duplicates", "counter", "events whose event_id the session already had"),
    ("orphan_events_total", "orphans", "counter",
     "orphan events: their request_id was not claimed by any served record before the watermark passed them"),
    ("events_without_request_total", "events_without_request", "counter", "events without a request_id"),
    ("late_served_total", "late_served", "counter", "served records read after their window had closed"),
    ("duplicate_served_total", "duplicate_served", "counter", "served records with a request_id seen before"),
    ("sessions_closed_total", "closed", "counter", "sessions whose window closed"),
    ("sessions_without_feedback_total", "closed_without_feedback", "counter",
     "closed sessions without any event (their reward is still written)"),
    ("rewards_total", "rewards_sent", "counter", "reward records written by this incarnation"),
    ("rewards_already_in_topic_total", "rewards_already_in_topic", "counter",
     "rewards not sent again after a restart because the crashed incarnation had written them"),
    ("dead_letters_total", "dead_lettered", "counter", "malformed input records sent to dead-letters"),
    ("checkpoints_total", "checkpoints", "counter", "checkpoints written by this incarnation"),
    ("open_windows", "open_windows", "gauge", "served sessions whose window is open"),
    ("waiting_events", "waiting_events", "gauge", "events waiting for their served record"),
    ("lag_messages", "lag", "gauge", "input records not yet read"),
    ("checkpoint_age_seconds", "checkpoint_age_s", "gauge", "seconds since the last checkpoint"),
    ("rewards_per_second", "rewards_per_s", "gauge", "rewards written per second (last 5 s)"),
    ("records_per_second", "records_per_s", "gauge", "input records read per second (last 5 s)"),
)
_LATE_HELP = "events not counted because they came late, by reason (window_closed, outside_window)"
_KINDS = {suffix: (kind, help_) for suffix, _, kind, help_ in _METRICS}
_KINDS.update({"late_events_total": ("counter", _LATE_HELP),
               "joiner_up": ("gauge", "1 if the joiner answers, else 0 (restarting or dead)"),
               "watermark_seconds": ("gauge", "the joiner's watermark (event time, seconds since the epoch)"),
               "close_to_ack_seconds": ("gauge", "window close -> broker acknowledgement of its reward, "
                                                 "quantile of the joiner's recent rewards")})


def metric_samples(status: dict, prefix: str = "genrec_rewards_") -> list[tuple[str, dict, float]]:
    """``(name, labels, value)`` per joiner; late events carry a ``reason`` label (for ``/metrics``)."""
    out = []
    for r in status["joiners"]:
        labels = {"joiner": str(r["joiner"])}
        up = r.get("state") == "running"
        out.append((f"{prefix}joiner_up", labels, 1.0 if up else 0.0))
        if not up:
            continue
        for name, key, _, _ in _METRICS:
            out.append((prefix + name, labels, float(r.get(key, 0) or 0)))
        for reason in ("window_closed", "outside_window"):  # both always present: a series from the start
            out.append((f"{prefix}late_events_total", {**labels, "reason": reason},
                        float(r["late"].get(reason, 0))))
        for reason, n in sorted(r["late"].items()):
            if reason not in ("window_closed", "outside_window"):
                out.append((f"{prefix}late_events_total", {**labels, "reason": reason}, float(n)))
        if r.get("watermark") is not None:
            out.append((f"{prefix}watermark_seconds", labels, r["watermark"] / 1000.0))
        for q, key in (("0.5", "reward_latency_p50_ms"), ("0.99", "reward_latency_p99_ms")):
            out.append((f"{prefix}close_to_ack_seconds", {**labels, "quantile": q}, float(r.get(key, 0)) / 1000.0))
    return out


class RewardMetricsCollector:
    """A ``prometheus_client`` collector: each scrape asks ``status()`` (a supervisor's) and exposes
    :func:`metric_samples` as counter and gauge families. A status that fails gives
    ``{prefix}status_ok 0`` instead of an error page."""

    def __init__(self, status: Callable[[], dict], prefix: str = "genrec_rewards_"):
        self.status, self.prefix = status, prefix

    def collect(self):
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        ok = GaugeMetricFamily(f"{self.prefix}status_ok", "1 if the joiners' status could be read for this scrape")
        try:
            samples = metric_samples(self.status(), self.prefix)
        except Exception as e:  # noqa: BLE001 - a scrape reports, it does not crash the command
            log.warning("reward joiner status for /metrics failed: %s", e)
            ok.add_metric([], 0.0)
            yield ok
            return
        ok.add_metric([], 1.0)
        yield ok
        families: dict = {}
        for name, labels, value in samples:
            fam = families.get(name)
            if fam is None:
                kind, help_ = _KINDS.get(name[len(self.prefix):], ("gauge", name))
                cls = CounterMetricFamily if kind == "counter" else GaugeMetricFamily
                fam = families[name] = cls(name, help_, labels=list(labels))
            fam.add_metric(list(labels.values()), value)
        yield from families.values()


class MetricsServer:
    """``/metrics`` (Prometheus text format) of a status function on ``addr:port`` (0: a free port), in a
    daemon thread; :meth:`close` stops it."""

    def __init__(self, status: Callable[[], dict], port: int = 0, addr: str = "127.0.0.1",
                 prefix: str = "genrec_rewards_"):
        from prometheus_client import CollectorRegistry, start_http_server

        self.registry = CollectorRegistry()
        self.registry.register(RewardMetricsCollector(status, prefix))
        self._server, self._thread = start_http_server(port, addr=addr, registry=self.registry)
        self.addr, self.port = addr, self._server.server_address[1]

    @property
    def url(self) -> str:
        host = f"[{self.addr}]" if ":" in self.addr else self.addr
        return f"http://{host}:{self.port}/metrics"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
