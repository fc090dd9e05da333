"""Benchmark suite ``gpu``: every GPU figure of issue 18 in one prepared command, CPU beside it.

``python tests/bench/bench_gpu.py --json FILE [--quick]`` (or ``genrec bench gpu``). Needs torch and
numpy and the project's ``models/`` only (no faiss, no data files, no Ray): a lent machine's short
time goes to measuring. Every figure is measured on ``cpu`` (one intra-op thread: "one CPU core") and,
when CUDA is present, on ``cuda`` in the same run; keys carry the device. On a CPU-only machine it
runs the CPU half and says so (``cuda = 0``). Progress goes to stderr.

Figures (``{dev}`` = ``cpu`` / ``cuda``):

* ``{dev}_spec_beam_speedup`` — plain beam / lossless speculative beam (``spec_beam``), p50 latency, batch
  1, sessions of 10 items, beam 4 (draft tree of width 8), same model and requests; ``{dev}_lossless_identical_fraction`` —
  sessions equal to plain beam's (must be 1); ``{dev}_spec_beam_acceptance_rate``. The model is a
  random-initialised generator (the ``serving`` size of the ``batching`` suite, sharpened so that its
  distributions are not flat) with MTP heads distilled on its own greedy sessions
  (:func:`models.generator.mtp.fit_mtp`), so no data set is needed; the ``decode`` suite has the
  trained-model figure. ``spec_beam_speedup`` / ``lossless_identical_fraction`` repeat the CUDA figure
  when there is one, else the CPU one.
* ``{dev}_beam_b1_ms`` — one request's session (10 items, beam 4); ``gpu_over_cpu_batch1`` =
  ``cpu_beam_b1_ms / cuda_beam_b1_ms`` (>= 1: the GPU is not slower than one CPU core).
* ``{dev}_{model}_rows64_over_rows1`` — sessions/s of 64 requests decoded together over 1 request
  (static greedy batch, :func:`models.decoding.search.greedy_session`), ``model`` in ``serving`` /
  ``large`` (``batching`` suite sizes); ``gpu_rows64_over_rows1`` the CUDA serving figure.
* ``{dev}_constraint_step_us_{10k,100k,1m,10m}`` — one step of the catalog constraint (``mask`` +
  ``advance``, 16 rows, 100 excluded items each) on synthetic catalogs (the ``decode`` suite's
  micro-benchmark, on the device); ``constraint_bytes_per_item``; ``{dev}_constraint_step_ratio_top_10k``
  (largest size over 10k).
* ``{dev}_step_graphs_{compile,cuda_graphs}_{beam,spec_beam,greedy64}_speedup`` — the same decode with the
  decoder's step forwards compiled (``DecodeSettings.step_graphs``, :mod:`models.decoding.step_graphs`) over
  eager: beam and speculative beam at batch 1, a static greedy batch of 64 requests; sessions must be
  identical (``{dev}_step_graphs_identical_fraction``); ``{dev}_step_graphs_{mode}_warmup_s`` — the one-off
  compile time those decodes cost. ``cuda_graphs`` runs on CUDA only.
* ``{dev}_catalog_update_ms_{size}`` / ``{dev}_catalog_rebuild_ms_{size}`` — bringing the device tables
  up to date after 1,000 adds + 1,000 retirements: the delta merge
  (:meth:`models.sid.catalog_keys.CatalogKeys.updated`) vs a full build.

``--quick``: smaller catalogs (10k, 100k), fewer requests and repetitions, the ``serving`` model only —
what ``make test`` runs (tests/models/decoding/test_bench_gpu.py) so that the script cannot rot.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import numpy as np

SUITE = "gpu"
ROOT = Path(__file__).resolve().parents[2]
SESSION, BEAM, HISTORY = 10, 4, 10
DRAFT_WIDTH = 2 * BEAM      # spec_beam's draft tree keeps 2W beams per step (decision 028)
ROWS = (1, 64)


def _progress(msg: str) -> None:
    print(f"[bench_gpu {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _suite(name: str):
    """A sibling suite module (its helpers are reused, not copied)."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from infra.benchmarks import load_suite

    return load_suite(name)


def _sync(dev: str) -> None:
    if dev == "cuda":
        import torch

        torch.cuda.synchronize()


def _timed(fn, dev: str) -> float:
    _sync(dev)
    t0 = time.perf_counter()
    fn()
    _sync(dev)
    return (time.perf_counter() - t0) * 1e3


# ---- the model and requests ---------------------------------------------------------------------

