"""``genrec tokenize``: fit a semantic-ID tokenizer on a data set or the archive; write tokenizer + catalog.

Items come from a data set (``--data synthetic|ml100k|FILE``) or the Parquet
archive's ``item-events`` (``--archive ROOT``; latest upsert per item, retired
items dropped). Embeddings: MiniLM text (``content``), co-occurrence PPMI-SVD
from the data set's user events (``collab``), or their fusion; items without
text fall back to collaborative vectors. Prints the quality report
(utilisation per level, collision rate, unique SIDs, reconstruction error)
and writes ``OUT/tokenizer.bin`` (load with models.sid.tokenizer.tokenizer_from_bytes),
``OUT/catalog.bin`` (models.sid.catalog.Catalog.from_bytes) and ``OUT/report.json``.
``--install-checkpoint DIR`` also installs the tokenizer for an item indexer.
"""

from __future__ import annotations

import json
import time
from pathlib import Path


def register(sub) -> None:
    p = sub.add_parser("tokenize", help="fit RQ-KMeans / RQ-VAE semantic IDs on a data set or the archive",
                       description=__doc__.split("\n\n", 1)[1])
    p.add_argument("--data", default="synthetic", help="synthetic | ml100k | a file (default: synthetic)")
    p.add_argument("--archive", default="", help="use item-events from this Parquet archive root instead")
    p.add_argument("--tokenizer", default="rq_kmeans", choices=["rq_kmeans", "rq_vae"])
    p.add_argument("--embeddings", default="content", choices=["content", "collab", "fusion"])
    p.add_argument("--levels", type=int, default=3)
    p.add_argument("--codebook-size", type=int, default=0, help="codes per level (0: from the catalog size)")
    p.add_argument("--epochs", type=int, default=150, help="RQ-VAE epochs")
    p.add_argument("--plain-kmeans", action="store_true",
                   help="RQ-KMeans without balanced k-means (balanced is the default: fewer collisions)")
    p.add_argument("--encoder-quantize", default="none", choices=["none", "int8"],
                   help="text encoder mode; fit with the mode the item indexer will use (default none = fp32)")
    p.add_argument("--out", default=".genrec/tokenizer", help="output folder (default .genrec/tokenizer)")
    p.add_argument("--install-checkpoint", default="", help="checkpoint dir/URI of an item indexer")
    p.add_argument("--indexer-name", default="item-indexer")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads; the text encoder runs that many "
                   "worker threads of one intra-op thread each (0 = torch's default on one thread)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=run)


def _items_and_sequences(args):
    """(item events, item-index sequences or None)."""
    if args.archive:
        from ingest.archive import read_records
        from ingest.contract import ITEM_EVENTS

        latest = {}
        for r in read_records(args.archive, ITEM_EVENTS):
            if r.item_id not in latest or r.ts >= latest[r.item_id].ts:
                latest[r.item_id] = r
        items = [r for r in latest.values() if r.op == "upsert"]
        return sorted(items, key=lambda r: (r.ts, r.item_id)), None
    from ingest.datasets import load_dataset

    ds = load_dataset(args.data)
    latest = {}
    for r in ds.item_events:
        latest[r.item_id] = r
    items = [r for r in latest.values() if r.op == "upsert"]
    # items that only appear in user events (ID-only data sets)
    from ingest.contract import ItemEvent

    known = {r.item_id for r in items}
    for e in ds.user_events:
        if e.item_id not in known:
            known.add(e.item_id)
            items.append(ItemEvent(item_id=e.item_id, ts=e.ts))
    pos = {r.item_id: i for i, r in enumerate(items)}
    seqs: dict[str, list[int]] = {}
    for e in ds.user_events:
        seqs.setdefault(e.user_id, []).append(pos[e.item_id])
    import numpy as np

    return items, [np.asarray(s) for s in seqs.values()]


