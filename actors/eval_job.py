"""Offline evaluation job: generator vs SASRec vs popularity, same data, same split, same metrics.

Reads an interaction log from any source genrec knows — ``synthetic``,
``ml100k``, an interactions CSV/TSV, a SASRec-style text file (through
:func:`ingest.datasets.load_dataset`) or the Parquet archive (a directory of
``user-events`` Parquet files) — keeps the engaged events (implicit positive
feedback), splits leave-one-out (:mod:`models.evaluation.splits`), trains each model on
the training part with early stopping on the validation item, and ranks the
whole catalog for every test user (:mod:`models.evaluation.metrics`). Every model gets
the same histories and the same seen-item rule (:mod:`models.evaluation.ranker`), and
the job *checks* the rule: a model that returns a seen item is reported.

The generator needs semantic IDs: exactly as ``genrec train`` does
(:mod:`actors.train_job`), item embeddings (co-occurrence of the training
sequences, item text through the sentence encoder, or their fusion) are
quantised by RQ-KMeans or RQ-VAE and made unique by the de-duplication level;
the generator then trains on the same training part as SASRec (its
validation item is our validation item). Results: a dict (and JSON file) with per-seed metrics,
mean and standard deviation per model, and a markdown comparison table.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable

import numpy as np

from models.evaluation.budget import CLOCKS

log = logging.getLogger(__name__)

MODELS = ("generator", "sasrec", "popularity")

#: Every model's best settings measured by the ``quality`` suite at equal CPU budgets (BENCHMARKS.md;
#: decisions 012, 026). ``genrec eval`` and the suite both start from them; ``EvalConfig.generator`` /
#: ``train`` / ``sasrec`` override single fields on top.
#: The item head with prefix embeddings validated above the plain generator on ML-100K and Amazon Toys
#: (decision 041); the encoder reading items through the same vectors (prefix_input) validated above it on
#: both (decision 043).
GENERATOR_DEFAULTS = {"d_model": 64, "heads": 2, "dec_layers": 1, "session_len": 2, "item_head": True,
                      "item_prefix_rows": 16384, "prefix_input": True}
#: The generator validates on every validation user each epoch and does not stop early: its learning rate
#: follows a cosine over the budget, so the low-rate last epochs are usually the best, and a noisy
#: validation sample with patience stopped some seeds at a high-rate epoch.
TRAIN_DEFAULTS = {"val_max_users": 0, "val_beam": 10, "patience": 0}
#: SASRec reads the last 50 events (random 50-event windows of longer histories during training); dropout
#: 0.5 validated better than 0.2 on ML-100K and Amazon Toys (decision 041).
SASREC_DEFAULTS = {"max_len": 50, "lr": 2e-3, "eval_every": 2, "patience": 3, "dropout": 0.5}


@dataclass(frozen=True)
class EvalConfig:
    """One evaluation run.

    dataset: ``synthetic`` | ``ml100k`` | a file (interactions / SASRec text) | an archive directory.
    models: which of generator, sasrec, popularity to run.
    seeds: one training run per seed (mean and spread are reported).
    max_users: evaluate on the first N users only (0 = all) — quick runs.
    engaged_only: keep only engaged event types (click, like, watch, rating, …) in the log.
    n: length of every ranked list (≥ 50 for HR@50 / NDCG@50).
    sasrec: SASRecConfig overrides; generator: GeneratorConfig overrides; train: TrainConfig
        overrides of the generator's training loop — each on top of the best measured settings
        (``SASREC_DEFAULTS``, ``GENERATOR_DEFAULTS``, ``TRAIN_DEFAULTS``).
    tokenizer: ``rq_kmeans`` or ``rq_vae``; levels / codebook_size: SID shape (0 = auto).
    embeddings: what the SIDs quantise, as in ``genrec train``: ``collab`` (PPMI-SVD of
        in-sequence co-occurrence), ``content`` (MiniLM on item text) or ``fusion`` (both;
        collab alone when the data set has no text).
    budget_s: training cap per model run in seconds (0 = none), on ``budget_clock``: ``wall``, or
        ``cpu`` (this process's CPU time — equal compute for every model on a shared machine).
    transition_prior: the generator's ranking adds the co-occurrence prior of each history's last item
        (:mod:`models.evaluation.transition_prior`), its weight chosen on the validation users (0 among the
        choices); item-head models only.
    device: ``auto`` (CUDA when present), ``cpu`` or ``cuda``.
    """

    dataset: str = "synthetic"
    models: tuple[str, ...] = MODELS
    seeds: tuple[int, ...] = (0,)
    max_users: int = 0
    engaged_only: bool = True
    n: int = 50
    sasrec: dict = field(default_factory=dict)
    generator: dict = field(default_factory=dict)
    train: dict = field(default_factory=dict)
    tokenizer: str = "rq_kmeans"
    levels: int = 3
    codebook_size: int = 0
    embeddings: str = "collab"
    beam_width: int = 50
    budget_s: float = 0.0
    budget_clock: str = "cpu"
    init_codes: bool = True
    transition_prior: bool = True
    device: str = "auto"
    dataset_kw: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        bad = [m for m in self.models if m not in MODELS]
        if bad or not self.models:
            raise ValueError(f"EvalConfig.models={self.models!r}: choose from {MODELS}")
        if not self.seeds:
            raise ValueError("EvalConfig.seeds must name at least one seed, e.g. (0,)")
        if self.max_users < 0:
            raise ValueError(f"EvalConfig.max_users={self.max_users} must be >= 0 (0 = all users)")
        if self.n < 50:
            raise ValueError(f"EvalConfig.n={self.n} must be >= 50 (HR@50 / NDCG@50 need 50 items)")
        if self.tokenizer not in ("rq_kmeans", "rq_vae"):
            raise ValueError(f"EvalConfig.tokenizer={self.tokenizer!r}: use 'rq_kmeans' or 'rq_vae'")
        if self.embeddings not in ("collab", "content", "fusion"):
            raise ValueError(f"EvalConfig.embeddings={self.embeddings!r}: use collab, content or fusion")
        if not 1 <= self.levels <= 8:
            raise ValueError(f"EvalConfig.levels={self.levels} must be in [1, 8]")
        if self.codebook_size < 0 or self.budget_s < 0:
            raise ValueError("EvalConfig.codebook_size and budget_s must be >= 0 (0 = auto / no cap)")
        if self.budget_clock not in CLOCKS:
            raise ValueError(f"EvalConfig.budget_clock={self.budget_clock!r}: use one of {CLOCKS}")
        if self.device not in ("auto", "cpu") and not self.device.startswith("cuda"):
            raise ValueError(f"EvalConfig.device={self.device!r}: use auto, cpu or cuda[:N]")

    def resolved_device(self) -> str:
        if self.device != "auto":
            return self.device
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"


# ---- data ----------------------------------------------------------------------------------

@dataclass
class InteractionLog:
    """Parallel arrays of an interaction log plus item titles where known."""

    name: str
    users: np.ndarray   # [N] raw user ids (str)
    items: np.ndarray   # [N] raw item ids (str)
    ts: np.ndarray      # [N] ms
    types: np.ndarray   # [N] EVENT_TYPES indices
    titles: dict[str, str] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.users)


def _engaged_keep(types: np.ndarray) -> np.ndarray:
    from ingest.contract import ENGAGED_TYPES, EVENT_TYPES

    engaged = np.array([t in ENGAGED_TYPES for t in EVENT_TYPES])
    return engaged[types]


def load_log(source: str, engaged_only: bool = True, **kw) -> InteractionLog:
    """Read ``source`` into an :class:`InteractionLog` (see the module docstring)."""
    from ingest.contract import EVENT_TYPES

    type_idx = {t: i for i, t in enumerate(EVENT_TYPES)}
    path = Path(source)
    if path.is_dir() and not (path / "u.data").is_file():
        log_ = _load_archive(path, type_idx)
    else:
        from ingest.datasets import load_dataset

        ds = load_dataset(source, **kw)
        ue = ds.user_events
        titles = {e.item_id: e.content_text() for e in ds.item_events if e.op == "upsert" and e.content_text()}
        log_ = InteractionLog(ds.name, np.array([e.user_id for e in ue], dtype=object),
                              np.array([e.item_id for e in ue], dtype=object),
                              np.array([e.ts for e in ue], dtype=np.int64),
                              np.array([type_idx[e.type] for e in ue], dtype=np.int64), titles)
    if engaged_only:
        keep = _engaged_keep(log_.types)
        log_ = InteractionLog(log_.name, log_.users[keep], log_.items[keep], log_.ts[keep], log_.types[keep],
                              log_.titles)
    if not len(log_):
        raise ValueError(f"{source!r} has no {'engaged ' if engaged_only else ''}user events to evaluate on")
    return log_


def _load_archive(path: Path, type_idx: dict[str, int]) -> InteractionLog:
    """User events (and item text) from the Parquet archive written by :mod:`ingest.archive`."""
    from ingest.archive import read_records
    from ingest.contract import ITEM_EVENTS, USER_EVENTS

    if not (path / f"topic={USER_EVENTS}").is_dir():
        raise FileNotFoundError(f"{path} is not a Parquet archive (no topic={USER_EVENTS} folder); point "
                                "--data at the archive root or at an interactions file")
    ue = sorted(read_records(path, USER_EVENTS), key=lambda e: e.ts)  # stable: partition order on ties
    if not ue:
        raise ValueError(f"archive {path} has no complete user-events files yet")
    titles = {e.item_id: e.content_text() for e in read_records(path, ITEM_EVENTS)
              if e.op == "upsert" and e.content_text()}
    return InteractionLog(f"archive:{path.name}", np.array([e.user_id for e in ue], dtype=object),
                          np.array([e.item_id for e in ue], dtype=object),
                          np.array([e.ts for e in ue], dtype=np.int64),
                          np.array([type_idx[e.type] for e in ue], dtype=np.int64), titles)


def split_log(log_: InteractionLog, max_users: int = 0):
    from models.evaluation.splits import SplitConfig, leave_one_out

    return leave_one_out(log_.users, log_.items, log_.ts, log_.types, SplitConfig(max_users=max_users))


# ---- semantic IDs ----------------------------------------------------------------------------

def semantic_ids(split, titles: dict[str, str], cfg: "EvalConfig", seed: int):
    """(item_sids [N, D], level sizes incl. the dedup level, tokenizer version) — the same
    embeddings → tokenizer → de-duplication pipeline as ``genrec train`` (:mod:`actors.train_job`)."""
    from actors.train_job import Interactions, fit_tokenizer, item_embeddings

    data = Interactions(split, [titles.get(str(i), "") for i in split.item_ids], "eval")
    # text is embedded once per process: the shared encoder caches embeddings by content hash
    emb = item_embeddings(data, cfg.embeddings, seed=seed)
    tok, sids = fit_tokenizer(emb, cfg.tokenizer, cfg.levels, cfg.codebook_size, seed)
    return np.asarray(sids, dtype=np.int64), tuple(int(x) for x in tok.sid_level_sizes), tok.version, emb


# ---- model runs ------------------------------------------------------------------------------

def _evaluate(ranker, cases, n_items: int, n: int) -> dict[str, float]:
    import torch

    from models.evaluation.metrics import evaluate_ranking, seen_rate

    t0 = time.perf_counter()
    ranked = []
    for s in range(0, len(cases), 256):
        ranked.append(torch.as_tensor(ranker.rank(cases.histories.subset(slice(s, s + 256)), n)).cpu())
    ranked = torch.cat(ranked)
    m = evaluate_ranking(ranked, cases.targets, n_items)
    m["seen_rate"] = seen_rate(ranked, cases.histories)
    m["rank_s"] = time.perf_counter() - t0
    return m


def run_popularity(split, seed: int, cfg: EvalConfig, say: Callable[[str], None]):
    from models.baselines.popularity import PopularityRanker

    t0 = time.perf_counter()
    model = PopularityRanker(split.n_items).fit(split.train_valid())
    return model, {"train_s": time.perf_counter() - t0}


def effective_config(cfg: EvalConfig) -> dict:
    """``cfg`` as a dict with the model sections as run: the best measured settings under its overrides."""
    return {**asdict(cfg), "sasrec": {**SASREC_DEFAULTS, **cfg.sasrec},
            "generator": {**GENERATOR_DEFAULTS, **cfg.generator}, "train": {**TRAIN_DEFAULTS, **cfg.train}}


def run_sasrec(split, seed: int, cfg: EvalConfig, say: Callable[[str], None]):
    from models.baselines.sasrec import SASRec, SASRecConfig

    kw = {**SASREC_DEFAULTS, **cfg.sasrec, "seed": seed}
    if cfg.budget_s and not kw.get("max_seconds"):
        kw.update(max_seconds=cfg.budget_s, budget_clock=cfg.budget_clock)
    model = SASRec(split.n_items, SASRecConfig(**kw), device=cfg.resolved_device())
    t0 = time.perf_counter()

    def on_epoch(rec):
        if "valid_ndcg10" in rec:
            say(f"  sasrec seed {seed} epoch {rec['epoch']}: loss {rec['loss']:.4f} "
                f"valid NDCG@10 {rec['valid_ndcg10']:.4f} ({rec['elapsed_s']:.0f} s)")

    model.fit(split.train(), split.valid(), on_epoch=on_epoch)
    return model, {"train_s": time.perf_counter() - t0, "best_epoch": model.best_epoch,
                   "epochs": len(model.history), "train_targets": model.train_targets}


def run_generator(split, seed: int, cfg: EvalConfig, say: Callable[[str], None], titles=None):
    from models.generator.model import GeneratorConfig
    from models.evaluation.generator_ranker import GeneratorRanker
    from models.generator.training import TrainConfig, fit_generator

    t0 = time.perf_counter()
    item_sids, sizes, version, emb = semantic_ids(split, titles or {}, cfg, seed)
    sid_s = time.perf_counter() - t0
    say(f"  generator seed {seed}: SIDs {cfg.tokenizer} over {cfg.embeddings} embeddings, level sizes "
        f"{sizes} ({sid_s:.1f} s)")
    gcfg = GeneratorConfig(level_sizes=sizes, **{**GENERATOR_DEFAULTS, **cfg.generator})
    tkw = {"device": cfg.resolved_device(), "seed": seed, "progress": False, **TRAIN_DEFAULTS, **cfg.train}
    if cfg.budget_s and not tkw.get("max_seconds"):
        tkw.update(max_seconds=cfg.budget_s, budget_clock=cfg.budget_clock)
    tcfg = TrainConfig(**tkw)
    tv = split.train_valid()  # fit_generator holds out each user's last item (= our validation item)

    def on_epoch_end(epoch, model, rep):
        if rep.val_ndcg10:
            say(f"  generator seed {seed} epoch {epoch}: loss {rep.train_loss[-1]:.4f} "
                f"valid NDCG@10 {rep.val_ndcg10[-1]:.4f} ({rep.train_s:.0f} s)")

    model, rep = fit_generator(tv.items, item_sids, gcfg, tcfg, types=tv.types, ts=tv.ts, validate=True,
                               on_epoch_end=on_epoch_end, item_emb=emb if cfg.init_codes else None)
    ranker = GeneratorRanker(model, item_sids, beam_width=max(cfg.beam_width, cfg.n))
    info = {"train_s": rep.train_s, "sid_s": sid_s, "best_epoch": rep.best_epoch, "epochs": rep.epochs_run,
            "level_sizes": list(sizes), "tokenizer_version": version, "embeddings": cfg.embeddings,
            "n_params": rep.n_params, "train_targets": rep.train_targets}
    if cfg.transition_prior and gcfg.item_head:
        ranker, chosen = with_transition_prior(ranker, split, cfg.n)
        info.update(chosen)
        say(f"  generator seed {seed}: transition prior weight {chosen['transition_weight']:g} "
            f"(valid NDCG@10 {chosen['val_ndcg10_prior']:.4f}, without {chosen['val_ndcg10_no_prior']:.4f})")
    return ranker, info


def _without_prior(ranker):
    from models.evaluation.generator_ranker import GeneratorRanker

    return GeneratorRanker(ranker.model, ranker.item_sids, beam_width=ranker.beam_width, trie=ranker.trie)


def with_transition_prior(ranker, split, n: int):
    """``ranker`` plus the last item's co-occurrence prior (training sequences only), its weight the best
    of :data:`~models.evaluation.transition_prior.WEIGHT_GRID` by NDCG@10 on the validation users.
    -> (new ranker, {transition_weight, val_ndcg10_prior, val_ndcg10_no_prior})."""
    from models.evaluation.generator_ranker import GeneratorRanker
    from models.evaluation.metrics import evaluate_ranking
    from models.evaluation.transition_prior import WEIGHT_GRID, TransitionPrior

    prior = TransitionPrior.fit(split.train().items, split.n_items)
    with_prior = GeneratorRanker(ranker.model, ranker.item_sids, beam_width=ranker.beam_width, trie=ranker.trie,
                                 transition=prior)
    valid = split.valid()
    ranked = with_prior.rank_by_weights(valid.histories, n, WEIGHT_GRID)
    ndcg = {w: evaluate_ranking(r, valid.targets, split.n_items)["ndcg@10"] for w, r in ranked.items()}
    best = max(WEIGHT_GRID, key=lambda w: (ndcg[w], -w))        # ties: the smaller weight
    with_prior.transition_weight = best
    return with_prior, {"transition_weight": best, "val_ndcg10_prior": ndcg[best], "val_ndcg10_no_prior": ndcg[0.0]}


RUNNERS = {"generator": run_generator, "sasrec": run_sasrec, "popularity": run_popularity}


# ---- the job ---------------------------------------------------------------------------------

def run_eval(cfg: EvalConfig, say: Callable[[str], None] = lambda s: None, log_: InteractionLog | None = None
             ) -> dict:
    """Run the comparison; returns ``{"config", "data", "runs", "summary", "table"}``."""
    if log_ is None:
        log_ = load_log(cfg.dataset, cfg.engaged_only, **cfg.dataset_kw)
    split = split_log(log_, cfg.max_users)
    test = split.test()
    if not len(test):
        raise ValueError(f"no user in {cfg.dataset!r} has >= 3 engaged events; nothing to evaluate")
    data = {"name": log_.name, "events": int(sum(len(s) for s in split.items)), "users": split.n_users,
            "items": split.n_items, "test_users": len(test)}
    say(f"data {log_.name}: {data['events']} events, {data['users']} users, {data['items']} items, "
        f"{data['test_users']} test users (leave-one-out, full ranking)")
    runs: dict[str, list[dict]] = {m: [] for m in cfg.models}
    for name in cfg.models:
        for seed in (cfg.seeds if name != "popularity" else cfg.seeds[:1]):
            _seed_all(seed)
            kw = {"titles": log_.titles} if name == "generator" else {}
            cpu0 = time.process_time()
            ranker, info = RUNNERS[name](split, seed, cfg, say, **kw)
            info["train_cpu_s"] = time.process_time() - cpu0   # CPU of this process, all threads
            m = _evaluate(ranker, test, split.n_items, cfg.n)
            if getattr(ranker, "transition", None) is not None:   # the same model ranked without the prior
                m0 = m if not ranker.transition_weight else _evaluate(_without_prior(ranker), test, split.n_items, cfg.n)
                m.update({"ndcg@10_no_prior": m0["ndcg@10"], "hr@10_no_prior": m0["hr@10"]})
            m.update({k: v for k, v in info.items() if isinstance(v, (int, float))})
            runs[name].append({"seed": seed, "metrics": m,
                               "info": {k: v for k, v in info.items() if not isinstance(v, (int, float))}})
            say(f"{name} seed {seed}: NDCG@10 {m['ndcg@10']:.4f} HR@10 {m['hr@10']:.4f} "
                f"train {m['train_s']:.0f} s, invalid {m['invalid_rate']:.4f}, seen {m['seen_rate']:.4f}")
    summary = summarize(runs)
    return {"config": _jsonable(effective_config(cfg)), "data": data, "runs": runs, "summary": summary,
            "table": comparison_table(summary)}


def _run_eval_job(cfg: EvalConfig, tag: str, threads: int) -> dict:
    """One evaluation in a worker process: its own torch thread count, progress lines tagged on stderr."""
    import sys

    import torch

    if threads:
        torch.set_num_threads(threads)
    return run_eval(cfg, say=lambda s: print(f"[{tag}] {s}", file=sys.stderr, flush=True))


def run_eval_many(cfgs: list[EvalConfig], workers: int = 1, threads: int = 1,
                  say: Callable[[str], None] = lambda s: None) -> list[dict]:
    """Run independent evaluations (seeds, settings) side by side in ``workers`` processes.

    Each run is a fresh ``spawn``ed interpreter (no forked torch/OpenMP state) with ``threads``
    torch threads. On a CPU-second budget (``budget_clock="cpu"``) the runs do not change
    each other's results, only how long the whole takes. ``workers <= 1`` runs them here, in order.
    Results come back in the order of ``cfgs``.
    """
    if workers <= 1 or len(cfgs) <= 1:
        return [run_eval(c, say=say) for c in cfgs]
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=min(workers, len(cfgs)), mp_context=ctx) as pool:
        futures = [pool.submit(_run_eval_job, c, f"run {i + 1}/{len(cfgs)}", threads) for i, c in enumerate(cfgs)]
        return [f.result() for f in futures]


def merge_runs(results: list[dict]) -> dict:
    """Combine :func:`run_eval` results of the same data (e.g. one per seed) into one result."""
    if not results:
        raise ValueError("merge_runs needs at least one result")
    runs: dict[str, list[dict]] = {}
    for res in results:
        for name, rs in res["runs"].items():
            if name == "popularity" and runs.get(name):
                continue                 # deterministic: one run says it all
            runs.setdefault(name, []).extend(rs)
    summary = summarize(runs)
    return {**results[0], "runs": runs, "summary": summary, "table": comparison_table(summary)}


def _seed_all(seed: int) -> None:
    import torch

    np.random.seed(seed)
    torch.manual_seed(seed)


def summarize(runs: dict[str, list[dict]]) -> dict[str, dict[str, dict[str, float]]]:
    """Per model and metric: mean, std (sample, 0 for one seed), min, max over seeds."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    for name, rs in runs.items():
        if not rs:
            continue
        keys = [k for k in rs[0]["metrics"] if all(k in r["metrics"] for r in rs)]
        out[name] = {}
        for k in keys:
            v = np.array([r["metrics"][k] for r in rs], dtype=np.float64)
            out[name][k] = {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if len(v) > 1 else 0.0,
                            "min": float(v.min()), "max": float(v.max()), "n": len(v)}
    return out


TABLE_METRICS = ("hr@1", "hr@5", "hr@10", "hr@50", "ndcg@5", "ndcg@10", "ndcg@50", "mrr", "coverage@10",
                 "invalid_rate", "train_s", "train_cpu_s")


def comparison_table(summary: dict) -> str:
    """Markdown table: one row per model, mean ± std over seeds."""
    models = list(summary)
    head = "| model | " + " | ".join(TABLE_METRICS) + " |"
    rows = [head, "|---" * (len(TABLE_METRICS) + 1) + "|"]
    for m in models:
        cells = []
        for k in TABLE_METRICS:
            s = summary[m].get(k)
            if s is None:
                cells.append("-")
            elif k in ("train_s", "train_cpu_s"):
                cells.append(f"{s['mean']:.0f}" + (f" ± {s['std']:.0f}" if s["n"] > 1 else ""))
            else:
                cells.append(f"{s['mean']:.4f}" + (f" ± {s['std']:.4f}" if s["n"] > 1 else ""))
        rows.append(f"| {m} (n={summary[m]['ndcg@10']['n']}) | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def _jsonable(x):
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (np.floating, float)):
        return None if not math.isfinite(float(x)) else float(x)
    return x


def write_json(result: dict, path: str | os.PathLike) -> Path:
    """Write the result atomically (temp file, fsync, rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "w") as f:
        json.dump(_jsonable(result), f, indent=2)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path
