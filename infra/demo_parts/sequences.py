"""Demo part: per-user sequences on Ray actors, updating live as the synthetic world streams.

Shows (1) the supervisor starting one shard actor per partition group and
folding the topic's backlog into per-user ring buffers, (2) a live phase in
which the world's next events are streamed *now* (re-stamped with the current
time) while a few users' sequences are printed as they change, with
throughput and freshness (event time → visible in ``histories()``), and
(3) a ``kill -9`` of a shard: Ray restarts it, it reloads its checkpoint,
seeks to the stored offsets, and ends with exactly the same counts.
The supervisor stays in ``ctx.state["sequences"]`` for later parts (serving).
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections import Counter

TITLE = "Live per-user sequences on Ray actors (issue 3: exactly-once, checkpointed)"


def _ensure_ray() -> None:
    import ray

    if not ray.is_initialized():
        from infra.ray_auth import prepare_ray_auth

        prepare_ray_auth(None)   # a local Ray: token auth unless RAY_AUTH_MODE=disabled is set
        os.environ.setdefault("RAY_worker_niceness", "0")  # Ray would start workers at nice 15
        ray.init(address="local", num_cpus=2, include_dashboard=False, namespace="genrec-demo",
                 log_to_driver=False, configure_logging=False)


def _topic_size(kafka) -> dict[int, int]:
    """Messages per partition on user-events, from a fetch's high watermark (exact on tansu too)."""
    from kafka import KafkaConsumer, TopicPartition

    from ingest.contract import USER_EVENTS
    from ingest.kafka_client import connect

    c = connect(KafkaConsumer, kafka, enable_auto_commit=False)
    try:
        topic = kafka.topic(USER_EVENTS)
        tps = [TopicPartition(topic, p) for p in sorted(c.partitions_for_topic(topic) or [])]
        ends = c.end_offsets(tps)
        return {tp.partition: o for tp, o in ends.items()}
    finally:
        c.close()


def _send(kafka, events, rate: float | None = None, stop: threading.Event | None = None) -> int:
    """Send user events (pre-encoded), paced at ``rate`` events/s when given."""
    from ingest.codec import encode
    from ingest.contract import USER_EVENTS
    from ingest.producer import EventProducer

    t0 = time.monotonic()
    sent = 0
    with EventProducer(kafka) as prod:
        for ev in events:
            if stop is not None and stop.is_set():
                break
            prod.send_raw(USER_EVENTS, ev.user_id.encode(), encode(ev))
            sent += 1
            if rate:
                ahead = t0 + sent / rate - time.monotonic()
                if ahead > 0:
                    time.sleep(ahead)
    return sent


