"""Suite ``ingest``: producer → broker → consumer, raw kafka-python beside the ContractConsumer loop.

One topic (4 partitions) on the embedded tansu broker (or ``KAFKA_BOOTSTRAP``)
is filled with the synthetic world's ``user-events`` (plus a few malformed
messages, 0.1%) by :class:`ingest.producer.EventProducer`; then the *same*
topic is read end to end, alternately, by

* ``raw``: a plain kafka-python ``KafkaConsumer`` (same fetch settings, manual
  assign, no decoding) — the ceiling of what Python can pull from the broker;
* ``loop``: :class:`ingest.consumer_loop.ContractConsumer` — poll, decode,
  validate, route the bad messages to ``dead-letters``.

Each is run ``reps`` times, interleaved (alternating which goes first), and
the median wall-clock rate is kept; ``loop_over_raw`` is the ratio of the
medians (target >= 0.8), with the smallest and largest per-repetition ratio
beside it. The development machines are shared (2 cores, load far above 2),
so ``loop_over_raw_cpu`` also gives the ratio of rates per CPU-second of the
consuming thread (``time.thread_time``), which other processes disturb much
less. ``produce_eps`` is the producer's rate filling the topic (acks=all).
"""

from __future__ import annotations

import gc
import os
import statistics
import time
import uuid

SUITE = "ingest"


def _raw_consume(kafka, topic: str, n: int, cfg) -> float:
    from kafka import KafkaConsumer, TopicPartition

    from ingest.kafka_client import connect

    c = connect(KafkaConsumer, kafka, enable_auto_commit=False, auto_offset_reset="earliest",
                max_poll_records=cfg.max_batch, fetch_max_bytes=cfg.fetch_max_bytes,
                max_partition_fetch_bytes=cfg.max_partition_fetch_bytes)
    try:
        tps = [TopicPartition(topic, p) for p in sorted(c.partitions_for_topic(topic))]
        c.assign(tps)
        c.seek_to_beginning(*tps)
        got, t0, c0 = 0, time.perf_counter(), time.thread_time()
        while got < n:
            for msgs in c.poll(timeout_ms=cfg.poll_timeout_ms, max_records=cfg.max_batch).values():
                got += len(msgs)
        return got / (time.perf_counter() - t0), got / (time.thread_time() - c0)
    finally:
        c.close()


def _loop_consume(kafka, n: int, cfg, dlq) -> tuple[float, float, int]:
    from ingest.consumer_loop import ContractConsumer
    from ingest.contract import USER_EVENTS

    with ContractConsumer(kafka, USER_EVENTS, config=cfg, dead_letters=dlq) as c:
        t0, c0 = time.perf_counter(), time.thread_time()
        while c.stats.consumed < n:
            c.poll()
        return (c.stats.consumed / (time.perf_counter() - t0), c.stats.consumed / (time.thread_time() - c0),
                c.stats.dead_lettered)


def run(quick: bool = False, dataset: str | None = None) -> dict:
    from ingest.codec import encode
    from ingest.consumer_loop import ConsumerConfig
    from ingest.contract import DEAD_LETTERS, USER_EVENTS
    from ingest.kafka_client import KafkaConfig
    from ingest.producer import EventProducer
    from ingest.synthetic import SyntheticWorld, WorldConfig
    from ingest.topics import TopicsConfig, ensure_topics

    broker = None
    bootstrap = os.environ.get("KAFKA_BOOTSTRAP")
    if not bootstrap:
        from infra.broker import EmbeddedBroker

        broker = EmbeddedBroker().start()
        bootstrap = broker.bootstrap
    try:
        kafka = KafkaConfig(bootstrap=bootstrap, namespace=f"bench-{uuid.uuid4().hex[:8]}.")
        partitions = 4
        ensure_topics(kafka, TopicsConfig(partitions={USER_EVENTS: partitions, DEAD_LETTERS: 1}))
        world = SyntheticWorld(WorldConfig.small() if quick else WorldConfig(n_users=2000, n_items=3000))
        events = world.user_events[: 30_000 if quick else 120_000]
        # Keep only the wire bytes: millions of live Python objects would make every GC pass of the
        # consumers slower and measure this fixture instead of the consumers.
        wire = [(e.user_id.encode(), encode(e)) for e in events]
        del world, events
        gc.collect()
        bad_every = 1000
        with EventProducer(kafka) as prod:
            t0 = time.perf_counter()
            for i, (key, value) in enumerate(wire):
                prod.send_raw(USER_EVENTS, key, value)
                if i % bad_every == bad_every - 1:
                    prod.send_raw(USER_EVENTS, key, b'{"event_id": "truncated')
            prod.flush()
            produce_eps = len(wire) / (time.perf_counter() - t0)
            n = len(wire) + len(wire) // bad_every
            cfg = ConsumerConfig()
            reps = 3 if quick else 5
            raw, loop, raw_cpu, loop_cpu, dead = [], [], [], [], 0
            for r in range(reps):  # interleaved, alternating which goes first, medians kept
                for which in (("raw", "loop") if r % 2 == 0 else ("loop", "raw")):
                    if which == "raw":
                        w, c = _raw_consume(kafka, kafka.topic(USER_EVENTS), n, cfg)
                        raw.append(w)
                        raw_cpu.append(c)
                    else:
                        w, c, dead = _loop_consume(kafka, n, cfg, prod)
                        loop.append(w)
                        loop_cpu.append(c)
        raw_eps, loop_eps = statistics.median(raw), statistics.median(loop)
        ratios = sorted(l / r for l, r in zip(loop, raw))
        return {
            "config": {"events": n, "partitions": partitions, "bad_messages": len(wire) // bad_every,
                       "repetitions": reps, "max_batch": cfg.max_batch, "broker": "tansu (embedded)"
                       if broker else "KAFKA_BOOTSTRAP"},
            "metrics": {
                "produce_eps": round(produce_eps),
                "raw_consume_eps": round(raw_eps),
                "loop_consume_eps": round(loop_eps),
                "loop_over_raw": round(loop_eps / raw_eps, 3),
                "loop_over_raw_min": round(ratios[0], 3),
                "loop_over_raw_max": round(ratios[-1], 3),
                "loop_over_raw_cpu": round(statistics.median(loop_cpu) / statistics.median(raw_cpu), 3),
                "dead_lettered": dead,
            },
        }
    finally:
        if broker is not None:
            broker.stop()
