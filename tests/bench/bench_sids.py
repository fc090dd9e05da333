"""Benchmark suite ``sids``: tokenizer quality, quantize/assign throughput, new-item latency, trie lookups.

``genrec bench sids --dataset ml100k|synthetic [--quick]``

* quality (RQ-KMeans with balanced k-means, the default tokenizer, fitted on
  the dataset's item text embedded by all-MiniLM-L6-v2): codebook utilisation
  per level, collision rate before de-duplication, unique-SID fraction after,
  reconstruction error; plain (unbalanced) RQ-KMeans in the same run as
  ``plain_*``; RQ-VAE (TIGER) as ``rqvae_*``;
* the text encoder: word pieces per item text (``text_tokens_*``, and the
  fraction the 128-piece cap truncates); items/s for fp32 and int8 with 1
  thread and with 2 worker threads (``encode_{fp32,int8}_items_per_s_{1,2}t``)
  and fp32 with 2 OpenMP intra-op threads (``..._2t_intraop``), each also per
  CPU-second of this process (``encode_*_items_per_cpu_s_*``: what the cores
  give without the other tenants of a shared machine); ablations at one
  thread (``enc_ablation_*``, see :func:`_encoder_bench`); re-sent texts
  served by the content-hash cache (``encode_cached_items_per_s``), and
  int8's agreement with fp32: cosine mean/min and the fraction of items
  whose SID (all L codes, resp. level 1) is unchanged (``int8_sid_agreement``,
  ``int8_sid_l1_agreement``);
* ``quantize_items_per_s``: codes for given embeddings (encode_candidates);
* ``assign_items_per_s``: end to end in process — text encoding + quantize +
  catalog upsert (trie + faiss) — with ``encode_items_per_s`` alone beside it;
* ``new_item_p50_ms`` / ``new_item_p99_ms``: a real broker and indexer; held-out
  items are produced to ``item-events`` at a steady 100/s and timed from the
  message's produce timestamp to the moment the item is in the trie and the
  faiss index — text items, encoded by the indexer with its default fp32
  encoder on 2 worker threads (when the CPU encodes fewer than 100 items/s a
  backlog builds and p99 shows it), the same with 2 OpenMP intra-op threads
  as ``new_item_intraop_*``, with the int8 encoder as ``new_item_int8_*``,
  and with the embedding in the event as ``new_item_emb_*``. The default and
  the embedding runs break the latency into stages
  (``*_stage_{fetch,batch,encode,insert,visible}_{p50,p99}_ms``: produce →
  polled → micro-batch closed → embeddings ready → in trie + faiss → seen
  by a probe that follows the catalog deltas every 20 ms like a serving
  replica) and report produce → seen by the probe as ``*_visible_*``;
* ``trie_lookups_per_s``: next-token masks for batches of 256 prefixes
  (prefix keys + the decoding constraint's mask over the trie's sorted keys,
  :class:`models.decoding.constraint.SidConstraint`, vectorised), against ``trie_naive_lookups_per_s``, a nested
  dict walk per prefix in Python, in the same run (``trie_speedup`` = ratio);
  ``trie_lookups_per_s_1m`` repeats it on 1M random 256×256×256×16 SIDs.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import numpy as np

SUITE = "sids"
DATASETS = ("ml100k", "synthetic")

ML100K = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "ml-100k"


def _items(dataset: str, quick: bool):
    if dataset == "ml100k":
        from ingest.movielens import read_items
        items = read_items(ML100K)
    else:
        from ingest.synthetic import SyntheticWorld, WorldConfig
        cfg = WorldConfig.small() if quick else WorldConfig()
        items = SyntheticWorld(cfg).catalog
    return items[:600] if quick else items


def _timeit(fn, min_s: float = 1.0, max_reps: int = 10_000) -> float:
    """Seconds per call (best of repeated batches, after one warm-up)."""
    fn()
    reps, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < min_s and reps < max_reps:
        fn()
        reps += 1
    return (time.perf_counter() - t0) / max(reps, 1)


def _naive_trie(sids: np.ndarray) -> dict:
    root: dict = {}
    for row in sids.tolist():
        node = root
        for c in row:
            node = node.setdefault(c, {})
    return root


def _trie_bench(sids: np.ndarray, level_sizes, rng, min_s: float) -> tuple[float, float]:
    from dataclasses import replace

    import torch

    from models.decoding.constraint import SidConstraint
    from models.sid.trie import SidTrie

    trie = SidTrie(level_sizes)
    trie.add(sids, np.arange(len(sids)))
    naive = _naive_trie(sids)
    d = len(level_sizes)
    pick = rng.integers(0, len(sids), 256)
    depth = rng.integers(0, d, 256)                         # prefixes of length 0..D-1
    prefixes = [sids[p, :k].tolist() for p, k in zip(pick, depth)]
    pad = np.zeros((256, d - 1), dtype=np.int64)
    for i, p in enumerate(prefixes):
        pad[i, :len(p)] = p
    pad_t = torch.as_tensor(pad)
    depth_t = torch.as_tensor(depth)
    kmax = trie.k_max
    con = SidConstraint.of(trie)
    base = con.init(256)
    mult = con.tables.mult[:d - 1]
    used = torch.arange(d - 1)[None, :] < depth_t[:, None]                   # [256, D-1]

    def vectorised():
        prefix = (pad_t * mult * used).sum(1)                                # [256] prefix keys
        return con.mask(replace(base, prefix=prefix, level=depth_t, shared_level=None))

    def python_walk():
        mask = np.zeros((256, kmax), dtype=bool)
        for i, p in enumerate(prefixes):
            node = naive
            for c in p:
                node = node[c]
            mask[i, list(node.keys())] = True
        return mask

    assert np.array_equal(vectorised().numpy(), python_walk())   # same answer before timing
    return 256 / _timeit(vectorised, min_s), 256 / _timeit(python_walk, min_s)


def run(quick: bool = False, dataset: str | None = None) -> dict:
    import torch

    import faiss

    # One intra-op thread for the math: on the shared 2-core development machines (load 5-10)
    # OpenMP barriers across 2 threads cost far more than they give (measured: trie masks 40x
    # slower). The encoder is measured with 1 and 2 threads; the indexer's runs use its default workers.
    threads = int(os.environ.get("GENREC_BENCH_THREADS", "1"))
    torch.set_num_threads(threads)
    faiss.omp_set_num_threads(threads)
    load_avg = os.getloadavg()[0]
    from actors.item_indexer import ItemIndexerConfig
    from actors.text_encoder import TextEncoder, TextEncoderConfig
    from models.sid.catalog import Catalog, CatalogConfig
    from models.sid.rq_kmeans import RQKMeans, RQKMeansConfig
    from models.sid.rq_vae import RQVAE, RQVAEConfig
    from models.sid.tokenizer import report

    dataset = dataset or "synthetic"
    rng = np.random.default_rng(0)
    items = _items(dataset, quick)
    texts = [e.content_text() for e in items]
    enc = TextEncoder(TextEncoderConfig(cache_size=0))
    enc.encode(texts[:8])                                   # warm-up
    t0 = time.perf_counter()
    emb = enc.encode(texts)
    encode_s = time.perf_counter() - t0
    metrics: dict[str, float] = {"n_items": len(items), "encode_items_per_s": len(items) / encode_s}
    enc_metrics = _encoder_bench(texts, emb, quick, threads)
    torch.set_num_threads(threads)

    # --- quality -------------------------------------------------------------------------
    t0 = time.perf_counter()
    tok = RQKMeans().fit(emb)
    metrics["rqkmeans_fit_s"] = time.perf_counter() - t0
    rep = report(tok, emb)
    metrics.update(rep.as_metrics())
    metrics["codebook_size"] = tok.level_sizes[0]
    metrics["dedup_size"] = tok.dedup_size
    t0 = time.perf_counter()
    plain = RQKMeans(RQKMeansConfig(balanced=False)).fit(emb)
    metrics["plain_rqkmeans_fit_s"] = time.perf_counter() - t0
    plain_rep = report(plain, emb)
    for k, v in plain_rep.as_metrics().items():
        if k != "unique_sid_fraction":
            metrics[f"plain_{k}"] = v
    metrics.update(_agreement(enc_metrics.pop("_int8_emb"), emb[: enc_metrics.pop("_n")], tok))
    metrics.update(enc_metrics)
    vae = RQVAE(RQVAEConfig(epochs=30 if quick else 150)).fit(emb)
    for k, v in report(vae, emb).as_metrics().items():
        metrics[f"rqvae_{k}"] = v

    # --- throughput ----------------------------------------------------------------------
    big = np.concatenate([emb] * max(1, 20_000 // len(emb)))
    metrics["quantize_items_per_s"] = len(big) / _timeit(lambda: tok.encode_candidates(big, 8), 1.0, 20)
    n_assign = min(len(items), 256)

    enc2 = TextEncoder(TextEncoderConfig(cache_size=0, threads=ItemIndexerConfig().encoder_threads))
    enc2.encode(texts[:8])

    def assign():
        cat = Catalog(CatalogConfig(level_sizes=tok.sid_level_sizes, dim=tok.dim))
        e = enc2.encode(texts[-n_assign:])
        cat.upsert([x.item_id for x in items[-n_assign:]], tok.encode_candidates(e, 8), e)
        return cat

    t0 = time.perf_counter()
    assign()
    metrics["assign_items_per_s"] = n_assign / (time.perf_counter() - t0)

    # --- trie ----------------------------------------------------------------------------
    cat = Catalog(CatalogConfig(level_sizes=tok.sid_level_sizes, dim=tok.dim))
    cat.upsert([x.item_id for x in items], tok.encode_candidates(emb, 8), emb)
    sids = cat.sids(cat.live_indices())
    v, n = _trie_bench(sids, tok.sid_level_sizes, rng, 0.5 if quick else 2.0)
    metrics.update(trie_lookups_per_s=v, trie_naive_lookups_per_s=n, trie_speedup=v / n)
    n_big = 100_000 if quick else 1_000_000
    big_sids = np.unique(np.concatenate([rng.integers(0, 256, (n_big, 3)), rng.integers(0, 16, (n_big, 1))], 1),
                         axis=0)
    v, n = _trie_bench(big_sids, (256, 256, 256, 16), rng, 0.5 if quick else 2.0)
    metrics.update(trie_lookups_per_s_1m=v, trie_naive_lookups_per_s_1m=n)

    # --- new-item latency through Kafka ----------------------------------------------------
    metrics.update(_latency(items, emb, tok, quick))
    table = ("| level | codes | utilisation (balanced RQ-KMeans) | utilisation (plain RQ-KMeans) | "
             "utilisation (RQ-VAE) |\n|---|---|---|---|---|\n" +
             "\n".join(f"| {i + 1} | {tok.level_sizes[i]} | {rep.utilization[i]:.3f} | "
                       f"{plain_rep.utilization[i]:.3f} | "
                       f"{metrics[f'rqvae_utilization_l{i + 1}']:.3f} |" for i in range(len(tok.level_sizes))))
    quality = ("| tokenizer | collision rate (before dedup) | recon MSE | recon cosine | max dedup |\n"
               "|---|---|---|---|---|\n" +
               "\n".join(f"| {name} | {metrics[p + 'collision_rate']:.4f} | {metrics[p + 'recon_mse']:.4f} | "
                         f"{metrics[p + 'recon_cosine']:.4f} | {metrics[p + 'max_dedup']:.0f} |"
                         for name, p in (("RQ-KMeans, balanced (default)", ""), ("RQ-KMeans, plain", "plain_"),
                                         ("RQ-VAE", "rqvae_"))))
    encoders = ("| encoder | 1 thread (items/s) | 2 workers x 1 thread (items/s) | items per CPU-s, 1 / 2 workers "
                "|\n|---|---|---|---|\n" +
                "\n".join(f"| {m} | {metrics[f'encode_{m}_items_per_s_1t']:.1f} | "
                          f"{metrics[f'encode_{m}_items_per_s_2t']:.1f} | "
                          f"{metrics[f'encode_{m}_items_per_cpu_s_1t']:.1f} / "
                          f"{metrics[f'encode_{m}_items_per_cpu_s_2t']:.1f} |" for m in ("fp32", "int8")) +
                f"\n| fp32, 2 OpenMP intra-op threads | | {metrics['encode_fp32_items_per_s_2t_intraop']:.1f} | "
                f"/ {metrics['encode_fp32_items_per_cpu_s_2t_intraop']:.1f} |")
    ablations = ("| encoder variant (1 thread) | items per CPU-s | cosine to hf (min) |\n|---|---|---|\n" +
                 "\n".join(f"| {v} | {metrics[f'enc_ablation_{v}_items_per_cpu_s']:.1f} | "
                           f"{metrics[f'enc_ablation_{v}_cosine_min']:.6f} |"
                           for v in ("hf", "hf_eager_attention", "hf_no_grad", "hf_unsorted", "hf_calls_of_24",
                                     "hf_calls_of_4", "hf_bf16_autocast", "packed", "packed_calls_of_24",
                                     "packed_calls_of_4")))
    stages = ("| stage (text items, fp32, 2 workers) | p50 ms | p99 ms |\n|---|---|---|\n" +
              "\n".join(f"| {k} | {metrics[f'new_item_stage_{k}_p50_ms']:.1f} | "
                        f"{metrics[f'new_item_stage_{k}_p99_ms']:.1f} |"
                        for k in ("fetch", "batch", "encode", "insert", "visible")))
    return {"config": {"dataset": dataset, "tokenizer": "rq_kmeans (balanced)", "levels": len(tok.level_sizes),
                       "codebook_size": tok.level_sizes[0], "dedup_size": tok.dedup_size,
                       "encoder": "all-MiniLM-L6-v2 (cpu)" if enc.device == "cpu" else f"MiniLM ({enc.device})",
                       "encoder_max_seq_len": enc.config.max_seq_len,
                       "indexer_batch_wait_ms": ItemIndexerConfig().batch_wait_ms,
                       "indexer_fetch_max_wait_ms": ItemIndexerConfig().fetch_max_wait_ms,
                       "latency_rate_per_s": 100, "latency_items": metrics.pop("_latency_items"),
                       "threads": threads, "encoder_threads": ItemIndexerConfig().encoder_threads,
                       "probe_poll_ms": PROBE_POLL_MS, "load_avg_at_start": round(load_avg, 1)},
            "metrics": metrics, "tables": [quality, table, encoders, ablations, stages]}


def _encoder_bench(texts: list[str], emb: np.ndarray, quick: bool, threads: int):
    """Token lengths; encoder variants on the same texts; the cache; int8 vectors.

    * fp32 vs int8 items/s at 1 and 2 threads: ``_2t`` = two worker threads
      with one intra-op thread each (the indexer's default), ``_2t_intraop`` =
      one caller thread with two OpenMP intra-op threads;
    * ablations at one thread, items per CPU-second and cosine to transformers'
      BertModel with SDPA attention on length-sorted batches of 64 (``hf``):
      eager instead of SDPA attention, ``no_grad`` instead of
      ``inference_mode``, batches in arrival order instead of length-sorted,
      bf16 autocast (on 48 texts: it is slow without AVX512-BF16), calls of
      24 and of 4 texts (latency-run micro-batches), and the same with the
      packed forward of models/text/packed_bert.py (the encoder's default backend);
    * ``encode_tokenize_us_per_item``: the one batched tokenizer call.
    """
    import torch

    from actors.text_encoder import TextEncoder, TextEncoderConfig

    n = min(len(texts), 256 if quick else 400)
    sample = texts[:n]
    out: dict = {}
    fp32 = TextEncoder(TextEncoderConfig(cache_size=0))
    lens = fp32.token_lengths(texts)
    out.update(text_tokens_p50=float(np.percentile(lens, 50)), text_tokens_p99=float(np.percentile(lens, 99)),
               text_tokens_max=float(lens.max()),
               text_truncated_fraction=float(np.mean(lens > fp32.config.max_seq_len)))
    c0 = time.process_time()
    fp32._tok(sample, add_special_tokens=True, truncation=True, max_length=128, return_attention_mask=False,
              return_token_type_ids=False)
    out["encode_tokenize_us_per_item"] = (time.process_time() - c0) / n * 1e6
    int8 = TextEncoder(TextEncoderConfig(cache_size=0, quantize="int8", threads=1))
    fp32_2w = TextEncoder(TextEncoderConfig(cache_size=0, threads=2))                  # 2 workers x 1 thread
    int8_2w = TextEncoder(TextEncoderConfig(cache_size=0, quantize="int8", threads=2))
    runs = (("fp32", "1t", fp32, 1), ("int8", "1t", int8, 1), ("fp32", "2t", fp32_2w, 1),
            ("int8", "2t", int8_2w, 1), ("fp32", "2t_intraop", fp32, 2))
    for name, tag, e, intra in runs:
        torch.set_num_threads(intra)
        e.encode(sample[:16])
        c0, t0 = time.process_time(), time.perf_counter()
        got = e.encode(sample)
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        out[f"encode_{name}_items_per_s_{tag}"] = n / wall
        out[f"encode_{name}_items_per_cpu_s_{tag}"] = n / cpu     # per CPU-second of this process
        if name == "int8" and tag == "1t":
            out["_int8_emb"] = got
    torch.set_num_threads(1)
    out.update(_ablations(fp32, sample))
    cached = TextEncoder(TextEncoderConfig())
    cached.encode(sample)
    t0 = time.perf_counter()
    cached.encode(sample)                                   # a re-send of every text
    out["encode_cached_items_per_s"] = n / (time.perf_counter() - t0)
    out["_n"] = n
    torch.set_num_threads(threads)
    return out


def _ablations(enc, sample: list[str]) -> dict[str, float]:
    """One-thread variants of the encoder's forward on ``sample``: items per CPU-second, cosine to the default."""
    import torch
    from transformers import AutoModel

    from actors.text_encoder import bundled_model_dir

    from models.text.packed_bert import PackedBert

    tok = enc._tok
    model = AutoModel.from_pretrained(bundled_model_dir()).eval()             # SDPA attention (the default)
    eager = AutoModel.from_pretrained(bundled_model_dir(), attn_implementation="eager").eval()
    packed = PackedBert.from_bert(model)

    def forward(texts, m=model, sort=True, grad=torch.inference_mode, autocast=False, bs=64):
        ids = tok(texts, add_special_tokens=True, truncation=True, max_length=128, return_attention_mask=False,
                  return_token_type_ids=False)["input_ids"]
        lengths = np.asarray([len(x) for x in ids])
        order = np.argsort(lengths, kind="stable") if sort else np.arange(len(ids))
        res = np.empty((len(ids), 384), dtype=np.float32)
        with grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            for s in range(0, len(order), bs):
                rows = order[s:s + bs]
                if m is packed:
                    res[rows] = packed.embed([ids[r] for r in rows]).float().numpy()
                    continue
                w = int(lengths[rows].max())
                t = torch.zeros((len(rows), w), dtype=torch.int64)            # [B, T]
                mask = torch.zeros((len(rows), w), dtype=torch.int64)         # [B, T]
                for j, r in enumerate(rows):
                    t[j, :lengths[r]] = torch.as_tensor(ids[r])
                    mask[j, :lengths[r]] = 1
                h = m(input_ids=t, attention_mask=mask, token_type_ids=torch.zeros_like(t)).last_hidden_state
                mm = mask.unsqueeze(-1).to(h.dtype)
                pooled = torch.nn.functional.normalize((h * mm).sum(1) / mm.sum(1), dim=1)   # [B, 384]
                res[rows] = pooled.float().numpy()
        return res

    variants = {"hf": ({}, sample), "hf_eager_attention": ({"m": eager}, sample),
                "hf_no_grad": ({"grad": torch.no_grad}, sample), "hf_unsorted": ({"sort": False}, sample),
                "hf_calls_of_24": ({"bs": 24, "sort": False}, sample),
                "hf_bf16_autocast": ({"autocast": True}, sample[:48]),
                "packed": ({"m": packed}, sample), "packed_calls_of_24": ({"m": packed, "bs": 24, "sort": False}, sample),
                "packed_calls_of_4": ({"m": packed, "bs": 4, "sort": False}, sample),
                "hf_calls_of_4": ({"bs": 4, "sort": False}, sample)}
    out: dict[str, float] = {}
    ref = forward(sample)
    for name, (kw, texts) in variants.items():
        forward(texts[:8], **kw)
        c0 = time.process_time()
        got = forward(texts, **kw)
        out[f"enc_ablation_{name}_items_per_cpu_s"] = len(texts) / (time.process_time() - c0)
        out[f"enc_ablation_{name}_cosine_min"] = float(np.sum(got * ref[: len(texts)], axis=1).min())
    return out


def _agreement(int8_emb: np.ndarray, fp32_emb: np.ndarray, tok) -> dict[str, float]:
    """How far int8 embeddings move from fp32 ones: cosine, and SIDs under the fp32-fitted tokenizer."""
    cos = np.sum(int8_emb * fp32_emb, axis=1)
    a, b = tok.encode(int8_emb), tok.encode(fp32_emb)
    return {"int8_cosine_mean": float(cos.mean()), "int8_cosine_min": float(cos.min()),
            "int8_sid_agreement": float(np.mean((a == b).all(axis=1))),
            "int8_sid_l1_agreement": float(np.mean(a[:, 0] == b[:, 0]))}


PROBE_POLL_MS = 20          # how often the probe asks for catalog deltas (serving's DeltaFeed default)


def _latency(items, emb, tok, quick: bool) -> dict[str, float]:
    """p50/p99 produce -> indexed, for text items (encoded by the indexer) and for items with embeddings.

    The default run (``new_item_*``) also breaks the latency into stages (``new_item_stage_*``) and has a
    probe that follows the indexer's catalog deltas like a serving replica (``new_item_visible_*``).
    ``new_item_intraop_*``: the same run with the encoder on the indexer's thread with 2 OpenMP threads.
    """
    # text items: 500 (5 s of arrivals) — enough for p99, and a CPU that encodes < 100/s builds a backlog
    n_text = min(len(items) // 2, 300 if quick else 500)
    n_emb = min(len(items) // 2, 300 if quick else 1000)
    out = _latency_run(items, emb, tok, n_text, with_embedding=False, prefix="new_item", probe=True)
    out.update(_latency_run(items, emb, tok, n_text, with_embedding=False, prefix="new_item_intraop",
                            encoder_threads=0, intra_op=2))
    out.update(_latency_run(items, emb, tok, n_text, with_embedding=False, prefix="new_item_int8",
                            quantize="int8"))
    out.update(_latency_run(items, emb, tok, n_emb, with_embedding=True, prefix="new_item_emb", probe=True))
    out["_latency_items"] = n_text
    return out


def _pcts(prefix: str, values) -> dict[str, float]:
    a = np.asarray(list(values), dtype=np.float64)
    return {f"{prefix}_p50_ms": float(np.percentile(a, 50)), f"{prefix}_p99_ms": float(np.percentile(a, 99))}


def _latency_run(items, emb, tok, n_new: int, with_embedding: bool, prefix: str, quantize: str = "none",
                 encoder_threads: int | None = None, intra_op: int = 1, probe: bool = False,
                 backend: str = "packed", **indexer_kw) -> dict[str, float]:
    import uuid

    import torch

    from actors.item_indexer import STAGES, ItemIndexer, ItemIndexerConfig
    from actors.text_encoder import TextEncoder, TextEncoderConfig
    from infra.broker import EmbeddedBroker
    from ingest.contract import DEAD_LETTERS, ITEM_EVENTS, replace
    from ingest.kafka_client import KafkaConfig
    from ingest.producer import EventProducer, ProducerConfig
    from ingest.topics import TopicsConfig, ensure_topics
    from models.sid.catalog import Catalog

    old, new = items[:-n_new], items[-n_new:]
    e_new = emb[len(old):]
    external = os.environ.get("KAFKA_BOOTSTRAP")
    broker = None if external else EmbeddedBroker().__enter__()
    cfg = ItemIndexerConfig(name="bench", poll_timeout_ms=5, **indexer_kw)
    threads = cfg.encoder_threads if encoder_threads is None else encoder_threads
    try:
        kafka = KafkaConfig(bootstrap=external or broker.bootstrap, namespace=f"bench-{uuid.uuid4().hex[:8]}.")
        ensure_topics(kafka, TopicsConfig(partitions={ITEM_EVENTS: 1, DEAD_LETTERS: 1}))
        # a fresh encoder: its content-hash cache must not already hold the new items' texts
        idx = ItemIndexer(kafka, tok, cfg, encoder=TextEncoder(TextEncoderConfig(quantize=quantize, threads=threads,
                                                                         backend=backend)))
        # the existing catalog, loaded directly (its embeddings are known)
        e_old = emb[: len(old)]
        idx.catalog.upsert([x.item_id for x in old], tok.encode_candidates(e_old, 8), e_old)
        idx.encoder.encode(["warm up"])
        indexed_at: dict[str, float] = {}            # item -> wall ms when upsert returned (in trie + faiss)
        upsert = idx.catalog.upsert

        def timed_upsert(*a, **kw):
            res = upsert(*a, **kw)
            now = time.time() * 1000.0
            indexed_at.update((i, now) for i in res.added)
            return res

        idx.catalog.upsert = timed_upsert
        seen_at: dict[str, float] = {}                # item -> wall ms when the probe's copy had it
        stop = threading.Event()

        def follow():                                 # a serving replica's loop: ask for deltas, apply them
            copy = Catalog.from_bytes(idx.snapshot())
            while not stop.is_set():
                d = idx.delta_since(copy.version)
                if len(d):
                    copy.apply(d)
                    now = time.time() * 1000.0
                    for i in d.item_ids:
                        seen_at.setdefault(i, now)
                stop.wait(PROBE_POLL_MS / 1000.0)

        def loop():
            torch.set_num_threads(intra_op)           # per thread (OpenMP): the indexer thread's own setting
            idx.run(stop, 0.0)

        th = threading.Thread(target=loop, daemon=True)
        th.start()
        pr = threading.Thread(target=follow, daemon=True) if probe else None
        if pr is not None:
            pr.start()
        produced: dict[str, int] = {}
        with EventProducer(kafka, ProducerConfig(linger_ms=0)) as prod:
            t_start = time.perf_counter()
            for i, ev in enumerate(new):
                target = t_start + i / 100.0                  # steady 100 new items/s
                now = time.perf_counter()
                if target > now:
                    time.sleep(target - now)
                extra = {"embedding": e_new[i].tolist()} if with_embedding else {}
                ts = int(time.time() * 1000)
                produced[ev.item_id] = ts
                prod.send(replace(ev, ts=ts, **extra))
            prod.flush()
        deadline = time.monotonic() + 120
        while (len(idx.latencies_ms) < n_new or (probe and len(seen_at) < n_new)) and time.monotonic() < deadline:
            time.sleep(0.05)
        stop.set()
        th.join(timeout=30)
        if pr is not None:
            pr.join(timeout=5)
        lat = np.asarray(list(idx.latencies_ms)[-n_new:])
        in_index = sum(idx.catalog.in_index(x.item_id) for x in new)
        out = {f"{prefix}_p50_ms": float(np.percentile(lat, 50)), f"{prefix}_p99_ms": float(np.percentile(lat, 99)),
               f"{prefix}_max_ms": float(lat.max()), f"{prefix}_indexed_fraction": in_index / n_new}
        if probe:
            for k in STAGES:
                out.update(_pcts(f"{prefix}_stage_{k}", list(idx.stage_ms[k])[-n_new:]))
            vis = [seen_at[i] - produced[i] for i in produced if i in seen_at]
            out.update(_pcts(f"{prefix}_stage_visible", [seen_at[i] - indexed_at[i] for i in produced
                                                          if i in seen_at and i in indexed_at]))
            out.update(_pcts(f"{prefix}_visible", vis))
            out[f"{prefix}_visible_fraction"] = len(vis) / n_new
        idx.close(checkpoint=False)
    finally:
        if broker is not None:
            broker.__exit__(None, None, None)
    return out
