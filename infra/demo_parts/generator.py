"""Demo part: train a small generator on the synthetic world, evaluate it, show generated sessions.

Uses the semantic IDs of the ``semantic_ids`` part when it ran (``ctx.state["catalog"]``
and ``ctx.state["tokenizer"]``), so that the model speaks the same SIDs as the
live catalog; otherwise fits its own tokenizer. Leaves for later parts:

* ``ctx.state["generator"]`` — the trained :class:`models.generator.model.GenerativeRecommender`;
* ``ctx.state["generator_path"]`` — its model file (config, weights, SIDs, tokenizer, metrics);
* ``ctx.state["generator_item_ids"]`` / ``["generator_item_sids"]`` — the item table it was trained on.
"""

from __future__ import annotations

import os
import time

import numpy as np

TITLE = "Generator: train an encoder-decoder over semantic IDs, evaluate, generate sessions"


def _catalog_sids(ctx, item_ids):
    """(tokenizer, SIDs [N, D], embeddings [N, E]) of ``item_ids`` from the live catalog of the
    semantic-ID part, or None. The embeddings are those the SIDs were fitted on: the generator's
    code embeddings start from them (``run_train_job(item_emb=...)``)."""
    cat, tok = ctx.state.get("catalog"), ctx.state.get("tokenizer")
    if cat is None or tok is None:
        return None
    rows = [cat.sid_of(str(i)) for i in item_ids]
    if any(r is None for r in rows):
        return None
    sids = np.stack(rows).astype(np.int64)
    if len(np.unique(sids, axis=0)) != len(sids):
        return None
    sizes = np.asarray(tok.sid_level_sizes)
    if sids.shape[1] != len(sizes) or (sids >= sizes[None, :]).any() or (sids < 0).any():
        return None
    emb = cat.embeddings([cat.index_of(str(i)) for i in item_ids])
    return tok, sids, emb


