"""Benchmark suite ``rewards``: the reward joiner beside raw kafka-python, and window close → record latency.

All on one embedded tansu broker and a local Ray, in one run:

* **throughput** — ``served`` + ``user-events`` (4 partitions each) hold N
  pre-produced sessions with their events (:mod:`ingest.session_stream`).
  In alternating rounds a bare kafka-python ``KafkaConsumer`` in a Ray worker
  polls both topics to the end (``raw_consume_rps``), and one reward joiner
  actor owning all partitions consumes them from a fresh checkpoint
  directory: decode + validate, join, watermark, close windows, send one
  reward per session, checkpoint (``joiner_consume_rps``, ``rewards_per_s``).
  Both rates run from the first non-empty poll to the last record consumed.
  ``joiner_over_raw`` is the median of the per-round ratios (target ≥ 0.8).
  Both use the same fetch settings (``ConsumerConfig.client_kwargs``); the
  joiner reads each partition with a consumer of its own (``max_batch`` /
  partitions records per poll), the baseline all eight with one.
  A second baseline in the same rounds also *sends* one pre-encoded message
  per ``served`` record it reads with kafka-python's ``KafkaProducer.send``
  (``raw_consume_produce_rps``): what one reward per session costs through
  kafka-python's per-record path, which the joiner no longer takes (it writes
  one record batch per output partition, :mod:`ingest.batch_producer`;
  docs/decisions/023), so ``joiner_over_raw_consume_produce`` > 1.
* **latency** — on topics of their own (joiners started on the throughput
  rounds' topics would first read that backlog: it measured catch-up, not the
  close → record path), a producer thread sends live sessions (event time =
  wall clock) to every partition; a consumer of ``rewards`` notes when each
  record arrives. ``reward_latency_*``: arrival − the moment its window could
  close (served ts + window + allowed lateness: the watermark needs every
  partition to pass it), so it covers the watermark's wait for the slowest
  partition, the close, the send and the broker. Sessions of the last window
  + lateness never close (nothing newer moves the watermark), hence
  ``latency_samples`` < sessions sent. ``close_to_ack_*``: the joiner's own
  share (window closed in the engine → broker ack), from its status.

``genrec bench rewards [--quick]``. Sizes: ``GENREC_BENCH_REWARD_SESSIONS``
[50,000; quick 5,000], rounds ``GENREC_BENCH_ROUNDS`` [3; quick 1].
"""

from __future__ import annotations

import os
import statistics
import tempfile
import threading
import time
import uuid

import numpy as np

SUITE = "rewards"
N_PARTITIONS = 4
WINDOW_MS, LATENESS_MS = 2000, 400


def _consumer_config():
    from ingest.consumer_loop import ConsumerConfig

    return ConsumerConfig(max_batch=5000, poll_timeout_ms=10, fetch_max_wait_ms=20)


def _raw_consume_in_worker(bootstrap: str, namespace: str, n: int, produce: bool = False) -> tuple[float, float]:
    """kafka-python alone over both input topics: (records/s after the first poll, seconds).

    ``produce``: also send, for every ``served`` record read, one pre-encoded
    400-byte message keyed by its key to a scratch topic (``acks=all``, flushed
    at the end) — kafka-python's own cost of the joiner's output, without any join.
    """
    from kafka import KafkaConsumer, KafkaProducer, TopicPartition

    from actors.sequence_shard import tune_gc
    from ingest.contract import SERVED, USER_EVENTS
    from ingest.kafka_client import KafkaConfig, connect

    tune_gc(50_000)  # as the joiner actor
    kafka = KafkaConfig(bootstrap=bootstrap, namespace=namespace)
    cfg = _consumer_config()
    c = connect(KafkaConsumer, kafka, enable_auto_commit=False, **cfg.client_kwargs())
    prod = connect(KafkaProducer, kafka, acks="all", linger_ms=5, retries=0) if produce else None
    served = kafka.topic(SERVED)
    tps = [TopicPartition(kafka.topic(t), p) for t in (SERVED, USER_EVENTS) for p in range(N_PARTITIONS)]
    c.assign(tps)
    c.seek_to_beginning(*tps)
    got, first_n, t_first = 0, 0, None
    payload = b"x" * 400
    while got < n:
        polled = c.poll(timeout_ms=cfg.poll_timeout_ms, max_records=cfg.max_batch)
        k = sum(len(v) for v in polled.values())
        if k and t_first is None:
            t_first, first_n = time.perf_counter(), k
        if prod is not None:
            for tp, msgs in polled.items():
                if tp.topic == served:
                    for m in msgs:
                        prod.send(namespace + "scratch", key=m.key, value=payload)
        got += k
    if prod is not None:
        prod.flush()
        prod.close()
    dt = time.perf_counter() - t_first
    c.close()
    return (got - first_n) / max(dt, 1e-9), dt


