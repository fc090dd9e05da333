"""Benchmark suite ``batching``: what a decode costs per batch size, static vs continuous, on every device here.

``genrec bench batching [--quick]`` (or ``python tests/bench/bench_batching.py [--quick] [--json FILE]``
on a machine with only numpy and torch: it touches ``models/`` alone).

Why: the recommender's batch size (:data:`serving.recommender_config.DEFAULT_MAX_BATCH`) trades
answers per second against the latency of each admitted request. Under overload an admitted
request costs one decode at the running batch size with continuous batching
(:mod:`models.decoding.continuous`), and about two with static batches; so the size to run at
is the largest one whose decode costs little more than a single request's.

One run, the same model and requests for every figure, per device (``cpu`` with one intra-op
thread, and ``cuda`` when a GPU is there) and per model size (``serving``: the model of the
``serving`` suite; ``large``: d_model 256, 2 encoder / 4 decoder layers):

* ``{dev}_{model}_static_b{B}_ms`` — median time to encode and greedily decode a session of
  ``K`` items for B requests in one static batch (:func:`models.decoding.search.greedy_session`);
* ``{dev}_{model}_continuous_b{B}_ms`` — the same B requests through
  :class:`models.decoding.continuous.ContinuousGreedy` (admitted together, stepped to the end);
* ``{dev}_{model}_cost_b{B}`` — static time at B / static time at 1 (what a bigger batch costs
  each of its requests); ``{dev}_{model}_sessions_per_s_b{B}`` — B / static time;
* ``{dev}_{model}_continuous_overhead`` — continuous / static time, median over the batch sizes;
* ``{dev}_{model}_rows_at_1_25x`` — the largest measured B whose cost is at most 1.25;
* ``{dev}_{model}_identical`` — fraction of requests whose session, decoded in a continuous batch
  that requests join at staggered steps, equals its session decoded alone (items and codes).
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import numpy as np

SUITE = "batching"
LEVELS = (32, 32, 8)
N_ITEMS = 2000
SESSION = 5
HISTORY = 10
MODELS = {"serving": {"d_model": 64, "heads": 2, "enc_layers": 1, "dec_layers": 1, "max_history": 30},
          "large": {"d_model": 256, "heads": 4, "enc_layers": 2, "dec_layers": 4, "max_history": 30}}


def _catalog(rng):
    from models.evaluation.generator_ranker import build_trie

    sids = np.stack([rng.integers(0, LEVELS[0], N_ITEMS), rng.integers(0, LEVELS[1], N_ITEMS),
                     np.zeros(N_ITEMS, np.int64)], 1)
    for i in range(N_ITEMS):   # de-duplication level: the next free code under the prefix (drop when full)
        sids[i, 2] = sum(1 for j in range(i) if sids[j, 0] == sids[i, 0] and sids[j, 1] == sids[i, 1])
    keep = sids[:, 2] < LEVELS[2]
    sids = sids[keep]
    return sids, build_trie(sids, LEVELS)


def _sync(dev: str) -> None:
    if dev == "cuda":
        import torch

        torch.cuda.synchronize()


def _paired_ms(fns, reps: int, dev: str) -> list[float]:
    """Median ms of each function, run alternately (one of each per round) after a warm-up of each."""
    for fn in fns:
        fn()
    _sync(dev)
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(reps):
        for fn, ts in zip(fns, times):
            t = time.perf_counter()
            fn()
            _sync(dev)
            ts.append((time.perf_counter() - t) * 1e3)
    return [statistics.median(ts) for ts in times]


def _measure(dev: str, name: str, cfg: dict, batches, reps: int, rng) -> dict:
    import torch

    from models.decoding.constraint import SidConstraint
    from models.decoding.continuous import ContinuousGreedy
    from models.decoding.search import greedy_session
    from models.generator.model import GenerativeRecommender, GeneratorConfig
    from models.generator.features import history_batch

    sids, trie = _catalog(rng)
    n = len(sids)
    constraint = SidConstraint.of(trie, dev)
    torch.manual_seed(1)
    model = GenerativeRecommender(GeneratorConfig(level_sizes=LEVELS, session_len=SESSION, dropout=0.0,
                                                  **cfg)).to(dev).eval()
    hist_items = [rng.integers(0, n, HISTORY) for _ in range(max(batches))]

    def inputs(b: int):
        hb = history_batch(hist_items[:b], sids, cfg["max_history"], 16).to(dev)
        seen = torch.zeros(b, n, dtype=torch.bool)
        for i in range(b):
            seen[i, torch.as_tensor(hist_items[i])] = True
        return hb, seen.to(dev)

    def static(b: int):
        hb, seen = inputs(b)
        with torch.no_grad():
            return greedy_session(model, model.encode(hb), constraint, session_len=SESSION, seen=seen)

    def continuous(b: int):
        hb, seen = inputs(b)
        cb = ContinuousGreedy(model)
        with torch.no_grad():
            cb.admit(model.encode(hb), [SESSION] * b, list(range(b)), seen)
        out = []
        while len(cb):
            out += cb.step(constraint)
        return out

    m: dict = {}
    key = f"{dev}_{name}"
    static_ms = {}
    overheads = []
    static(max(batches))   # warm-up at the largest size (allocator, caches)
    for b in batches:
        static_ms[b], cont = _paired_ms([lambda: static(b), lambda: continuous(b)], reps, dev)
        m[f"{key}_static_b{b}_ms"] = static_ms[b]
        m[f"{key}_continuous_b{b}_ms"] = cont
        m[f"{key}_cost_b{b}"] = static_ms[b] / static_ms[batches[0]]
        m[f"{key}_sessions_per_s_b{b}"] = b / static_ms[b] * 1e3
        overheads.append(cont / static_ms[b])
    m[f"{key}_continuous_overhead"] = statistics.median(overheads)
    m[f"{key}_rows_at_1_25x"] = max(b for b in batches if static_ms[b] <= 1.25 * static_ms[batches[0]])
    m[f"{key}_identical"] = _identical(model, constraint, inputs, min(16, max(batches)))
    return m


def _identical(model, constraint, inputs, b: int) -> float:
    """Fraction of b requests whose session from a staggered continuous batch equals their solo session."""
    import torch

    from models.decoding.continuous import ContinuousGreedy
    from models.decoding.search import greedy_session

    hb, seen = inputs(b)
    solo = []
    for i in range(b):
        one = torch.zeros(b, dtype=torch.bool)
        one[i] = True
        with torch.no_grad():
            h1 = type(hb)(*(t[one] for t in hb))
            out = greedy_session(model, model.encode(h1), constraint, session_len=SESSION, seen=seen[one])
        solo.append((out.items[0].tolist(), out.sids[0].tolist()))
    cb = ContinuousGreedy(model)
    got: dict = {}
    nxt, step = 0, 0
    while len(got) < b:
        if nxt < b:   # one or two requests join before each step
            take = list(range(nxt, min(b, nxt + 1 + step % 2)))
            sel = torch.zeros(b, dtype=torch.bool)
            sel[take] = True
            with torch.no_grad():
                cb.admit(model.encode(type(hb)(*(t[sel] for t in hb))), [SESSION] * len(take), take, seen[sel])
            nxt = take[-1] + 1
        for f in cb.step(constraint):
            got[f.tag] = (f.items, f.sids)
        step += 1
    return sum(got[i] == solo[i] for i in range(b)) / b


def run(quick: bool = False, dataset: str | None = None) -> dict:
    import torch

    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    batches = (1, 4, 8, 16) if quick else (1, 2, 4, 8, 16, 32, 64)
    reps = 5 if quick else 15
    metrics: dict = {"devices": ",".join(devices)}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)   # stable CPU timings on shared cores (the serving replica's setting too)
    try:
        for dev in devices:
            for name, cfg in MODELS.items():
                if quick and name == "large" and dev == "cpu":
                    continue
                metrics.update(_measure(dev, name, cfg, batches, reps, np.random.default_rng(0)))
    finally:
        torch.set_num_threads(threads)
    rows = ["| device, model | " + " | ".join(f"B={b}" for b in batches) + " |",
            "|---|" + "---|" * len(batches)]
    for dev in devices:
        for name in MODELS:
            k = f"{dev}_{name}"
            if f"{k}_static_b1_ms" not in metrics:
                continue
            rows.append(f"| {dev}, {name}: static ms (cost vs B=1) | " + " | ".join(
                f"{metrics[f'{k}_static_b{b}_ms']:.1f} ({metrics[f'{k}_cost_b{b}']:.2f})" for b in batches) + " |")
            rows.append(f"| {dev}, {name}: continuous ms | " + " | ".join(
                f"{metrics[f'{k}_continuous_b{b}_ms']:.1f}" for b in batches) + " |")
    return {"config": {"levels": list(LEVELS), "items": N_ITEMS, "session_len": SESSION, "history": HISTORY,
                       "models": MODELS, "batches": list(batches), "reps": reps, "cpu_threads": 1},
            "metrics": metrics, "tables": ["\n".join(rows)]}


def main(argv: list[str]) -> int:
    """Stand-alone entry (numpy + torch only): prints the result, or writes it as JSON with ``--json FILE``."""
    import argparse

    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from infra.benchmarks import emit, result_of

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="fewer batch sizes and repetitions")
    p.add_argument("--json", metavar="FILE", help="write {suite, machine, config, metrics, tables, ...} here")
    a = p.parse_args(argv)
    t0 = time.time()
    out = run(quick=a.quick)
    emit(result_of(SUITE, out, t0, a.quick), a.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
