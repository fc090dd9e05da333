"""Demo part: plain vs MTP vs speculative decoding on the demo's trained generator.

Takes the generator of the ``generator`` part (``ctx.state["generator"]`` and its
item table), or trains a tiny one on the synthetic world when that part did not
run. Trains MTP heads as a second stage (the generator stays frozen), then
decodes the same users' sessions with every mode of :mod:`models.decoding.generate`
and prints latency, target forwards, acceptance and whether each lossless
mode's output is identical to its plain twin. Leaves ``ctx.state["mtp_heads"]``
for the serving part (decode modes are per-request settings there).
"""

from __future__ import annotations

import os
import time

import numpy as np

TITLE = "Fast decoding: multi-token prediction and speculative decoding vs plain KV-cached decoding"


def _model_and_data(ctx):
    from actors.train_job import interactions_from_records, fit_tokenizer, item_embeddings
    from models.generator.model import GeneratorConfig
    from models.generator.training import TrainConfig, fit_generator

    ds = ctx.world.dataset()
    data = interactions_from_records("synthetic", ds.user_events, ds.item_events)
    model, sids = ctx.state.get("generator"), ctx.state.get("generator_item_sids")
    if model is not None and sids is not None and \
            list(ctx.state.get("generator_item_ids", [])) == list(data.split.item_ids):
        ctx.say("using the generator trained by the previous part")
        return model.eval(), np.asarray(sids), data
    ctx.say("no generator from an earlier part: training a tiny one (collaborative SIDs, ~20 s)")
    tok, sids = fit_tokenizer(item_embeddings(data, "collab", 32, 0), "rq_kmeans", 3, 0, 0)
    gcfg = GeneratorConfig(level_sizes=tuple(int(x) for x in tok.sid_level_sizes), d_model=64, heads=2,
                           enc_layers=1, dec_layers=2, max_history=30, session_len=5)
    tv = data.split.train_valid()
    model, _ = fit_generator(tv.items, sids, gcfg, TrainConfig(epochs=3, batch_size=128, max_seconds=20,
                                                               val_metric="loss", progress=False),
                             types=tv.types, ts=tv.ts)
    return model.eval(), sids, data


def run(ctx) -> None:
    import torch

    from models.decoding.constraint import SidConstraint
    from models.decoding.generate import generate
    from models.decoding.settings import DecodeSettings
    from models.evaluation.generator_ranker import build_trie
    from models.generator.features import history_batch
    from models.generator.mtp import MTPConfig, MTPHeads, fit_mtp

    threads = torch.get_num_threads()
    if (os.cpu_count() or 1) <= 2:
        torch.set_num_threads(1)      # small tensors on 2 shared cores: one thread is faster
    try:
        model, sids, data = _model_and_data(ctx)
        constraint = SidConstraint.of(build_trie(sids, model.cfg.level_sizes))
        K = 5 if ctx.quick else 10

        # --- MTP heads, second stage: distil the frozen generator on its own greedy sessions
        tr = data.split.train()
        rng = np.random.default_rng(0)
        users = [u for u in range(len(tr.items)) if len(tr.items[u]) >= 2]
        users = rng.choice(users, min(len(users), 150 if ctx.quick else 600), replace=False)
        hist_items = [tr.items[u] for u in users]
        hb = history_batch(hist_items, sids, model.cfg.max_history, model.cfg.n_time_buckets)
        t0 = time.time()
        sessions = generate(model, hb, constraint, DecodeSettings("greedy", session_len=K), seen=hist_items).sids
        heads = MTPHeads(MTPConfig(model.cfg.level_sizes, model.cfg.d_model, horizon=5,
                                   train_epochs=3 if ctx.quick else 10, train_batch_size=64)).init_from_generator(model)
        losses = fit_mtp(model, heads, hb, sessions)
        ctx.say(f"MTP heads trained on {len(users)} self-generated sessions in {time.time() - t0:.1f}s "
                f"(distillation loss {losses[0]:.3f} -> {losses[-1]:.3f}); the generator is unchanged")

        # --- the same requests, every mode, batch 1
        test = data.split.test()
        n = min(len(test), 8 if ctx.quick else 24)
        cases = test.subset(np.arange(n))
        modes = {
            "greedy": DecodeSettings("greedy", session_len=K),
            "mtp": DecodeSettings("mtp", session_len=K),
            "spec_greedy": DecodeSettings("spec_greedy", session_len=K),
            "beam": DecodeSettings("beam", session_len=K, beam_width=4),
            "spec_beam": DecodeSettings("spec_beam", session_len=K, beam_width=4, draft_len=3),
            "spec_beam_relaxed": DecodeSettings("spec_beam_relaxed", session_len=K, beam_width=4, draft_len=3),
        }
        twin = {"greedy": "greedy", "mtp": "greedy", "spec_greedy": "greedy", "beam": "beam",
                "spec_beam": "beam", "spec_beam_relaxed": "beam"}
        lat = {m: [] for m in modes}
        fwd = {m: [] for m in modes}
        acc = {m: [0, 0] for m in modes}
        out = {m: [] for m in modes}
        with torch.no_grad():
            for i in range(n):
                h = cases.histories.subset([i])
                hb1 = history_batch(h.items, sids, model.cfg.max_history, model.cfg.n_time_buckets,
                                    types=h.types, ts=h.ts)
                memory = model.encode(hb1)
                for m, s in modes.items():
                    if i == 0:
                        generate(model, memory, constraint, s, seen=h.items, mtp_heads=heads)   # warm-up
                    t0 = time.perf_counter()
                    res = generate(model, memory, constraint, s, seen=h.items, mtp_heads=heads)
                    lat[m].append(time.perf_counter() - t0)
                    fwd[m].append(res.stats["target_forwards"])
                    acc[m][0] += res.stats.get("accepted", 0)
                    acc[m][1] += res.stats.get("drafted", 0)
                    out[m].append(res.items[0].tolist())
        ctx.say(f"\n{n} users, sessions of {K} items, batch 1, CPU threads={torch.get_num_threads()}:")
        ctx.say(f"  {'mode':<18}{'lossless':>9}{'p50 ms':>9}{'speed-up':>10}{'fwd/session':>13}"
                f"{'accept':>8}{'identical':>11}")
        for m in modes:
            p50 = float(np.median(lat[m])) * 1e3
            base = float(np.median(lat[twin[m]])) * 1e3
            ident = np.mean([a == b for a, b in zip(out[m], out[twin[m]])])
            ar = f"{acc[m][0] / acc[m][1]:.2f}" if acc[m][1] else "-"
            ctx.say(f"  {m:<18}{'yes' if modes[m].lossless else 'LOSSY':>9}{p50:>9.1f}{base / p50:>9.2f}x"
                    f"{np.mean(fwd[m]):>13.1f}{ar:>8}{ident:>11.0%}")
        ok = all(out[m] == out[twin[m]] for m in modes if modes[m].lossless)
        ctx.say(f"lossless modes identical to plain decoding on every request: {'YES' if ok else 'NO'}")
        ctx.say(f"example session ({twin['spec_beam']} vs spec_beam), user 0: {out['beam'][0]} / {out['spec_beam'][0]}")
        ctx.state["mtp_heads"] = heads
    finally:
        torch.set_num_threads(threads)