def _produce(kafka, records) -> dict[str, dict[int, int]]:
    """Send records; return {topic: {partition: end offset}} from the acks (tansu's ListOffsets can trail)."""
    from ingest.producer import EventProducer, ProducerConfig

    futures = []
    with EventProducer(kafka, ProducerConfig(linger_ms=20, batch_size=1 << 20)) as prod:
        for topic, rec in records:
            futures.append((topic, prod.send(rec)))
        prod.flush()
    ends: dict[str, dict[int, int]] = {}
    for topic, f in futures:
        md = f.get(timeout=30)
        d = ends.setdefault(topic, {})
        d[md.partition] = max(d.get(md.partition, 0), md.offset + 1)
    return ends


def _joiner_round(kafka, ends, n_sessions: int) -> dict:
    from actors.reward_joiner import RewardJoinerConfig
    from actors.reward_supervisor import RewardSupervisor

    cfg = RewardJoinerConfig(window_s=WINDOW_MS / 1000, allowed_lateness_s=LATENESS_MS / 1000,
                             checkpoint_uri=tempfile.mkdtemp(prefix="bench-rewards-"), idle_partition_s=None,
                             num_joiners=1, monitor_s=0, group_id=f"bench-{uuid.uuid4().hex[:6]}",
                             num_cpus=0)
    sup = RewardSupervisor(kafka, cfg, consumer=_consumer_config(),
                           name_prefix=f"bench-rw-{uuid.uuid4().hex[:6]}-").start()
    try:
        sup.wait_ready()
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:  # one status call per half second: the joiner's own clock times it
            st = sup.status()["joiners"][0]
            done = st.get("state") == "running" and all(st["offsets"][t].get(p, 0) >= e
                                                        for t, pe in ends.items() for p, e in pe.items())
            if done and st["closed"] >= n_sessions:
                break
            time.sleep(0.5)
    finally:
        sup.shutdown()
    dt = max(st["last_consumed_at"] - st["first_poll_at"], 1e-9)
    dt_out = max(st["last_emit_at"] - st["first_poll_at"], 1e-9)
    return {"rps": st["consumed"] / dt, "rewards_per_s": st["rewards_sent"] / dt_out, "rewards": st["rewards_sent"],
            "closed": st["closed"], "seconds": dt}


def _latency_phase(kafka, seconds: float, rate: float) -> dict:
    """Live sessions (ts = wall clock) → reward arrival − (ts + window + lateness), per reward.

    On topics of their own: joiners started on the throughput rounds' topics
    would first read that backlog, and the first seconds of live rewards would
    measure the catch-up instead of the close → record path.
    """
    from dataclasses import replace

    from actors.reward_joiner import RewardJoinerConfig
    from actors.reward_supervisor import RewardSupervisor
    from ingest.consumer_loop import ContractConsumer
    from ingest.contract import DEAD_LETTERS, REWARDS, SERVED, USER_EVENTS
    from ingest.producer import EventProducer, ProducerConfig
    from ingest.session_stream import session_stream
    from ingest.topics import TopicsConfig, ensure_topics

    kafka = replace(kafka, namespace=f"{kafka.namespace}live.")
    ensure_topics(kafka, TopicsConfig(partitions={SERVED: N_PARTITIONS, USER_EVENTS: N_PARTITIONS, REWARDS: 2,
                                                  DEAD_LETTERS: 1}))
    window_ms, lateness_ms = 1000, 200
    cfg = RewardJoinerConfig(window_s=window_ms / 1000, allowed_lateness_s=lateness_ms / 1000,
                             checkpoint_uri=tempfile.mkdtemp(prefix="bench-rewards-live-"), idle_partition_s=None,
                             num_joiners=2, monitor_s=0, group_id=f"bench-live-{uuid.uuid4().hex[:6]}")
    sup = RewardSupervisor(kafka, cfg, consumer=_consumer_config(),
                           name_prefix=f"bench-live-{uuid.uuid4().hex[:6]}-").start()
    sup.wait_ready()
    stop = threading.Event()

    def produce():
        n = int(seconds * rate)
        t0 = int(time.time() * 1000)
        # spacing 1000/rate ms of event time per session; sent when the wall clock reaches each record's ts
        recs = session_stream(n, n_users=2000, window_ms=int(window_ms * 0.5), lateness_ms=lateness_ms,
                              spacing_ms=max(1, int(1000 / rate)), seed=3, start_ts=t0, prefix="live")
        with EventProducer(kafka, ProducerConfig(linger_ms=1)) as prod:
            for _, rec in recs:
                while not stop.is_set() and rec.ts > time.time() * 1000:
                    time.sleep(0.001)
                if stop.is_set():
                    return
                prod.send(rec)

    lat: list[float] = []
    th = threading.Thread(target=produce, daemon=True)
    with ContractConsumer(kafka, REWARDS, config=_consumer_config(), from_beginning=False) as c:
        th.start()
        end = time.monotonic() + seconds + 2 * (window_ms + lateness_ms) / 1000 + 2
        while time.monotonic() < end:
            for r in c.poll(timeout_ms=10).records():
                if r.request_id.startswith("live"):
                    lat.append(time.time() * 1000 - (r.ts + window_ms + lateness_ms))
    stop.set()
    th.join()
    st = sup.status()
    sup.shutdown()
    a = np.asarray(lat or [float("nan")])
    return {"reward_latency_p50_ms": float(np.percentile(a, 50)), "reward_latency_p99_ms": float(np.percentile(a, 99)),
            "latency_samples": len(lat),
            "close_to_ack_p50_ms": max(r["reward_latency_p50_ms"] for r in st["joiners"]),
            "close_to_ack_p99_ms": max(r["reward_latency_p99_ms"] for r in st["joiners"])}