def run(ctx) -> None:
    import torch

    from actors.train_job import TrainJobConfig, interactions_from_records, run_train_job
    from models.decoding.constraint import SidConstraint
    from models.decoding.search import beam_session
    from models.evaluation.generator_ranker import GeneratorRanker, build_trie
    from models.evaluation.personalisation import personalisation_report
    from models.generator.features import history_batch
    from models.evaluation.metrics import hit_rate, ndcg, target_ranks
    from models.baselines.popularity import PopularityRanker
    from models.generator.training import TrainConfig

    threads = torch.get_num_threads()
    if (os.cpu_count() or 1) <= 2:
        torch.set_num_threads(1)      # on 2 shared cores one thread is faster than two fighting
    try:
        world = ctx.world
        ds = world.dataset()
        data = interactions_from_records("synthetic", ds.user_events, ds.item_events)
        have = _catalog_sids(ctx, data.split.item_ids)
        tok, sids, emb = have if have is not None else (None, None, None)
        ctx.say(f"SIDs: {'from the live catalog (semantic_ids part)' if have else 'fitting a tokenizer here'}")
        # patience 4: validation NDCG on a few hundred users moves by its sampling noise from epoch to
        # epoch, and a shorter patience stopped early on noise, leaving most of the time budget unused
        cfg = TrainJobConfig(
            data="synthetic", out=str(ctx.workdir / "generator.safetensors"),
            embeddings="collab" if ctx.quick else "fusion",
            generator=dict(d_model=64, heads=2, enc_layers=2, dec_layers=2, dropout=0.1,
                           max_history=30, session_len=3),
            # a CPU-time budget: on a loaded 2-core machine a wall budget bought 5 epochs of training
            train=TrainConfig(epochs=3 if ctx.quick else 12, batch_size=128, lr=3e-3, patience=4,
                              max_seconds=12 if ctx.quick else 100, budget_clock="cpu",
                              val_max_users=150 if ctx.quick else 300, val_beam=10, progress=False),
            eval_beam=10, eval_max_users=150 if ctx.quick else 500)
        res = run_train_job(cfg, data=data, tokenizer=tok, item_sids=sids, item_emb=emb, say=ctx.say)
        model, sids = res.model, res.item_sids

        # --- a short eval: generator vs popularity, leave-one-out, full ranking, seen excluded
        test = data.split.test()
        n_eval = res.metrics["test"]["test_users"]
        cases = test.subset(np.arange(n_eval))
        gen = res.metrics["test"]
        pop = PopularityRanker(data.n_items).fit(data.split.train_valid())
        pop_top = pop.rank(cases.histories, 10)
        r = target_ranks(pop_top, cases.targets)
        # the generator's top-10 lists again (deterministic: the lists the test metrics were computed on)
        gen_top = GeneratorRanker(model, sids, beam_width=cfg.eval_beam).rank(cases.histories, 10)
        gp = personalisation_report(gen_top, cases.targets, data.n_items, baseline_ranked=pop_top)
        pp = personalisation_report(pop_top, cases.targets, data.n_items)
        ctx.say(f"\nleave-one-out on {n_eval} users (full ranking over {data.n_items} items):")
        ctx.say(f"  {'model':<12}{'NDCG@10':>9}{'HR@10':>8}{'diversity@10':>14}{'coverage@10':>13}")
        ctx.say(f"  {'generator':<12}{gen['ndcg10']:>9.4f}{gen['hr10']:>8.4f}{gp.diversity:>14.3f}{gp.coverage:>13.3f}"
                f"   invalid IDs: {gen['invalid_rate']:.0%}")
        ctx.say(f"  {'popularity':<12}{ndcg(r, 10):>9.4f}{hit_rate(r, 10):>8.4f}{pp.diversity:>14.3f}{pp.coverage:>13.3f}")
        ctx.say(f"  per user (NDCG@10): the generator beats popularity for {gp.beats_baseline:.0%} of users, "
                f"loses for {gp.loses_to_baseline:.0%}, ties (mostly both miss) for "
                f"{1 - gp.beats_baseline - gp.loses_to_baseline:.0%}")
        ctx.say("  (diversity@10 = 1 - mean overlap of two users' top-10 lists; coverage@10 = share of the "
                "catalog in anyone's top 10)")

        # --- generated sessions beside the history, with each item's main topic
        trie = build_trie(sids, model.cfg.level_sizes)
        names = world.topic_names
        ids = data.split.item_ids

        def label(i: int) -> str:
            k = world.item_index(str(ids[i]))
            return f"{ids[i]}({names[int(world.item_primary[k])]})"

        users = cases.users[:3]
        hist = [data.split.items[u][:-1] for u in users]
        hb = history_batch(hist, sids, model.cfg.max_history, model.cfg.n_time_buckets,
                           types=[data.split.types[u][:-1] for u in users],
                           ts=[data.split.ts[u][:-1] for u in users])
        seen = torch.zeros(len(users), data.n_items, dtype=torch.bool)
        for b, h in enumerate(hist):
            seen[b, torch.as_tensor(h)] = True
        out = beam_session(model, hb, SidConstraint.of(trie), session_len=5, beam_width=4, seen=seen)
        ctx.say("\ngenerated sessions (beam 4, trie-constrained, no repeats, seen items excluded):")
        for b, u in enumerate(users):
            uid = str(data.split.user_ids[u])
            pref = world.preference(uid)
            top = ", ".join(names[int(k)] for k in np.argsort(-pref)[:2])
            ctx.say(f"  user {uid} (tastes: {top})")
            ctx.say(f"    history (last 5): {', '.join(label(int(i)) for i in hist[b][-5:])}")
            ctx.say(f"    generated:        {', '.join(label(int(i)) for i in out.items[b].tolist() if i >= 0)}")
            ctx.say(f"    next actual item: {label(int(cases.targets[b]))}")
        ctx.state["generator"] = model
        ctx.state["generator_path"] = str(res.path)
        ctx.state["generator_item_ids"] = list(ids)
        ctx.state["generator_item_sids"] = sids
    finally:
        torch.set_num_threads(threads)
