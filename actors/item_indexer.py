"""Item indexer: ``item-events`` → embeddings → semantic IDs → catalog (trie + faiss), live.

The streaming half of the semantic-ID pipeline (docs/architecture.md §4):

1. consume ``item-events`` with a manually assigned :class:`ContractConsumer`
   (malformed messages are dead-lettered by the loop itself);
2. check each upsert's content — bad input (no text and no embedding, an
   embedding of the wrong dimension or with NaNs, text over
   ``max_text_chars``) becomes a ``dead-letters`` record with the reason;
3. batch-encode new or changed text with the sentence encoder (in process, or
   a Triton server when ``triton_url`` is set), or take the given embedding;
4. quantize with the current codebooks (``encode_candidates``), let the
   catalog give each *new* item the first candidate prefix with a free
   de-duplication slot (known items keep their SID: stable), add it to the
   trie and the faiss index; retire removes items from both;
5. checkpoint catalog + offsets atomically (actors/checkpoint.py) every
   ``checkpoint_every_s`` / ``checkpoint_every_events``; on restart load it
   and seek to its offsets — replaying the same events in the same order
   gives the same SIDs, so a crash at any instant ends in the catalog a
   no-fault run builds (dead letters are at-least-once across a crash);
6. publish changes as versioned deltas: readers call ``delta_since(version)``
   (or take ``snapshot()``) and ``Catalog.apply`` them.

Determinism needs one total order of catalog events: de-duplication slots
and item indices are handed out in consumption order, so ``item-events``
keeps one partition (the default topic config; thousands of catalog changes
per second fit in one — the encoder, not Kafka, bounds the rate). With
several partitions a replay could interleave them differently (poll
interleaving is up to the client) and give colliding items other
de-duplication codes, so the indexer refuses to start on a topic with more
than one partition and says how to fix it. (A deterministic multi-partition
merge would need a watermark per partition and would hold every item back
until the slowest partition moves: latency for no gain at these rates.)

Latency (produce → in trie and faiss): text items are micro-batched by time —
after a poll that holds text to encode, the indexer keeps polling for up to
``batch_wait_ms`` and then encodes everything in one length-sorted batch, so
an item waits at most that long plus one batch encode; when the encoder falls
behind, batches grow by themselves (up to ``max_batch``) and are encoded and
published ``flush_items`` at a time, so the head of a backlog goes live
first. The consumer asks the broker to answer a fetch within
``fetch_max_wait_ms`` (10 ms; kafka-python's default of 500 ms held every
item at the broker for up to half a second). ``stage_ms`` splits each
item's latency into fetch (produce → polled: the broker, plus waiting while
the indexer encodes the previous batch), batch (polled → micro-batch
closed), encode (closed → its embeddings ready) and insert (quantize, trie,
faiss, delta log); ``status()`` reports their p50/p99. Encoder knobs
(worker threads, backend, int8, max sequence length, content-hash cache) are
in actors/text_encoder.py.

An unchanged re-send (same content hash) is skipped before encoding, so
re-delivery is idempotent and cheap. ``python -m actors.item_indexer`` runs
one as a process; :func:`item_indexer_actor` wraps it as a Ray actor.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import signal
import threading
import time
from collections import deque
from dataclasses import dataclass

import numpy as np

from actors.checkpoint import CheckpointStore
from ingest.codec import dead_letter, encode as encode_record
from ingest.consumer_loop import ConsumerConfig, ContractConsumer
from ingest.contract import DEAD_LETTERS, ITEM_EVENTS, ItemEvent
from ingest.kafka_client import KafkaConfig, as_config
from ingest.producer import EventProducer
from ingest.topics import partition_count
from models.sid.catalog import Catalog, CatalogConfig, CatalogDelta
from models.sid.tokenizer import Tokenizer, tokenizer_from_bytes, tokenizer_to_bytes

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ItemIndexerConfig:
    """Knobs of one indexer. ``name`` names its checkpoints and its Kafka group (lag tools).

    ``checkpoint_uri`` empty = no checkpoints (tests, benchmarks). ``candidates``:
    how many last-level codes to try when a prefix's de-duplication slots are
    full. ``triton_url`` set = embeddings come from that Triton server.
    """

    name: str = "item-indexer"
    checkpoint_uri: str = ""
    checkpoint_every_s: float = 2.0
    checkpoint_every_events: int = 5000
    max_batch: int = 512
    poll_timeout_ms: int = 20
    fetch_max_wait_ms: int = 10       # broker-side fetch wait; kafka-python's 500 ms default delays every item
    max_text_chars: int = 8000
    candidates: int = 8
    encoder_device: str = "auto"
    encoder_batch_size: int = 64
    encoder_threads: int = 2          # CPU: sub-batches on 2 workers x 1 intra-op thread (text_encoder.py)
    encoder_quantize: str = "none"    # "int8": faster on CPU, cosine ~0.98 to fp32 (text_encoder.py)
    encoder_max_seq_len: int = 128
    encoder_cache_size: int = 20_000
    batch_wait_ms: int = 20           # collect text items this long after a poll, then encode once
    flush_items: int = 64             # encode + publish a backlog in slices of this many (earlier ones go live first)
    triton_url: str = ""
    triton_model: str = "minilm"
    use_gpu_index: bool = False

    def __post_init__(self) -> None:
        if not self.name or any(c.isspace() for c in self.name):
            raise ValueError(f"ItemIndexerConfig.name={self.name!r} must be a non-empty word")
        if self.checkpoint_every_s <= 0 or self.checkpoint_every_events < 1:
            raise ValueError(f"ItemIndexerConfig checkpoint_every_s={self.checkpoint_every_s} and "
                             f"checkpoint_every_events={self.checkpoint_every_events} must be positive")
        if min(self.max_batch, self.candidates, self.max_text_chars, self.flush_items) < 1:
            raise ValueError(f"ItemIndexerConfig max_batch={self.max_batch}, candidates={self.candidates}, "
                             f"max_text_chars={self.max_text_chars}, flush_items={self.flush_items} must be >= 1")
        if not 0 <= self.fetch_max_wait_ms <= 1000:
            raise ValueError(f"ItemIndexerConfig.fetch_max_wait_ms={self.fetch_max_wait_ms} must be in [0, 1000] "
                             "(it bounds how long new items sit at the broker; ~10 ms)")
        if self.encoder_threads < 0:
            raise ValueError(f"ItemIndexerConfig.encoder_threads={self.encoder_threads} must be >= 0 "
                             "(0 = encode on the indexer's thread with torch's settings)")
        if not 0 <= self.batch_wait_ms <= 1000:
            raise ValueError(f"ItemIndexerConfig.batch_wait_ms={self.batch_wait_ms} must be in [0, 1000] "
                             "(it adds to every text item's latency; ~20 ms is plenty)")
        if self.encoder_quantize not in ("none", "int8"):
            raise ValueError(f"ItemIndexerConfig.encoder_quantize={self.encoder_quantize!r} must be 'none' or 'int8'")


def content_key(ev: ItemEvent) -> str:
    """Hash of what the SID depends on (embedding if given, else the encoder's text)."""
    h = hashlib.sha1()
    if ev.embedding is not None:
        h.update(b"E")
        h.update(np.asarray(ev.embedding, dtype=np.float32).tobytes())
    else:
        h.update(b"T")
        h.update(ev.content_text().encode("utf-8"))
    return h.hexdigest()[:20]


def _has_text(messages) -> bool:
    """Whether a poll holds an upsert the encoder must embed (worth waiting for company)."""
    return any(m.record.op != "retire" and m.record.embedding is None for m in messages)


def tokenizer_checkpoint_name(name: str) -> str:
    return f"{name}.tokenizer"


def install_tokenizer(store: CheckpointStore, name: str, tok: Tokenizer) -> None:
    """Store the codebooks an indexer named ``name`` will use (a deliberate rollout = a new name)."""
    store.save(tokenizer_checkpoint_name(name), tokenizer_to_bytes(tok), {})


@dataclass
class _Pending:
    item_id: str
    partition: int
    offset: int
    key: bytes | None
    record: ItemEvent
    ts_ms: int
    ckey: str
    polled_ms: float = 0.0      # wall clock (ms) when the poll that fetched it returned


STAGES = ("fetch", "batch", "encode", "insert")


class ItemIndexer:
    """The indexer's state machine; drive it with :meth:`step` / :meth:`run` (one thread)."""

    def __init__(self, kafka: KafkaConfig | str, tokenizer: Tokenizer | None = None,
                 config: ItemIndexerConfig = ItemIndexerConfig(), encoder=None, partitions=None):
        self.kafka = as_config(kafka)
        self.config = config
        self._store = CheckpointStore(config.checkpoint_uri) if config.checkpoint_uri else None
        offsets: dict[int, int] = {}
        catalog = None
        if self._store is not None:
            saved = self._store.load(tokenizer_checkpoint_name(config.name))
            if saved is not None:
                ck_tok = tokenizer_from_bytes(saved[0])
                if tokenizer is not None and tokenizer.version != ck_tok.version:
                    log.warning("indexer %s keeps its checkpointed codebooks %s (given %s): SIDs are stable; "
                                "roll out new codebooks under a new indexer name", config.name,
                                ck_tok.version, tokenizer.version)
                tokenizer = ck_tok
            elif tokenizer is not None:
                install_tokenizer(self._store, config.name, tokenizer)
            got = self._store.load(config.name)
            if got is not None:
                catalog = Catalog.from_bytes(got[0])
                offsets = got[1]
        if tokenizer is None:
            raise ValueError(f"indexer {config.name!r} has no tokenizer: pass one, or install one in "
                             f"{config.checkpoint_uri or 'a checkpoint store'} (install_tokenizer)")
        self.tokenizer = tokenizer
        self.catalog = catalog or Catalog(CatalogConfig(level_sizes=tuple(tokenizer.sid_level_sizes),
                                                        dim=tokenizer.dim, use_gpu=config.use_gpu_index))
        self._encoder = encoder
        self._dlq = EventProducer(self.kafka)
        self.consumer = ContractConsumer(
            self.kafka, ITEM_EVENTS, partitions=partitions, group_id=f"genrec-{config.name}",
            config=ConsumerConfig(max_batch=config.max_batch, poll_timeout_ms=config.poll_timeout_ms,
                                  fetch_max_wait_ms=config.fetch_max_wait_ms),
            dead_letters=self._dlq, start_offsets=offsets, from_beginning=True)
        n_parts = len(self.consumer.partitions) if partitions is None else \
            partition_count(self.kafka, self.kafka.topic(ITEM_EVENTS))
        if n_parts != 1:
            self.consumer.close()
            self._dlq.close()
            raise ValueError(
                f"topic {self.kafka.topic(ITEM_EVENTS)!r} has {n_parts} partitions; the item indexer needs exactly "
                "one, because semantic IDs (de-duplication slots) are handed out in consumption order and a "
                "replay after a crash must see the same order. Create item-events with 1 partition "
                "(TopicsConfig default) — one partition carries far more item changes than the encoder can embed")
        self.offsets: dict[int, int] = dict(offsets)
        self._ckpt_offsets: dict[int, int] = dict(offsets)
        self._since_ckpt = 0
        self._last_ckpt = time.monotonic()
        self.lock = threading.RLock()   # readers (delta_since, search) vs the loop
        self.latencies_ms: deque[float] = deque(maxlen=100_000)   # produce -> in trie + index
        # the same latency in stages (ms, one entry per indexed item): fetch = produce -> polled,
        # batch = polled -> micro-batch closed, encode = closed -> embeddings ready, insert = quantize + catalog
        self.stage_ms: dict[str, deque[float]] = {k: deque(maxlen=100_000) for k in STAGES}
        self._closed_ms = 0.0
        self.stats = {"events": 0, "added": 0, "updated": 0, "unchanged": 0, "retired": 0,
                      "dead_lettered": 0, "encoded": 0, "checkpoints": 0, "restored_version": self.catalog.version}

    # -------------------------------------------------------------- encoders
    @property
    def encoder(self):
        if self._encoder is None:
            if self.config.triton_url:
                from actors.triton_encoder import TritonEncoder, TritonEncoderConfig
                self._encoder = TritonEncoder(TritonEncoderConfig(url=self.config.triton_url,
                                                                  model=self.config.triton_model))
            else:
                from actors.text_encoder import TextEncoderConfig, shared_encoder
                c = self.config
                self._encoder = shared_encoder(TextEncoderConfig(
                    device=c.encoder_device, batch_size=c.encoder_batch_size, threads=c.encoder_threads,
                    quantize=c.encoder_quantize, max_seq_len=c.encoder_max_seq_len,
                    cache_size=c.encoder_cache_size))
        return self._encoder

    # -------------------------------------------------------------- the loop
    def step(self, timeout_ms: int | None = None) -> int:
        """Poll one micro-batch and apply it; returns how many messages it consumed."""
        batch = self.consumer.poll(timeout_ms)
        if not batch.consumed:
            self._maybe_checkpoint()
            return 0
        polled = [time.time() * 1000.0] * len(batch.messages)
        if self.config.batch_wait_ms and _has_text(batch.messages):
            self._collect_more(batch, polled)
        self._closed_ms = time.time() * 1000.0
        # the catalog is written by this thread only; ``self.lock`` is held just while it changes, so
        # readers (delta_since, snapshot, search) are never blocked behind an encode
        pending: list[_Pending] = []
        for m, t_polled in zip(batch.messages, polled):
            ev: ItemEvent = m.record
            if ev.op == "retire":
                self._flush(pending)
                pending = []
                with self.lock:
                    gone = self.catalog.retire([ev.item_id])
                self.stats["retired"] += len(gone)
                continue
            reason = self._check(ev)
            if reason:
                self._dead(m.partition, m.offset, m.key, ev, reason)
                continue
            ck = content_key(ev)
            idx = self.catalog.index_of(ev.item_id)
            if idx is not None and self.catalog.is_live(ev.item_id) and self.catalog.content_key(idx) == ck \
                    and not any(p.item_id == ev.item_id for p in pending):
                self.stats["unchanged"] += 1         # idempotent re-delivery: nothing to encode
                continue
            pending.append(_Pending(ev.item_id, m.partition, m.offset, m.key, ev, m.timestamp_ms, ck, t_polled))
        self._flush(pending)
        with self.lock:
            self.offsets.update(batch.next_offsets)
            self.stats["events"] += batch.consumed
            self.stats["dead_lettered"] += batch.dead_lettered
        self._since_ckpt += batch.consumed
        self._maybe_checkpoint()
        return batch.consumed

    def _collect_more(self, batch, polled: list[float]) -> None:
        """Micro-batch by time: keep polling for ``batch_wait_ms`` (or until ``max_batch``) into ``batch``.

        ``polled`` gets the wall-clock time (ms) each new message arrived, for the stage timings.
        """
        deadline = time.monotonic() + self.config.batch_wait_ms / 1000.0
        while batch.consumed < self.config.max_batch:
            left_ms = int((deadline - time.monotonic()) * 1000)
            if left_ms <= 0:
                return
            more = self.consumer.poll(left_ms)
            polled.extend([time.time() * 1000.0] * len(more.messages))
            batch.messages.extend(more.messages)
            batch.dead_lettered += more.dead_lettered
            batch.consumed += more.consumed
            batch.next_offsets.update(more.next_offsets)

    def _check(self, ev: ItemEvent) -> str:
        if ev.embedding is not None:
            if len(ev.embedding) != self.tokenizer.dim:
                return (f"embedding has dimension {len(ev.embedding)} but the tokenizer expects "
                        f"{self.tokenizer.dim}; send embeddings from the same encoder or send text instead")
            if not np.isfinite(np.asarray(ev.embedding, dtype=np.float64)).all():
                return "embedding contains NaN or infinite values"
            return ""
        text = ev.content_text()
        if not text.strip():
            return "item has no text (title/text/tags) and no embedding: nothing to derive a semantic ID from"
        if len(text) > self.config.max_text_chars:
            return (f"item text is {len(text)} characters, over the indexer's limit of "
                    f"{self.config.max_text_chars}; shorten it or send an embedding")
        return ""

    def _flush(self, pending: list[_Pending]) -> None:
        """Encode, quantize and add ``pending`` in order, ``flush_items`` at a time.

        Slices keep the consumption order (so SIDs are the same as one big flush), and a backlog
        becomes visible slice by slice instead of all at the end of one long encode.
        """
        step = self.config.flush_items
        for s in range(0, len(pending), step):
            self._flush_slice(pending[s:s + step])

    def _flush_slice(self, pending: list[_Pending]) -> None:
        if not pending:
            return
        dim = self.tokenizer.dim
        emb = np.zeros((len(pending), dim), dtype=np.float32)
        text_rows = [i for i, p in enumerate(pending) if p.record.embedding is None]
        for i, p in enumerate(pending):
            if p.record.embedding is not None:
                emb[i] = np.asarray(p.record.embedding, dtype=np.float32)
        if text_rows:
            enc = self.encoder.encode([pending[i].record.content_text() for i in text_rows])
            self.stats["encoded"] += len(text_rows)
            if enc.shape[1] != dim:
                for i in text_rows:
                    p = pending[i]
                    self._dead(p.partition, p.offset, p.key, p.record,
                               f"text encoder gives dimension {enc.shape[1]} but the tokenizer expects {dim}; "
                               "the indexer's tokenizer was fitted on other embeddings")
                pending = [p for i, p in enumerate(pending) if i not in set(text_rows)]
                emb = np.delete(emb, text_rows, axis=0)
            else:
                emb[text_rows] = enc
        ok = np.isfinite(emb).all(axis=1) & (np.linalg.norm(emb, axis=1) > 0)
        for i in np.flatnonzero(~ok):
            p = pending[i]
            self._dead(p.partition, p.offset, p.key, p.record, "embedding is all zeros or not finite")
        pending = [p for i, p in enumerate(pending) if ok[i]]
        emb = emb[ok]
        if not pending:
            return
        t_encoded = time.time() * 1000.0
        cands = self.tokenizer.encode_candidates(emb, self.config.candidates)      # [N, C, L]
        with self.lock:                               # readers see the catalog and the timings change together
            res = self.catalog.upsert([p.item_id for p in pending], cands, emb, [p.ckey for p in pending])
            now = time.time() * 1000.0
            self.stats["added"] += len(res.added)
            self.stats["updated"] += len(res.updated)
            self.stats["unchanged"] += len(res.unchanged)
            done = set(res.added) | set(res.updated)
            for p in pending:
                if p.item_id in done:
                    self.latencies_ms.append(now - p.ts_ms)
                    self.stage_ms["fetch"].append(p.polled_ms - p.ts_ms)
                    self.stage_ms["batch"].append(self._closed_ms - p.polled_ms)
                    self.stage_ms["encode"].append(t_encoded - self._closed_ms)
                    self.stage_ms["insert"].append(now - t_encoded)
        for p in pending:
            if p.item_id in res.rejected:
                self._dead(p.partition, p.offset, p.key, p.record, res.rejected[p.item_id])

    def _dead(self, partition: int, offset: int, key: bytes | None, ev: ItemEvent, reason: str) -> None:
        self._dlq.send(dead_letter(ITEM_EVENTS, partition, offset, key, encode_record(ev), reason),
                       topic=DEAD_LETTERS)
        self.stats["dead_lettered"] += 1

    def _maybe_checkpoint(self, force: bool = False) -> bool:
        if self._store is None or self.offsets == self._ckpt_offsets:
            return False
        due = (self._since_ckpt >= self.config.checkpoint_every_events
               or time.monotonic() - self._last_ckpt >= self.config.checkpoint_every_s)
        if not (force or due):
            return False
        self.checkpoint()
        return True

    def checkpoint(self) -> None:
        """Write catalog + offsets atomically (dead letters first, so none is lost), then commit offsets."""
        if self._store is None:
            return
        with self.lock:
            self._dlq.flush()
            payload = self.catalog.to_bytes()
            offsets = dict(self.offsets)
        self._store.save(self.config.name, payload, offsets)
        self._ckpt_offsets = offsets
        self._since_ckpt = 0
        self._last_ckpt = time.monotonic()
        self.stats["checkpoints"] += 1
        try:
            self.consumer.commit(offsets)   # for lag tools only; the checkpoint is the truth
        except Exception as e:  # noqa: BLE001 - lag reporting must not stop indexing
            log.warning("offset commit failed (lag tools only): %s", e)

    def run(self, stop: threading.Event, idle_sleep_s: float = 0.0) -> None:
        """Loop until ``stop`` is set; a final checkpoint on the way out."""
        while not stop.is_set():
            if self.step() == 0 and idle_sleep_s:
                stop.wait(idle_sleep_s)
        self._maybe_checkpoint(force=True)

    def caught_up(self) -> bool:
        """True when every assigned partition has been consumed to its reported end.

        The reported end can lag the log (seen on tansu), so :meth:`run_until_caught_up`
        also waits for an empty poll.
        """
        ends = self.consumer.end_offsets()
        return all(self.offsets.get(p, 0) >= e for p, e in ends.items())

    def run_until_caught_up(self, timeout_s: float = 60.0) -> None:
        """Step until a poll comes back empty with every partition at its end (tools, tests, benchmarks)."""
        deadline = time.monotonic() + timeout_s
        while True:
            if self.step(timeout_ms=100) == 0 and self.caught_up():
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"indexer {self.config.name} did not catch up in {timeout_s}s "
                                   f"(at {self.offsets})")

    # -------------------------------------------------------------- readers
    def delta_since(self, version: int) -> CatalogDelta:
        with self.lock:
            return self.catalog.delta_since(version)

    def snapshot(self) -> bytes:
        with self.lock:
            return self.catalog.to_bytes()

    def neighbours(self, item_id: str, k: int = 5) -> list[tuple[str, float]]:
        with self.lock:
            return self.catalog.neighbours(item_id, k)

    def status(self) -> dict:
        with self.lock:
            lat = np.asarray(self.latencies_ms) if self.latencies_ms else np.zeros(1)
            stages = {}
            for k, v in self.stage_ms.items():
                a = np.asarray(v) if v else np.zeros(1)
                stages[f"stage_{k}_p50_ms"] = float(np.percentile(a, 50))
                stages[f"stage_{k}_p99_ms"] = float(np.percentile(a, 99))
            return {**stages, "name": self.config.name, "version": self.catalog.version, "live_items": len(self.catalog),
                    "indexed_items": self.catalog.num_indexed, "offsets": dict(self.offsets),
                    "tokenizer": self.tokenizer.version, "level_sizes": list(self.catalog.level_sizes),
                    "latency_p50_ms": float(np.percentile(lat, 50)),
                    "latency_p99_ms": float(np.percentile(lat, 99)), **self.stats}

    def close(self, checkpoint: bool = True) -> None:
        if checkpoint:
            self._maybe_checkpoint(force=True)
        self.consumer.close()
        self._dlq.close()