def run(args) -> int:
    import numpy as np
    import torch

    from models.sid.catalog import Catalog, CatalogConfig
    from models.sid.embeddings import CooccurrenceConfig, collaborative_embeddings, fuse
    from models.sid.tokenizer import report, tokenizer_to_bytes

    if args.threads:
        torch.set_num_threads(args.threads)
    t0 = time.time()
    items, seqs = _items_and_sequences(args)
    if not items:
        raise SystemExit("no items to tokenize (empty data set or archive)")
    texts = [r.content_text() for r in items]
    has_text = np.array([bool(t.strip()) for t in texts])
    text_emb = collab = None
    if args.embeddings in ("content", "fusion") and has_text.any():
        from actors.text_encoder import TextEncoderConfig, shared_encoder

        text_emb = np.zeros((len(items), 384), dtype=np.float32)
        enc = shared_encoder(TextEncoderConfig(quantize=args.encoder_quantize, threads=args.threads))
        text_emb[has_text] = enc.encode([t for t, h in zip(texts, has_text) if h])
    if args.embeddings in ("collab", "fusion") or not has_text.all():
        if seqs is None:
            raise SystemExit("collaborative embeddings need user events: use --data, not --archive")
        collab, _ = collaborative_embeddings(seqs, len(items), CooccurrenceConfig())
    if args.embeddings == "content" and collab is None:
        emb = text_emb
    elif args.embeddings == "collab" or text_emb is None:
        emb = collab
    else:
        emb = fuse(text_emb, collab, 0.5 if args.embeddings == "fusion" else 1.0)
    keep = np.linalg.norm(emb, axis=1) > 0
    if not keep.all():
        print(f"{int((~keep).sum())} items have neither text nor behaviour; left out")
    items = [r for r, k in zip(items, keep) if k]
    emb = emb[keep]
    if args.tokenizer == "rq_kmeans":
        from models.sid.rq_kmeans import RQKMeans, RQKMeansConfig
        tok = RQKMeans(RQKMeansConfig(levels=args.levels, codebook_size=args.codebook_size,
                                            balanced=not args.plain_kmeans)).fit(emb)
    else:
        from models.sid.rq_vae import RQVAE, RQVAEConfig
        tok = RQVAE(RQVAEConfig(levels=args.levels, codebook_size=args.codebook_size, epochs=args.epochs)).fit(emb)
    rep = report(tok, emb)
    cat = Catalog(CatalogConfig(level_sizes=tuple(tok.sid_level_sizes), dim=tok.dim))
    res = cat.upsert([r.item_id for r in items], tok.encode_candidates(emb, 8), emb)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "tokenizer.bin").write_bytes(tokenizer_to_bytes(tok))
    (out / "catalog.bin").write_bytes(cat.to_bytes())
    summary = {"items": len(items), "tokenizer": tok.version, "sid_level_sizes": list(tok.sid_level_sizes),
               "embeddings": args.embeddings, **rep.as_metrics(), "rejected": len(res.rejected),
               "seconds": round(time.time() - t0, 1), "out": str(out)}
    (out / "report.json").write_text(json.dumps(summary, indent=2))
    if args.install_checkpoint:
        from actors.checkpoint import CheckpointStore
        from actors.item_indexer import install_tokenizer

        install_tokenizer(CheckpointStore(args.install_checkpoint), args.indexer_name, tok)
    if args.json:
        print(json.dumps(summary))
    else:
        print(f"{len(items)} items -> {tok.version}, SID levels {tok.sid_level_sizes}")
        for i, u in enumerate(rep.utilization):
            print(f"  level {i + 1}: {tok.level_sizes[i]} codes, utilisation {u:.3f}")
        print(f"  collision rate before de-duplication {rep.collision_rate:.4f}; unique SIDs after "
              f"{rep.unique_sid_fraction:.4f}; reconstruction cosine {rep.recon_cosine:.3f}")
        print(f"wrote {out}/tokenizer.bin, catalog.bin, report.json")
    return 0