def run(quick: bool = False, dataset: str | None = None) -> dict:
    import ray

    from infra.broker import EmbeddedBroker
    from ingest.contract import DEAD_LETTERS, REWARDS, SERVED, USER_EVENTS
    from ingest.kafka_client import KafkaConfig
    from ingest.session_stream import closing_tail, session_stream
    from ingest.topics import TopicsConfig, ensure_topics

    n_sessions = int(os.environ.get("GENREC_BENCH_REWARD_SESSIONS", "5000" if quick else "50000"))
    rounds = int(os.environ.get("GENREC_BENCH_ROUNDS", "1" if quick else "3"))
    os.environ.setdefault("RAY_worker_niceness", "0")
    started = not ray.is_initialized()
    if started:
        ray.init(address="local", num_cpus=2, include_dashboard=False,
                 namespace=f"bench-rewards-{uuid.uuid4().hex[:6]}",
                 log_to_driver=False, configure_logging=False)
    try:
        with EmbeddedBroker() as broker:
            kafka = KafkaConfig(bootstrap=broker.bootstrap, namespace=f"bench{uuid.uuid4().hex[:6]}.")
            ensure_topics(kafka, TopicsConfig(partitions={SERVED: N_PARTITIONS, USER_EVENTS: N_PARTITIONS,
                                                          REWARDS: 2, DEAD_LETTERS: 1}))
            records = session_stream(n_sessions, n_users=5000, window_ms=WINDOW_MS, lateness_ms=LATENESS_MS, seed=1)
            records += closing_tail(N_PARTITIONS, max(r.ts for _, r in records) + 2 * WINDOW_MS + LATENESS_MS)
            ends = _produce(kafka, records)
            total = sum(sum(v.values()) for v in ends.values())
            raw_remote = ray.remote(num_cpus=0)(_raw_consume_in_worker)
            raw, raw_out, joined, ratios, ratios_out = [], [], [], [], []
            for i in range(rounds):
                order = ("raw", "raw_out", "joiner") if i % 2 == 0 else ("joiner", "raw_out", "raw")
                res = {}
                for what in order:
                    if what == "joiner":
                        res["joiner"] = _joiner_round(kafka, ends, n_sessions)
                    else:
                        res[what] = ray.get(raw_remote.remote(kafka.bootstrap, kafka.namespace, total,
                                                              what == "raw_out"))[0]
                raw.append(res["raw"])
                raw_out.append(res["raw_out"])
                joined.append(res["joiner"])
                ratios.append(res["joiner"]["rps"] / res["raw"])
                ratios_out.append(res["joiner"]["rps"] / res["raw_out"])
            live = _latency_phase(kafka, seconds=6 if quick else 20, rate=300)
    finally:
        if started:
            ray.shutdown()
    metrics = {
        "sessions": n_sessions, "records": total,
        "raw_consume_rps": statistics.median(raw),
        "joiner_consume_rps": statistics.median(j["rps"] for j in joined),
        "rewards_per_s": statistics.median(j["rewards_per_s"] for j in joined),
        "joiner_over_raw": statistics.median(ratios),
        "raw_consume_produce_rps": statistics.median(raw_out),
        "joiner_over_raw_consume_produce": statistics.median(ratios_out),
        "rewards_emitted": joined[-1]["rewards"],
        **live,
    }
    return {"config": {"partitions": N_PARTITIONS, "rounds": rounds, "window_ms": WINDOW_MS,
                       "lateness_ms": LATENESS_MS, "joiners_throughput": 1, "joiners_latency": 2,
                       "live_sessions_per_s": 300},
            "metrics": metrics}


if __name__ == "__main__":
    import json
    import sys

    print(json.dumps(run(quick="--quick" in sys.argv[1:]), indent=1))