# ---------------------------------------------------------------------- Ray actor
def item_indexer_actor(max_restarts: int = -1, num_cpus: float = 1):
    """The Ray actor class: an :class:`ItemIndexer` looping in a thread; restarts resume from its checkpoint."""
    import ray

    @ray.remote(max_restarts=max_restarts, max_task_retries=-1, num_cpus=num_cpus, max_concurrency=4)
    class ItemIndexerActor:
        def __init__(self, kafka: KafkaConfig, tokenizer_bytes: bytes | None, config: ItemIndexerConfig):
            tok = tokenizer_from_bytes(tokenizer_bytes) if tokenizer_bytes else None
            self.indexer = ItemIndexer(kafka, tok, config)
            self._stop = threading.Event()
            self._thread = threading.Thread(target=self.indexer.run, args=(self._stop, 0.01), daemon=True)
            self._thread.start()

        def status(self) -> dict:
            return self.indexer.status()

        def delta_since(self, version: int) -> CatalogDelta:
            return self.indexer.delta_since(version)

        def snapshot(self) -> bytes:
            return self.indexer.snapshot()

        def neighbours(self, item_id: str, k: int = 5):
            return self.indexer.neighbours(item_id, k)

        def stop(self) -> dict:
            self._stop.set()
            self._thread.join(timeout=30)
            return self.indexer.status()

    return ItemIndexerActor


