"""Benchmark suite ``decode``: plain vs MTP vs speculative session decoding on one trained generator.

``genrec bench decode [--quick] [--dataset ml100k|synthetic]``

One run, one trained model, the same requests for every mode:

1. Train a small generator on the leave-one-out *training* part of the data
   (collaborative item embeddings → RQ-KMeans SIDs → :func:`models.generator.training.fit_generator`),
   then MTP heads as a second stage on its own greedy sessions (:func:`models.generator.mtp.fit_mtp`).
2. Decode sessions of 10 items for test users at batch 1 and batch 16 with
   every mode of :mod:`models.decoding.generate`: ``greedy`` (the KV-cached
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

Constraint micro-benchmark (:func:`constraint_step`, also alone:
``python tests/bench/bench_decode.py --constraint-only [--quick] [--json FILE]``):
one decoding step of the catalog constraint — ``mask`` + ``advance`` for 4
requests × beam 4 with ~100 excluded items per row — on synthetic catalogs of
10k, 100k, 1M and 10M items, for the engine
(:class:`models.decoding.constraint.SidConstraint`) and for its brute-force
reference (:mod:`models.decoding.constraint_reference`, where it finishes in
reasonable time): ``constraint_step_us_{10k,100k,1m,10m}``,
``constraint_ref_step_us_*``, ``constraint_bytes_per_item`` and
``constraint_step_ratio_1m_10k``.
"""

from __future__ import annotations

import os
import sys
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
    from models.generator.model import GeneratorConfig
    from models.generator.training import TrainConfig, fit_generator

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
    from models.generator.features import history_batch

    cases = data.split.test()
    h = cases.histories.subset(users_idx)
    hb = history_batch(h.items, item_sids, model.cfg.max_history, model.cfg.n_time_buckets,
                       types=h.types, ts=h.ts).to(device)
    seen = [np.asarray(s, dtype=np.int64) for s in h.items]
    return hb, seen, cases.targets[users_idx]


def _train_mtp(model, data, item_sids, con, quick: bool, device: str):
    import torch

    from models.decoding.generate import generate
    from models.decoding.settings import DecodeSettings
    from models.generator.features import history_batch
    from models.generator.mtp import MTPConfig, MTPHeads, fit_mtp

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
            res = generate(model, sub, con, DecodeSettings("greedy", session_len=SESSION),
                           seen=[np.asarray(s) for s in items[i:i + 128]])
            sessions.append(res.sids.cpu())
    sessions = torch.cat(sessions)
    heads = MTPHeads(MTPConfig(model.cfg.level_sizes, model.cfg.d_model, horizon=6,
                                 train_epochs=3 if quick else 12, train_batch_size=64, train_lr=2e-3)).init_from_generator(model)
    heads.to(device)
    t0 = time.time()
    losses = fit_mtp(model, heads, hist.to(device), sessions.to(device))
    return heads.eval(), losses, len(items), time.time() - t0


CATALOG_SIZES = {"10k": 10_000, "100k": 100_000, "1m": 1_000_000, "10m": 10_000_000}
SYNTH_LEVELS = (256, 256, 256, 8)     # 3 RQ levels + a de-duplication level
STEP_ROWS, STEP_BANNED = 4 * 4, 100    # 4 requests x beam 4, excluded items per row