def _world(quick: bool):
    """Catalog, a sharpened random generator (serving size, 10-item sessions) and MTP heads distilled on its
    own greedy sessions — all on the CPU; callers move copies to their device."""
    import torch

    from models.decoding.constraint import SidConstraint
    from models.decoding.generate import generate
    from models.decoding.settings import DecodeSettings
    from models.generator.features import history_batch
    from models.generator.model import GenerativeRecommender, GeneratorConfig
    from models.generator.mtp import MTPConfig, MTPHeads, fit_mtp

    batching = _suite("batching")
    rng = np.random.default_rng(0)
    sids, trie = batching._catalog(rng)
    torch.manual_seed(0)
    cfg = GeneratorConfig(level_sizes=batching.LEVELS, session_len=SESSION, dropout=0.0,
                          **batching.MODELS["serving"])
    model = GenerativeRecommender(cfg).eval()
    with torch.no_grad():                       # peaked distributions, as a trained model has
        model.code_emb.weight.mul_(25.0)
    n_hist = 16 if quick else 400
    hists = [rng.integers(0, len(sids), HISTORY) for _ in range(n_hist)]
    hb = history_batch(hists, sids, cfg.max_history, 16)
    con = SidConstraint.of(trie)
    with torch.no_grad():
        sessions = generate(model, hb, con, DecodeSettings("greedy", session_len=SESSION), seen=hists).sids
    heads = MTPHeads(MTPConfig(cfg.level_sizes, cfg.d_model, horizon=6, train_epochs=2 if quick else 15,
                               train_batch_size=32, train_lr=3e-3)).init_from_generator(model)
    if not quick:                               # --quick: undistilled heads (the figures' plumbing only)
        t0 = time.time()
        fit_mtp(model, heads, hb, sessions)
        _progress(f"MTP heads distilled on {n_hist} own sessions in {time.time() - t0:.1f}s")
    return sids, trie, model, heads.eval(), rng


# ---- figures ------------------------------------------------------------------------------------

def _decode_figures(dev: str, sids, trie, model, heads, rng, n_req: int) -> dict:
    """spec_beam vs plain beam at batch 1 (alternating, same requests); beam latency of one request."""
    import copy

    import torch

    from models.decoding.constraint import SidConstraint
    from models.decoding.generate import generate
    from models.decoding.settings import DecodeSettings
    from models.generator.features import history_batch

    model, heads = copy.deepcopy(model).to(dev), copy.deepcopy(heads).to(dev)
    con = SidConstraint.of(trie, dev)
    modes = {"beam": DecodeSettings("beam", session_len=SESSION, beam_width=BEAM),
             "spec_beam": DecodeSettings("spec_beam", session_len=SESSION, beam_width=BEAM, draft_len=3,
                                         draft_max=6, draft_width=DRAFT_WIDTH)}
    lat = {m: [] for m in modes}
    same, acc, drafted = 0, 0, 0
    for r in range(n_req + 1):
        hist = [rng.integers(0, len(sids), HISTORY)]
        hb = history_batch(hist, sids, model.cfg.max_history, 16).to(dev)
        with torch.no_grad():
            memory = model.encode(hb)
            out = {}
            for m in (list(modes) if r % 2 else list(modes)[::-1]):        # alternate to spread drift
                t = _timed(lambda: out.__setitem__(m, generate(model, memory, con, modes[m], seen=hist,
                                                               mtp_heads=heads)), dev)
                if r:                                                      # request 0 is the warm-up
                    lat[m].append(t)
        if r:
            same += int(torch.equal(out["beam"].sids, out["spec_beam"].sids))
            acc += out["spec_beam"].stats["accepted"]
            drafted += out["spec_beam"].stats["drafted"]
    b50, s50 = statistics.median(lat["beam"]), statistics.median(lat["spec_beam"])
    return {f"{dev}_beam_b1_ms": round(b50, 3), f"{dev}_spec_beam_b1_ms": round(s50, 3),
            f"{dev}_spec_beam_speedup": round(b50 / s50, 3),
            f"{dev}_lossless_identical_fraction": same / n_req,
            f"{dev}_spec_beam_acceptance_rate": round(acc / max(drafted, 1), 4)}