# ---------------------------------------------------------------------- process entry
def main(argv: list[str] | None = None) -> int:
    """Run an indexer whose tokenizer is installed in the checkpoint store, until SIGTERM/SIGINT."""
    ap = argparse.ArgumentParser(prog="python -m actors.item_indexer", description=__doc__.split("\n")[0])
    ap.add_argument("--bootstrap", required=True)
    ap.add_argument("--namespace", default="")
    ap.add_argument("--checkpoint", required=True, help="checkpoint directory or pyarrow URI")
    ap.add_argument("--name", default="item-indexer")
    ap.add_argument("--checkpoint-every-s", type=float, default=2.0)
    ap.add_argument("--checkpoint-every-events", type=int, default=5000)
    ap.add_argument("--max-batch", type=int, default=512)
    args = ap.parse_args(argv)
    cfg = ItemIndexerConfig(name=args.name, checkpoint_uri=args.checkpoint, max_batch=args.max_batch,
                            checkpoint_every_s=args.checkpoint_every_s,
                            checkpoint_every_events=args.checkpoint_every_events)
    idx = ItemIndexer(KafkaConfig(bootstrap=args.bootstrap, namespace=args.namespace), None, cfg)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    print(f"indexer {cfg.name} running at catalog version {idx.catalog.version}", flush=True)
    idx.run(stop, idle_sleep_s=0.01)
    idx.close()
    print(f"indexer {cfg.name} stopped: {idx.status()}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