def _synthetic_tables(n: int, rng, device: str = "cpu"):
    """A catalog of ``n`` random distinct SIDs as :class:`models.sid.catalog_keys.CatalogKeys` on ``device``
    (no trie walk), and the SIDs [N, D]."""
    from models.sid.catalog_keys import CatalogKeys, radix_multipliers

    mult = radix_multipliers(SYNTH_LEVELS)
    space = int(mult[0]) * SYNTH_LEVELS[0]
    keys = np.unique(rng.integers(0, space, int(n * 1.1) + 16))
    keys = rng.permutation(keys)[:n]
    sids = (keys[:, None] // mult[None, :]) % np.asarray(SYNTH_LEVELS)[None, :]          # [N, D]
    return CatalogKeys.build(SYNTH_LEVELS, sids, np.arange(n), device=device), sids


def _time_steps(con, seen, rng, reps: int) -> float:
    """Median µs of one constraint step (mask + advance), averaged over the D steps of one item, on the
    constraint's device (CUDA: synchronised before the clock is read)."""
    import torch

    D = len(SYNTH_LEVELS)
    dev = torch.device(getattr(con, "device", "cpu"))
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    times = []
    for r in range(reps + 1):
        state = con.init(STEP_ROWS, seen)
        noise = torch.as_tensor(rng.random((D, STEP_ROWS, max(SYNTH_LEVELS)))).to(dev)
        sync()
        t0 = time.perf_counter()
        for l in range(D):
            m = con.mask(state)
            code = torch.where(m, noise[l] + 1, noise[l]).argmax(1)
            state, _ = con.advance(state, code)
        sync()
        if r:                                   # the first item is a warm-up
            times.append((time.perf_counter() - t0) / D * 1e6)
    return float(np.median(times))


def constraint_step(quick: bool = False) -> tuple[dict, str]:
    """Per-step cost of the catalog constraint vs catalog size, engine and reference (see module doc)."""
    import torch

    from models.decoding.constraint import SidConstraint
    from models.decoding.constraint_reference import ReferenceConstraint

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    metrics: dict = {}
    rows = ["| catalog items | engine µs / step | reference µs / step | engine tables MB |", "|---|---|---|---|"]
    try:
        for name, n in CATALOG_SIZES.items():
            tables, sids = _synthetic_tables(n, rng)
            seen = [rng.choice(n, STEP_BANNED, replace=False) for _ in range(STEP_ROWS)]
            fast = _time_steps(SidConstraint(tables), seen, rng, 20 if quick else 100)
            metrics[f"constraint_step_us_{name}"] = round(fast, 1)
            ref = float("nan")
            if n <= 1_000_000:              # the brute-force twin: O(rows x N) per step
                reference = ReferenceConstraint(SYNTH_LEVELS, sids, np.arange(n))
                ref = _time_steps(reference, seen, rng, 1 if n >= 1_000_000 else (3 if quick else 10))
                metrics[f"constraint_ref_step_us_{name}"] = round(ref, 1)
            metrics["constraint_bytes_per_item"] = round(tables.nbytes / n, 1)
            rows.append(f"| {n:,} | {fast:.0f} | {'-' if ref != ref else f'{ref:.0f}'} | {tables.nbytes / 2**20:.0f} |")
            del tables, sids
    finally:
        torch.set_num_threads(threads)
    metrics["constraint_step_ratio_1m_10k"] = round(metrics["constraint_step_us_1m"] /
                                                     metrics["constraint_step_us_10k"], 2)
    return metrics, "\n".join(rows)


def _pct(xs, q):
    return float(np.percentile(np.asarray(xs) * 1e3, q))


def run(quick: bool = False, dataset: str | None = None) -> dict:
    import torch

    from models.decoding.constraint import SidConstraint
    from models.decoding.generate import generate
    from models.decoding.settings import DecodeSettings
    from models.evaluation.generator_ranker import build_trie
    from models.evaluation.metrics import hit_rate, ndcg, target_ranks

    dataset = dataset or ("ml100k" if (ML100K / "u.data").is_file() else "synthetic")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    threads = torch.get_num_threads()
    if device == "cpu":
        torch.set_num_threads(1)
    try:
        step_metrics, step_table = constraint_step(quick)
        data, item_sids, model, report, train_s = _train(dataset, quick, device)
        con = SidConstraint.of(build_trie(item_sids, model.cfg.level_sizes), device)
        heads, mtp_losses, mtp_n, mtp_s = _train_mtp(model, data, item_sids, con, quick, device)

        def sync():
            if device == "cuda":
                torch.cuda.synchronize()

        modes = {
            "greedy": DecodeSettings("greedy", session_len=SESSION),
            "mtp": DecodeSettings("mtp", session_len=SESSION, mtp_tokens=3),
            "spec_greedy": DecodeSettings("spec_greedy", session_len=SESSION, draft_len=4, draft_max=8),
            "beam": DecodeSettings("beam", session_len=SESSION, beam_width=BEAM),
            "spec_beam": DecodeSettings("spec_beam", session_len=SESSION, beam_width=BEAM, draft_len=3,
                                        draft_max=6, draft_width=2 * BEAM),
            "spec_beam_relaxed": DecodeSettings("spec_beam_relaxed", session_len=SESSION, beam_width=BEAM,
                                                draft_len=3, draft_max=6, relax_factor=2.0),
        }
        twin = {"greedy": "greedy", "mtp": "greedy", "spec_greedy": "greedy",
                "beam": "beam", "spec_beam": "beam", "spec_beam_relaxed": "beam"}
        n_cases = len(data.split.test())
        rng = np.random.default_rng(7)
        n_req = 24 if quick else 64
        users = rng.choice(n_cases, min(n_cases, n_req), replace=False)
        metrics: dict = {"device": torch.cuda.get_device_name(0) if device == "cuda" else "cpu", **step_metrics}
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
                            generate(model, memory, con, modes[m], seen=seen, mtp_heads=heads)
                        sync()
                        t0 = time.perf_counter()
                        res = generate(model, memory, con, modes[m], seen=seen, mtp_heads=heads)
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
                    ranked[m].append(generate(model, memory, con, modes[m], seen=seen, mtp_heads=heads).items.cpu())
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
                  "spec_beam_draft": f"MTP chain beam of width {2 * BEAM}, adaptive 1..6 (start 3)", "mtp_tokens": 3}
        config.update(constraint_levels=list(SYNTH_LEVELS), constraint_rows=STEP_ROWS, constraint_banned=STEP_BANNED)
        return {"config": config, "metrics": metrics, "tables": ["\n".join(table), step_table]}
    finally:
        torch.set_num_threads(threads)


def main(argv: list[str]) -> int:
    """Stand-alone entry: the whole suite, or only the constraint micro-benchmark (``--constraint-only``)."""
    import argparse

    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from infra.benchmarks import emit, result_of

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="fewer requests, steps and repetitions")
    p.add_argument("--constraint-only", action="store_true", help="only the constraint micro-benchmark")
    p.add_argument("--json", metavar="FILE", help="write {suite, machine, config, metrics, tables, ...} here")
    a = p.parse_args(argv)
    t0 = time.time()
    if a.constraint_only:
        metrics, table = constraint_step(a.quick)
        out = {"config": {"dataset": "constraint", "constraint_levels": list(SYNTH_LEVELS),   # its own section
                          "constraint_rows": STEP_ROWS, "constraint_banned": STEP_BANNED},
               "metrics": metrics, "tables": [table]}
    else:
        out = run(quick=a.quick)
    emit(result_of(SUITE, out, t0, a.quick), a.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
