"""Benchmark suite ``decode``: plain vs MTP vs speculative session decoding on one trained generator.

``genrec bench decode [--quick] [--dataset ml100k|synthetic]``

One run, one trained model, the same requests for every mode:

1. Train a small generator on the leave-one-out *training* part of the data
   (collaborative item embeddings → RQ-KMeans SIDs → :func:`models.training.fit_generator`),
   then MTP heads as a second stage on its own greedy sessions (:func:`models.mtp.fit_mtp`).
2. Decode sessions of 10 items for test users at batch 1 and batch 16 with
   every mode of :mod:`models.decode_modes`: ``greedy`` (the KV-cached
   baseline), ``mtp`` (parallel, lossy), ``spec_greedy``, ``beam`` (plain
   KV-cached beam, width 4), ``spec_beam`` (strict, lossless),
   ``spec_beam_relaxed`` (lossy).
3. Report latency p50/p99 per request batch and the ratio to the matching
   plain mode (greedy for greedy-type modes, beam for beam-type modes), target
   forwards per session, acceptance rate, the fraction of sessions identical
   to the plain twin (lossless modes: must be 1.0), and NDCG@10 / HR@10 of the
   10-item session as a ranked list against the held-out test item.

Metric names: ``baseline_p50_ms`` (plain greedy, batch 1), ``mtp_p50_ms``,
``spec_greedy_p50_ms``, ``spec_beam_p50_ms``, ``beam_p50_ms``,
``spec_greedy_speedup`` (greedy / spec_greedy, p50, batch 1),
``spec_beam_speedup`` (plain beam / spec_beam, p50, batch 1), ``*_b16`` twins,
``acceptance_rate`` (spec_greedy, batch 1), ``lossless_identical_fraction``
(minimum over the lossless modes and both batch sizes), ``ndcg10_*`` and
``device``. CPU runs use one intra-op thread (stable timings on shared cores).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np

SUITE = "decode"
DATASETS = ("ml100k", "synthetic")
ML100K = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "ml-100k"

SESSION = 10
BEAM = 4


def _train(dataset: str, quick: bool, device: str):
    import torch

    from actors.train_job import TrainJobConfig, fit_tokenizer, item_embeddings, load_interactions
    from models.generator import GeneratorConfig
    from models.training import TrainConfig, fit_generator

    data = load_interactions(TrainJobConfig(data="ml100k" if dataset == "ml100k" else "synthetic-small"))
    emb = item_embeddings(data, "collab", 64, 0)
    tok, item_sids = fit_tokenizer(emb, "rq_kmeans", 3, 0, 0)
    gcfg = GeneratorConfig(level_sizes=tuple(int(x) for x in tok.sid_level_sizes), d_model=64, heads=2,
                           enc_layers=1, dec_layers=2, session_len=SESSION, max_history=20, dropout=0.1)
    # small on purpose: the suite measures decoding, and training must fit a shared 2-core machine
    tcfg = TrainConfig(epochs=1 if quick else 30, batch_size=64, lr=3e-3, patience=3,
                       max_steps=30 if quick else 700, max_seconds=60 if quick else 900,
                       val_metric="loss", progress=False, device=device, seed=0)
    tv = data.split.train_valid()
    t0 = time.time()
    model, report = fit_generator(tv.items, item_sids, gcfg, tcfg, types=tv.types, ts=tv.ts, validate=True)
    model.to(device).eval()
    torch.manual_seed(0)
    return data, item_sids, model, report, time.time() - t0


def _histories(data, item_sids, model, users_idx, device):
    from models.history_features import history_batch

    cases = data.split.test()
    h = cases.histories.subset(users_idx)
    hb = history_batch(h.items, item_sids, model.cfg.max_history, model.cfg.n_time_buckets,
                       types=h.types, ts=h.ts).to(device)
    seen = [np.asarray(s, dtype=np.int64) for s in h.items]
    return hb, seen, cases.targets[users_idx]


def _train_mtp(model, data, item_sids, trie, quick: bool, device: str):
    import torch

    from models.decode_modes import DecodeSettings, generate
    from models.history_features import history_batch
    from models.mtp import MTPConfig, MTPHeads, MTPTrainConfig, fit_mtp

    tr = data.split.train()
    rng = np.random.default_rng(1)
    users = [u for u in range(len(tr.items)) if len(tr.items[u]) >= 3]
    users = rng.choice(users, min(len(users), 300 if quick else 943), replace=False)
    # random prefixes of training sequences: the situations the heads will draft in
    items, types, ts = [], [], []
    for u in users:
        n = len(tr.items[u])
        for cut in rng.integers(2, n + 1, size=1 if quick else 3):
            items.append(tr.items[u][:cut]); types.append(tr.types[u][:cut]); ts.append(tr.ts[u][:cut])
    hist = history_batch(items, item_sids, model.cfg.max_history, model.cfg.n_time_buckets, types=types, ts=ts)
    sessions = []
    with torch.no_grad():
        for i in range(0, len(items), 128):
            sub = type(hist)(*(t[i:i + 128].to(device) for t in hist))
            res = generate(model, sub, trie, DecodeSettings("greedy", session_len=SESSION),
                           seen=[np.asarray(s) for s in items[i:i + 128]])
            sessions.append(res.sids.cpu())
    sessions = torch.cat(sessions)
    heads = MTPHeads(MTPConfig(model.cfg.level_sizes, model.cfg.d_model, horizon=6)).init_from_generator(model)
    heads.to(device)
    t0 = time.time()
    losses = fit_mtp(model, heads, hist.to(device), sessions.to(device),
                     MTPTrainConfig(epochs=3 if quick else 12, batch_size=64, lr=2e-3))
    return heads.eval(), losses, len(items), time.time() - t0


def _pct(xs, q):
    return float(np.percentile(np.asarray(xs) * 1e3, q))


def run(quick: bool = False, dataset: str | None = None) -> dict:
    import torch

    from models.decode_modes import DecodeSettings, constraint_for, generate
    from models.generator_ranker import build_trie
    from models.metrics import hit_rate, ndcg, target_ranks

    dataset = dataset or ("ml100k" if (ML100K / "u.data").is_file() else "synthetic")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    threads = torch.get_num_threads()
    if device == "cpu":
        torch.set_num_threads(1)
    try:
        data, item_sids, model, report, train_s = _train(dataset, quick, device)
        trie = build_trie(item_sids, model.cfg.level_sizes).to(device)
        constraint_for(trie, device)
        heads, mtp_losses, mtp_n, mtp_s = _train_mtp(model, data, item_sids, trie, quick, device)

        def sync():
            if device == "cuda":
                torch.cuda.synchronize()

        modes = {
            "greedy": DecodeSettings("greedy", session_len=SESSION),
            "mtp": DecodeSettings("mtp", session_len=SESSION, mtp_tokens=3),
            "spec_greedy": DecodeSettings("spec_greedy", session_len=SESSION, draft_len=4, draft_max=8),
            "beam": DecodeSettings("beam", session_len=SESSION, beam_width=BEAM),
            "spec_beam": DecodeSettings("spec_beam", session_len=SESSION, beam_width=BEAM, draft_len=3,
                                        draft_max=6),
            "spec_beam_relaxed": DecodeSettings("spec_beam_relaxed", session_len=SESSION, beam_width=BEAM,
                                                draft_len=3, draft_max=6, relax_factor=2.0),
        }
        twin = {"greedy": "greedy", "mtp": "greedy", "spec_greedy": "greedy",
                "beam": "beam", "spec_beam": "beam", "spec_beam_relaxed": "beam"}
        n_cases = len(data.split.test())
        rng = np.random.default_rng(7)
        n_req = 24 if quick else 64
        users = rng.choice(n_cases, min(n_cases, n_req), replace=False)
        metrics: dict = {"device": torch.cuda.get_device_name(0) if device == "cuda" else "cpu"}
        rows = []
        out_codes: dict = {}
        identical_min = 1.0
        for bs in (1, 16):
            lat = {m: [] for m in modes}
            fwd = {m: [] for m in modes}
            acc = {m: [0, 0] for m in modes}
            codes = {m: [] for m in modes}
            batches = [users[i:i + bs] for i in range(0, len(users), bs)]
            batches = [b for b in batches if len(b) == bs]
            with torch.no_grad():
                for bi, b in enumerate(batches):
                    hb, seen, _ = _histories(data, item_sids, model, b, device)
                    memory = model.encode(hb)
                    order = list(modes) if bi % 2 == 0 else list(modes)[::-1]   # alternate to spread drift
                    for m in order:
                        if bi == 0:   # warm-up (not timed)
                            generate(model, memory, trie, modes[m], seen=seen, mtp_heads=heads)
                        sync()
                        t0 = time.perf_counter()
                        res = generate(model, memory, trie, modes[m], seen=seen, mtp_heads=heads)
                        sync()
                        lat[m].append(time.perf_counter() - t0)
                        fwd[m].append(res.stats["target_forwards"])
                        if "drafted" in res.stats:
                            acc[m][0] += res.stats["accepted"]
                            acc[m][1] += res.stats["drafted"]
                        codes[m].append(res.sids.cpu())
            codes = {m: torch.cat(v) for m, v in codes.items()}
            out_codes[bs] = codes
            sfx = "" if bs == 1 else "_b16"
            for m in modes:
                p50, p99 = _pct(lat[m], 50), _pct(lat[m], 99)
                base50 = _pct(lat[twin[m]], 50)
                ident = float((codes[m] == codes[twin[m]]).flatten(1).all(1).float().mean())
                ar = acc[m][0] / acc[m][1] if acc[m][1] else float("nan")
                if modes[m].lossless and m != twin[m]:
                    identical_min = min(identical_min, ident)
                rows.append((bs, m, p50, p99, base50 / p50, float(np.mean(fwd[m])), ar,
                             ident, modes[m].lossless))
                key = "baseline" if m == "greedy" else m
                metrics[f"{key}_p50_ms{sfx}"] = round(p50, 3)
                metrics[f"{key}_p99_ms{sfx}"] = round(p99, 3)
                metrics[f"{key}_forwards{sfx}"] = round(float(np.mean(fwd[m])), 2)
            metrics[f"spec_greedy_speedup{sfx}"] = round(metrics[f"baseline_p50_ms{sfx}"] /
                                                         metrics[f"spec_greedy_p50_ms{sfx}"], 3)
            metrics[f"spec_beam_speedup{sfx}"] = round(metrics[f"beam_p50_ms{sfx}"] / metrics[f"spec_beam_p50_ms{sfx}"], 3)
            metrics[f"mtp_speedup{sfx}"] = round(metrics[f"baseline_p50_ms{sfx}"] / metrics[f"mtp_p50_ms{sfx}"], 3)
            metrics[f"spec_beam_relaxed_speedup{sfx}"] = round(metrics[f"beam_p50_ms{sfx}"] /
                                                               metrics[f"spec_beam_relaxed_p50_ms{sfx}"], 3)
            if bs == 1:
                metrics["acceptance_rate"] = round(acc["spec_greedy"][0] / max(acc["spec_greedy"][1], 1), 4)
                metrics["spec_beam_acceptance_rate"] = round(acc["spec_beam"][0] / max(acc["spec_beam"][1], 1), 4)
        metrics["lossless_identical_fraction"] = identical_min

        # ---- quality of every mode: NDCG@10 of the 10-item session against the test item --------
        n_eval = 200 if quick else n_cases
        eval_users = np.arange(n_cases)[:n_eval]
        qual = {}
        with torch.no_grad():
            ranked = {m: [] for m in modes}
            for i in range(0, len(eval_users), 64):
                b = eval_users[i:i + 64]
                hb, seen, _ = _histories(data, item_sids, model, b, device)
                memory = model.encode(hb)
                for m in modes:
                    ranked[m].append(generate(model, memory, trie, modes[m], seen=seen, mtp_heads=heads).items.cpu())
            targets = data.split.test().targets[eval_users]
            for m in modes:
                r = target_ranks(torch.cat(ranked[m]), targets)
                qual[m] = (ndcg(r, 10), hit_rate(r, 10))
                key = "baseline" if m == "greedy" else m
                metrics[f"ndcg10_{key}"] = round(qual[m][0], 4)
        metrics["eval_users"] = int(len(eval_users))

        table = ["| batch | mode | lossless | p50 ms | p99 ms | speed-up vs plain twin | target forwards / call "
                 "| acceptance | identical to plain | NDCG@10 |",
                 "|---|---|---|---|---|---|---|---|---|---|"]
        for bs, m, p50, p99, ratio, f, ar, ident, lossless in rows:
            table.append(f"| {bs} | {m} | {'yes' if lossless else 'no (lossy)'} | {p50:.1f} | {p99:.1f} | "
                         f"{ratio:.2f}× (vs {twin[m]}) | {f:.1f} | {'-' if ar != ar else f'{ar:.2f}'} | "
                         f"{ident:.3f} | {qual[m][0]:.4f} |")
        config = {"dataset": dataset, "device": device, "threads": 1 if device == "cpu" else threads,
                  "session_items": SESSION, "beam_width": BEAM, "requests_timed": int(len(users)),
                  "level_sizes": list(model.cfg.level_sizes), "d_model": model.cfg.d_model,
                  "dec_layers": model.cfg.dec_layers, "train_s": round(train_s, 1),
                  "train_epochs": report.epochs_run, "mtp_train_sessions": mtp_n, "mtp_train_s": round(mtp_s, 1),
                  "mtp_loss_first_last": [round(mtp_losses[0], 4), round(mtp_losses[-1], 4)],
                  "spec_greedy_draft": "MTP chain, adaptive 1..8 (start 4)",
                  "spec_beam_draft": "MTP chain beam, adaptive 1..6 (start 3)", "mtp_tokens": 3}
        return {"config": config, "metrics": metrics, "tables": ["\n".join(table)]}
    finally:
        torch.set_num_threads(threads)