def _wait_applied(sup, n: int, timeout_s: float) -> None:
    """Until the shards' offsets cover ``n`` messages and no shard reports lag."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        st = sup.status()
        done = sum(sum(r.get("offsets", {}).values()) for r in st["shards"])
        if done >= n and st["total"]["lag"] == 0 and st["total"]["running"] == st["total"]["shards"]:
            return
        time.sleep(0.5)


def run(ctx) -> None:
    import ray

    from actors.checkpoint import CheckpointConfig
    from actors.sequence_state import SequenceConfig
    from actors.supervisor import SequenceSupervisor, SupervisorConfig, format_status
    from infra.commands.sequences import describe_user
    from ingest.contract import replace
    from ingest.topics import ensure_topics

    ensure_topics(ctx.kafka)
    _ensure_ray()
    events = ctx.world.user_events
    backlog = sum(_topic_size(ctx.kafka).values())
    n_back = 0
    if backlog == 0:  # the ingest part did not run: backfill part of the world first
        n_back = min(len(events) // 2, 5_000 if ctx.quick else 30_000)
        ctx.say(f"user-events is empty: backfilling the first {n_back:,} events of the synthetic world")
        _send(ctx.kafka, events[:n_back])
        backlog = n_back
    ctx.say(f"user-events holds {backlog:,} messages; starting the sequence supervisor")

    ckpt = ctx.workdir / "sequences"
    sup = SequenceSupervisor(SupervisorConfig(
        kafka=ctx.kafka, checkpoint=CheckpointConfig(uri=str(ckpt), every_events=20_000, every_s=2.0),
        num_shards=2, sequence=SequenceConfig(capacity=256), monitor_s=2.0,
        freshness_window_s=3.0))
    ctx.state["sequences"] = sup  # registered first so the demo's teardown stops it even if we fail below
    t0 = time.time()
    sup.start()
    sup.wait_ready()
    _wait_applied(sup, backlog, 120)
    ctx.say(f"backlog folded into per-user ring buffers in {time.time() - t0:.1f} s "
            f"(checkpoints: {ckpt})")
    ctx.say(format_status(sup.status()))
    time.sleep(3.0)  # let the 3 s freshness window forget the backlog (old event times)

    # -- live phase: the world's next events, stamped now -------------------------------------
    rate = 1_000.0 if ctx.quick else 2_000.0
    seconds = 6.0 if ctx.quick else 12.0
    start = n_back if n_back else len(events) // 2
    chunk = events[start:start + int(rate * seconds)]
    if len(chunk) < rate * seconds:
        chunk = (chunk + events[: int(rate * seconds) - len(chunk)])
    stamp = int(time.time() * 1000)

    def live_events():
        for k, ev in enumerate(chunk):
            yield replace(ev, event_id=f"live-{k}-{ev.event_id}"[:128], ts=int(time.time() * 1000))

    watched = [u for u, _ in Counter(e.user_id for e in chunk).most_common(3)]
    ctx.say(f"\nlive: streaming {len(chunk):,} events at {rate:,.0f}/s (event time = now); "
            f"watching users {', '.join(watched)}")
    stop = threading.Event()
    sender = threading.Thread(target=_send, args=(ctx.kafka, live_events(), rate, stop), daemon=True)
    sender.start()
    try:
        while sender.is_alive():
            time.sleep(1.5)
            now = time.time() * 1000
            h = sup.histories(watched)
            t = sup.status()["total"]
            ctx.say(f"[{(now - stamp) / 1000:5.1f}s] {t['events_per_s']:>7,.0f} ev/s applied, lag {t['lag']:,}, "
                    f"freshness p99 {t['freshness_p99_ms']:.0f} ms over the last 3 s (event time → applied)")
            for b, u in enumerate(watched):
                ctx.say("    " + describe_user(h, b, u, now, last=4))
    finally:
        stop.set()
        sender.join()
    _wait_applied(sup, backlog + len(chunk), 60)
    st = sup.status()
    ctx.say("\n" + format_status(st))

    # -- a crash: kill -9 one shard; it comes back from its checkpoint with the same state -------
    before = st["total"]
    pid = ray.get(sup.shards[0].pid.remote())
    ctx.say(f"\nkill -9 shard 0 (pid {pid}) — Ray restarts it; it reloads its checkpoint and seeks to its offsets")
    os.kill(pid, signal.SIGKILL)
    time.sleep(1.0)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        try:
            if ray.get(sup.shards[0].pid.remote(), timeout=10) != pid:
                break
        except Exception:  # noqa: BLE001 - restarting
            pass
        time.sleep(0.5)
    _wait_applied(sup, backlog + len(chunk), 60)
    after = sup.status()["total"]
    same = (after["events_applied"], after["users"]) == (before["events_applied"], before["users"])
    ctx.say(f"after restart: {after['events_applied']:,} events applied for {after['users']:,} users "
            f"(before the crash: {before['events_applied']:,} / {before['users']:,}) — "
            + ("identical, nothing lost or counted twice" if same else "DIFFERENT (a bug)"))
    ctx.say("the supervisor stays up for the serving part: ctx.state['sequences']")
