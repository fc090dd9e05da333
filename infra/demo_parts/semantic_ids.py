"""Demo part (issue 4): fit semantic IDs on the synthetic world's items; new items get SIDs live.

1. Embeds every item's text with all-MiniLM-L6-v2 (offline, batched).
2. Fits RQ-KMeans (OneRec) on the items that exist at the start and prints
   codebook utilisation per level, collision rate before de-duplication and
   the unique-SID fraction after.
3. Starts the item indexer on ``item-events`` and sends it the initial
   catalog (items the ingest part already replayed there are re-sends of
   known content: idempotent no-ops).
4. Produces a dozen *new* items (late arrivals of the world plus two written
   here) one by one and prints, for each, its SID, the produce→indexed
   latency and its nearest neighbours in the faiss index.
5. Retires an item and brings it back (same SID), keeps a replica in sync
   through versioned deltas, then indexes the rest of the world's catalog.

Leaves ``ctx.state["tokenizer"]`` (the fitted RQ-KMeans) and
``ctx.state["catalog"]`` (:class:`models.sid.catalog.Catalog` with every world
item) for later parts.
"""

from __future__ import annotations

import os
import time

import numpy as np

TITLE = "Semantic IDs: tokenizer fit, catalog trie + faiss, new items receiving SIDs live"