def _rows_figures(dev: str, sids, trie, rng, models: tuple[str, ...], reps: int) -> dict:
    """Sessions/s of 64 requests in one static greedy batch over 1 request, per model size."""
    import torch

    from models.decoding.constraint import SidConstraint
    from models.decoding.search import greedy_session
    from models.generator.features import history_batch
    from models.generator.model import GenerativeRecommender, GeneratorConfig

    batching = _suite("batching")
    con = SidConstraint.of(trie, dev)
    out = {}
    hist = [rng.integers(0, len(sids), HISTORY) for _ in range(max(ROWS))]
    for name in models:
        torch.manual_seed(1)
        cfg = GeneratorConfig(level_sizes=batching.LEVELS, session_len=SESSION, dropout=0.0, **batching.MODELS[name])
        model = GenerativeRecommender(cfg).to(dev).eval()
        ms = {}
        for b in ROWS:
            hb = history_batch(hist[:b], sids, cfg.max_history, 16).to(dev)

            def run():
                with torch.no_grad():
                    greedy_session(model, model.encode(hb), con, session_len=SESSION, seen=hist[:b])
            run()
            ms[b] = statistics.median(_timed(run, dev) for _ in range(reps))
            out[f"{dev}_{name}_rows{b}_ms"] = round(ms[b], 3)
        lo, hi = ROWS
        out[f"{dev}_{name}_rows{hi}_over_rows{lo}"] = round((hi / ms[hi]) / (lo / ms[lo]), 3)
        _progress(f"{dev} {name}: {lo} row {ms[lo]:.1f} ms, {hi} rows {ms[hi]:.1f} ms")
    return out


def _step_graph_figures(dev: str, sids, trie, model, heads, rng, n_req: int, quick: bool) -> dict:
    """Eager vs compiled step forwards on the same requests (alternating), sessions compared."""
    import copy

    import torch

    from models.decoding.constraint import SidConstraint
    from models.decoding.generate import generate
    from models.decoding.settings import DecodeSettings
    from models.generator.features import history_batch

    model, heads = copy.deepcopy(model).to(dev), copy.deepcopy(heads).to(dev)
    con = SidConstraint.of(trie, dev)
    cases = {"beam": (1, dict(mode="beam", beam_width=BEAM)),
             "spec_beam": (1, dict(mode="spec_beam", beam_width=BEAM, draft_len=3, draft_max=6,
                                   draft_width=DRAFT_WIDTH)),
             "greedy64": (64, dict(mode="greedy"))}
    if quick:
        cases = {"beam": cases["beam"]}
    graph_modes = ("compile", "cuda_graphs") if dev == "cuda" else ("compile",)
    out, same, total = {}, 0, 0
    for gm in graph_modes:
        warm = 0.0
        for case, (rows, kw) in cases.items():
            s = {"eager": DecodeSettings(session_len=SESSION, **kw),
                 gm: DecodeSettings(session_len=SESSION, step_graphs=gm, **kw)}
            lat = {k: [] for k in s}
            for r in range(n_req + 2):
                hist = [rng.integers(0, len(sids), HISTORY) for _ in range(rows)]
                with torch.no_grad():
                    memory = model.encode(history_batch(hist, sids, model.cfg.max_history, 16).to(dev))
                    res = {}
                    for k in (list(s) if r % 2 else list(s)[::-1]):
                        t = _timed(lambda: res.__setitem__(k, generate(model, memory, con, s[k], seen=hist,
                                                                       mtp_heads=heads)), dev)
                        if r < 2 and k == gm:                              # the first two requests compile
                            warm += t / 1e3
                        elif r >= 2:
                            lat[k].append(t)
                same += int(torch.equal(res["eager"].sids, res[gm].sids))
                total += 1
            ratio = statistics.median(lat["eager"]) / statistics.median(lat[gm])
            out[f"{dev}_step_graphs_{gm}_{case}_speedup"] = round(ratio, 3)
            _progress(f"{dev} step graphs {gm} {case}: {ratio:.2f}x eager")
        out[f"{dev}_step_graphs_{gm}_warmup_s"] = round(warm, 1)
    out[f"{dev}_step_graphs_identical_fraction"] = same / total
    return out