class _KnownEmbeddings:
    """The real encoder, with the embeddings this part already computed for known texts reused."""

    def __init__(self, encoder, texts: list[str], emb: np.ndarray):
        self.encoder, self.dim = encoder, encoder.dim
        self._known = dict(zip(texts, emb))

    def encode(self, texts: list[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        todo = [i for i, t in enumerate(texts) if t not in self._known]
        for i, t in enumerate(texts):
            if t in self._known:
                out[i] = self._known[t]
        if todo:
            out[todo] = self.encoder.encode([texts[i] for i in todo])
        return out


def run(ctx) -> None:
    import torch

    from actors.item_indexer import ItemIndexer, ItemIndexerConfig
    from actors.text_encoder import TextEncoderConfig, shared_encoder
    from ingest.contract import ITEM_EVENTS, ItemEvent, replace
    from ingest.producer import EventProducer, ProducerConfig
    from ingest.topics import ensure_topics
    from models.sid.catalog import Catalog
    from models.sid.rq_kmeans import RQKMeans
    from models.sid.tokenizer import report

    threads = torch.get_num_threads()
    if (os.cpu_count() or 1) <= 2:
        torch.set_num_threads(1)          # on 2 shared cores one thread beats two fighting
    indexer = None
    try:
        world = ctx.world
        catalog_events = world.catalog                     # every item, arrival order
        start_ts = world.cfg.start_ts_ms
        initial = [e for e in catalog_events if e.ts <= start_ts]
        live_new = [e for e in catalog_events if e.ts > start_ts][-10:]
        live_ids = {e.item_id for e in live_new}

        # sub-batches on 2 worker threads of one intra-op thread each (actors/text_encoder.py): both cores,
        # without OpenMP barriers fighting the demo's other threads
        enc = shared_encoder(TextEncoderConfig(threads=min(2, os.cpu_count() or 1)))
        texts = [e.content_text() for e in catalog_events]
        t0 = time.time()
        emb = enc.encode([t for t, e in zip(texts, catalog_events) if e.item_id not in live_ids])
        dt = time.time() - t0
        ctx.say(f"embedded {len(emb):,} item texts with all-MiniLM-L6-v2 on {enc.device} in {dt:.1f} s "
                f"({len(emb) / max(dt, 1e-9):,.0f} items/s)")
        known_texts = [t for t, e in zip(texts, catalog_events) if e.item_id not in live_ids]
        emb_of = dict(zip(known_texts, emb))

        # --- fit on the items that exist at the start ---------------------------------------
        x0 = np.stack([emb_of[e.content_text()] for e in initial])
        t0 = time.time()
        tok = RQKMeans().fit(x0)
        rep = report(tok, x0)
        ctx.say(f"RQ-KMeans on {len(initial):,} initial items in {time.time() - t0:.1f} s: "
                f"{len(tok.level_sizes)} levels x {tok.level_sizes[0]} codes (K ~ sqrt(N), see "
                f"models/sid/tokenizer.py) + a de-duplication level of {tok.dedup_size}")
        ctx.say("  utilisation per level: " + ", ".join(f"L{i + 1} {u:.0%}" for i, u in enumerate(rep.utilization))
                + f"; collision rate before de-duplication {rep.collision_rate:.1%}; "
                  f"unique SIDs after {rep.unique_sid_fraction:.0%}; reconstruction cosine {rep.recon_cosine:.3f}")

        # --- the indexer catches up with what is already on item-events ------------------------
        ensure_topics(ctx.kafka)
        indexer = ItemIndexer(ctx.kafka, tok, ItemIndexerConfig(name="demo-indexer", poll_timeout_ms=10),
                              encoder=_KnownEmbeddings(enc, known_texts, emb))
        replica = Catalog.from_bytes(indexer.snapshot())   # a serving replica, fed by deltas below
        t0 = time.time()
        with EventProducer(ctx.kafka) as prod:             # the initial catalog (re-sends are no-ops)
            for e in initial:
                prod.send(e)
        indexer.run_until_caught_up(timeout_s=600)
        st = indexer.status()
        ctx.say(f"indexer caught up with {st['events']:,} item-events in {time.time() - t0:.1f} s: "
                f"{st['live_items']:,} items in the trie and the faiss index (catalog version {st['version']})")

        # --- new items, live ----------------------------------------------------------------------
        extra = [ItemEvent(item_id="new-demo-1", ts=0, title="Rocket launch to Mars: live coverage",
                           tags=["space", "science"], text="A crewed rocket lifts off towards Mars."),
                 ItemEvent(item_id="new-demo-2", ts=0, title="Slow-cooked lentil soup",
                           tags=["cooking"], text="A hearty winter recipe with lentils and vegetables.")]
        names = world.topic_names

        def label(item_id: str) -> str:
            title = next((e.title for e in extra if e.item_id == item_id), None)
            if title is not None:
                return f"'{title[:40]}'"
            k = world.item_index(item_id)
            return f"'{title_of[item_id][:40]}' [{names[int(world.item_primary[k])]}]"

        title_of = {e.item_id: e.title for e in catalog_events}
        ctx.say("\nnew items arriving (produced to item-events one by one, indexed live):")
        with EventProducer(ctx.kafka, ProducerConfig(linger_ms=0)) as prod:
            for ev in live_new + extra:
                sent = time.time()
                prod.send(replace(ev, ts=int(sent * 1000)))
                prod.flush()
                while not indexer.catalog.in_index(ev.item_id) and time.time() - sent < 30:
                    indexer.step(timeout_ms=20)
                lat = (time.time() - sent) * 1000
                sid = indexer.catalog.sid_of(ev.item_id)
                nn = indexer.catalog.neighbours(ev.item_id, 3)
                ctx.say(f"  {ev.item_id:<11} SID {str(sid.tolist()):<18} in {lat:6.0f} ms  {label(ev.item_id)}")
                for nid, score in nn:
                    same = os.path.commonprefix([list(sid), list(indexer.catalog.sid_of(nid))])
                    ctx.say(f"      ~ {nid:<9} cos {score:.2f}  shares {len(same)} SID code(s)  {label(nid)}")

            # --- retire and come back; the replica follows through deltas -------------------------
            victim = live_new[0]
            sid_before = indexer.catalog.sid_of(victim.item_id).tolist()
            prod.send(ItemEvent(item_id=victim.item_id, ts=int(time.time() * 1000), op="retire"))
            prod.flush()
            indexer.run_until_caught_up()
            gone = not indexer.catalog.in_index(victim.item_id)
            prod.send(replace(victim, ts=int(time.time() * 1000)))
            prod.flush()
            indexer.run_until_caught_up()
            ctx.say(f"\nretired {victim.item_id}: out of trie and index = {gone}; back again with the same SID = "
                    f"{indexer.catalog.sid_of(victim.item_id).tolist() == sid_before}")

            # --- the rest of the world's catalog (for the generator part) ------------------------
            missing = [e for e in catalog_events if indexer.catalog.index_of(e.item_id) is None]
            for e in missing:
                prod.send(e)
            prod.flush()
        indexer.run_until_caught_up(timeout_s=600)
        delta = indexer.delta_since(replica.version)
        replica.apply(delta)
        ctx.say(f"indexed the remaining {len(missing):,} catalog items; a replica applied a delta of "
                f"{len(delta):,} ops {delta.counts()} and is identical: "
                f"{replica.fingerprint() == indexer.catalog.fingerprint()}")
        st = indexer.status()
        ctx.say(f"catalog: {st['live_items']:,} live items, version {st['version']}, "
                f"{st['unchanged']:,} idempotent re-sends skipped, {st['dead_lettered']} dead letters")
        ctx.state["tokenizer"] = tok
        ctx.state["catalog"] = indexer.catalog
    finally:
        if indexer is not None:
            indexer.close(checkpoint=False)
        torch.set_num_threads(threads)