def _constraint_figures(dev: str, sizes: dict, reps: int) -> dict:
    """The decode suite's constraint micro-benchmark on ``dev``, plus delta update vs rebuild of the tables."""
    import torch

    from models.decoding.constraint import SidConstraint
    from models.sid.catalog_keys import CatalogKeys

    decode = _suite("decode")
    rng = np.random.default_rng(0)
    out = {}
    for name, n in sizes.items():
        tables, sids = decode._synthetic_tables(n, rng, dev)
        seen = [rng.choice(n, decode.STEP_BANNED, replace=False) for _ in range(decode.STEP_ROWS)]
        out[f"{dev}_constraint_step_us_{name}"] = round(decode._time_steps(SidConstraint(tables), seen, rng, reps), 1)
        out["constraint_bytes_per_item"] = round(tables.nbytes / n, 1)
        # a delta of 1,000 retirements + 1,000 new items: merge into the device tables vs build them anew
        live = np.arange(n)
        gone = rng.choice(n, 1000, replace=False)
        space = int(np.prod(decode.SYNTH_LEVELS))
        cand = np.unique(rng.integers(0, space, 4000))
        new_keys = rng.permutation(cand[~np.isin(cand, tables.keys.cpu().numpy())])[:1000]
        mult = tables.mult.cpu().numpy()
        new_sids = (new_keys[:, None] // mult[None, :]) % np.asarray(decode.SYNTH_LEVELS)[None, :]
        new_items = np.arange(n, n + new_keys.size)
        keep = np.setdiff1d(live, gone)
        upd = statistics.median(_timed(lambda: tables.updated(new_keys, new_items, gone, 1), dev) for _ in range(3))
        all_sids, all_items = np.concatenate([sids[keep], new_sids]), np.concatenate([keep, new_items])
        reb = statistics.median(_timed(lambda: CatalogKeys.build(decode.SYNTH_LEVELS, all_sids, all_items, 1,
                                                                 device=dev), dev) for _ in range(3))
        out[f"{dev}_catalog_update_ms_{name}"] = round(upd, 3)
        out[f"{dev}_catalog_rebuild_ms_{name}"] = round(reb, 3)
        _progress(f"{dev} constraint {name}: {out[f'{dev}_constraint_step_us_{name}']} µs/step, "
                  f"delta update {upd:.1f} ms vs rebuild {reb:.1f} ms")
        del tables, sids, all_sids
        if dev == "cuda":
            torch.cuda.empty_cache()
    top = list(sizes)[-1]
    out[f"{dev}_constraint_step_ratio_top_10k"] = round(out[f"{dev}_constraint_step_us_{top}"] /
                                                        out[f"{dev}_constraint_step_us_10k"], 3)
    return out


def run(quick: bool = False, dataset: str | None = None, devices: tuple[str, ...] | None = None) -> dict:
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)                                   # the CPU figures are one core's
    has_cuda = torch.cuda.is_available()
    devices = devices or (("cpu", "cuda") if has_cuda else ("cpu",))
    sizes = {"10k": 10_000, "100k": 100_000} if quick else _suite("decode").CATALOG_SIZES
    metrics: dict = {"cuda": int(has_cuda)}
    if has_cuda:
        metrics["device"] = torch.cuda.get_device_name(0)
    try:
        t0 = time.time()
        sids, trie, model, heads, rng = _world(quick)
        for dev in devices:
            _progress(f"{dev}: decode figures (batch 1, {SESSION} items, beam {BEAM})")
            metrics.update(_decode_figures(dev, sids, trie, model, heads, rng, 4 if quick else 24))
            _progress(f"{dev}: spec_beam_speedup {metrics[f'{dev}_spec_beam_speedup']}, identical "
                      f"{metrics[f'{dev}_lossless_identical_fraction']}")
            metrics.update(_rows_figures(dev, sids, trie, rng, ("serving",) if quick else ("serving", "large"),
                                         2 if quick else 7))
            metrics.update(_constraint_figures(dev, sizes, 5 if quick else 50))
            _progress(f"{dev}: step graphs (compiled decoder steps) vs eager")
            metrics.update(_step_graph_figures(dev, sids, trie, model, heads, rng, 2 if quick else 12, quick))
        main = "cuda" if "cuda" in devices else "cpu"
        metrics["spec_beam_speedup"] = metrics[f"{main}_spec_beam_speedup"]
        metrics["lossless_identical_fraction"] = metrics[f"{main}_lossless_identical_fraction"]
        if "cuda" in devices:
            metrics["gpu_over_cpu_batch1"] = round(metrics["cpu_beam_b1_ms"] / metrics["cuda_beam_b1_ms"], 3)
            metrics["gpu_rows64_over_rows1"] = metrics["cuda_serving_rows64_over_rows1"]
        _progress(f"done in {time.time() - t0:.0f}s")
    finally:
        torch.set_num_threads(threads)
    config = {"devices": list(devices), "session_items": SESSION, "beam_width": BEAM, "rows": list(ROWS),
              "spec_beam_draft": f"MTP chain beam of width {DRAFT_WIDTH}, adaptive 1..6 (start 3)",
              "model": "random-init serving generator (sharpened) + self-distilled MTP heads",
              "catalog_sizes": list(sizes), "cpu_threads": 1}
    return {"config": config, "metrics": metrics, "tables": []}


def main(argv: list[str]) -> int:
    import argparse

    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from infra.benchmarks import emit, result_of

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="small catalogs, few requests (what make test runs)")
    p.add_argument("--json", metavar="FILE", help="write {suite, machine, config, metrics, ...} here")
    p.add_argument("--cpu-only", action="store_true", help="skip CUDA even when it is present")
    a = p.parse_args(argv)
    t0 = time.time()
    out = run(quick=a.quick, devices=("cpu",) if a.cpu_only else None)
    emit(result_of(SUITE, out, t0, a.quick), a.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
