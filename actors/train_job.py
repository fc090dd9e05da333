"""Offline training job of the generator: data -> item embeddings -> semantic IDs -> model file.

Steps (each a function, so the demo, the CLI and benchmarks reuse them):

1. :func:`load_interactions` — a data set (:func:`ingest.datasets.load_dataset`:
   ``synthetic``, ``ml100k`` or a file) or the Parquet archive
   (:func:`ingest.archive.read_archive`), as per-user time-ordered arrays;
2. :func:`item_embeddings` — content (MiniLM sentence embeddings of the item
   text, :mod:`actors.text_encoder`), collaborative (PPMI-SVD of in-sequence
   co-occurrence, :mod:`models.embeddings`) or their fusion. Collaborative
   signal is what makes SIDs useful on interaction-only data; fusion keeps
   cold items placeable by text;
3. :func:`fit_tokenizer` — RQ-KMeans (default) or RQ-VAE, then the
   de-duplication level: every item index gets a unique SID;
4. leave-one-out split (:mod:`models.splits`), :func:`models.training.train_generator`
   with early stopping on the validation item, test metrics;
5. :func:`save_generator` — one file (``torch.save`` of plain types, loaded with
   ``weights_only=True``), written atomically (temp, fsync, rename), carrying
   the generator config, weights, item ids and SIDs, the tokenizer (bytes and
   version) and the metrics. :func:`load_generator` refuses a corrupt or
   foreign file with :class:`GeneratorFileError`, never a raw traceback.
"""

from __future__ import annotations

import io
import logging
import os
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from models.generator import GenerativeRecommender, GeneratorConfig
from models.training import TrainConfig, TrainReport

log = logging.getLogger(__name__)

FORMAT = "genrec-generator"
FORMAT_VERSION = 1


class GeneratorFileError(ValueError):
    """A model file that cannot be used (missing, truncated, corrupt, or not a generator)."""


# ---- configuration ---------------------------------------------------------------------------

@dataclass(frozen=True)
class TrainJobConfig:
    """What ``genrec train`` does.

    ``data``: ``synthetic`` | ``ml100k`` | a file path (see ``ingest.datasets``);
    ``archive``: a Parquet archive root instead (offline training reads the archive).
    ``embeddings``: ``content`` | ``collab`` | ``fusion``; ``tokenizer``: ``rq_kmeans`` | ``rq_vae``.
    ``generator``: overrides of :class:`GeneratorConfig` fields (level_sizes comes from the tokenizer).
    """

    data: str = "synthetic"
    archive: str = ""
    out: str = "generator.pt"
    embeddings: str = "fusion"
    tokenizer: str = "rq_kmeans"
    levels: int = 3
    codebook_size: int = 0
    collab_dim: int = 64
    max_events: int = 0          # 0 = all user events (quick runs: the first N)
    generator: dict = field(default_factory=dict)
    train: TrainConfig = TrainConfig()
    eval_beam: int = 20
    eval_max_users: int = 0      # test users evaluated after training (0 = all)
    init_codes: bool = True      # start code embeddings from the item embeddings (models.code_init)
    seed: int = 0

    def __post_init__(self) -> None:
        if self.embeddings not in ("content", "collab", "fusion"):
            raise ValueError(f"embeddings={self.embeddings!r}: use 'content', 'collab' or 'fusion'")
        if self.tokenizer not in ("rq_kmeans", "rq_vae"):
            raise ValueError(f"tokenizer={self.tokenizer!r}: use 'rq_kmeans' or 'rq_vae'")
        if self.levels < 1 or self.collab_dim < 2 or self.max_events < 0:
            raise ValueError("levels >= 1, collab_dim >= 2 and max_events >= 0 are required")
        bad = set(self.generator) - set(GeneratorConfig.__dataclass_fields__) - {"level_sizes"}
        if bad:
            raise ValueError(f"unknown generator settings {sorted(bad)}; "
                             f"known: {sorted(GeneratorConfig.__dataclass_fields__)}")


# ---- 1. data ---------------------------------------------------------------------------------

@dataclass
class Interactions:
    """Per-user time-ordered arrays over contiguous item indices, plus item text."""

    split: object                 # models.splits.LeaveOneOut
    item_text: list[str]          # [n_items] content text ('' when unknown)
    name: str = ""

    @property
    def n_items(self) -> int:
        return self.split.n_items


def _from_records(name: str, user_events, item_events, max_events: int = 0) -> Interactions:
    from ingest.contract import ENGAGED_TYPES, EVENT_TYPES
    from models.splits import leave_one_out

    # Positive feedback only (clicks, likes, watches, ratings...): what sessions and the
    # leave-one-out targets are made of (impressions and skips are not recommendations to learn).
    # Several engagements with one item in a row (click, then watch, then like) are one consumption:
    # keep the first, so that "the next item" is a different item.
    ue, last = [], {}
    for e in user_events:
        if e.type in ENGAGED_TYPES and last.get(e.user_id) != e.item_id:
            ue.append(e)
            last[e.user_id] = e.item_id
    if max_events:
        ue = ue[:max_events]
    if not ue:
        raise ValueError(f"data set {name!r} has no user events to train on")
    tindex = {t: i for i, t in enumerate(EVENT_TYPES)}
    users = np.array([e.user_id for e in ue], dtype=object)
    items = np.array([e.item_id for e in ue], dtype=object)
    ts = np.array([e.ts for e in ue], dtype=np.int64)
    types = np.array([tindex[e.type] for e in ue], dtype=np.int64)
    split = leave_one_out(users, items, ts, types)
    text_of = {}
    for ie in item_events:
        if ie.op == "upsert":
            text_of[ie.item_id] = ie.content_text()
    return Interactions(split, [text_of.get(str(i), "") for i in split.item_ids], name)


def load_interactions(cfg: TrainJobConfig) -> Interactions:
    """The job's data as a leave-one-out split (from the archive or a data set)."""
    if cfg.archive:
        try:
            from ingest.archive import read_archive
        except ImportError as e:
            raise ValueError("this checkout has no Parquet archive reader (ingest.archive); "
                             "train from a data set with --data instead") from e
        from ingest.contract import ITEM_EVENTS, USER_EVENTS

        user_events = read_archive(cfg.archive, USER_EVENTS)
        item_events = read_archive(cfg.archive, ITEM_EVENTS)
        user_events = sorted(user_events, key=lambda e: e.ts)
        return _from_records(f"archive:{cfg.archive}", user_events, item_events, cfg.max_events)
    from ingest.datasets import load_dataset

    if cfg.data == "synthetic-small":
        from ingest.synthetic import SyntheticWorld, WorldConfig

        ds = SyntheticWorld(WorldConfig.small(seed=cfg.seed)).dataset()
    else:
        ds = load_dataset(cfg.data)
    return _from_records(ds.name, ds.user_events, ds.item_events, cfg.max_events)


# ---- 2. embeddings ----------------------------------------------------------------------------

def item_embeddings(data: Interactions, mode: str = "fusion", collab_dim: int = 64, seed: int = 0,
                    encoder=None, text_weight: float = 0.5) -> np.ndarray:
    """[n_items, E] embeddings of every item index: MiniLM text, co-occurrence PPMI-SVD
    (:mod:`models.embeddings`, training sequences only), or their fusion."""
    from models.embeddings import CooccurrenceConfig, collaborative_embeddings, fuse

    text = collab = None
    has_text = any(t for t in data.item_text)
    if mode == "content" and not has_text:
        raise ValueError("embeddings='content' but the data set has no item text; use 'collab' or 'fusion'")
    if mode in ("content", "fusion") and has_text:
        if encoder is None:
            from actors.text_encoder import shared_encoder

            encoder = shared_encoder()
        text = encoder.encode([t or f"item {i}" for i, t in zip(data.split.item_ids, data.item_text)])
    if mode in ("collab", "fusion"):
        collab, _ = collaborative_embeddings(data.split.train().items, data.n_items,
                                             CooccurrenceConfig(dim=collab_dim, seed=seed))
    emb = fuse(text, collab, text_weight=text_weight)
    # Items with no signal at all (zero row) get a tiny random direction so k-means can place them.
    zero = np.linalg.norm(emb, axis=1) < 1e-9
    if zero.any():
        emb[zero] = np.random.default_rng(seed).standard_normal((int(zero.sum()), emb.shape[1])) * 1e-3
    return emb.astype(np.float32)


# ---- 3. tokenizer ----------------------------------------------------------------------------

def fit_tokenizer(emb: np.ndarray, kind: str = "rq_kmeans", levels: int = 3, codebook_size: int = 0,
                  seed: int = 0):
    """Fit a tokenizer and give every item a unique SID. Returns (tokenizer, sids [N, L+1])."""
    from models.sid_dedup import assign_unique

    if kind == "rq_kmeans":
        from models.rq_kmeans import RQKMeans, RQKMeansConfig

        tok = RQKMeans(RQKMeansConfig(levels=levels, codebook_size=codebook_size, seed=seed)).fit(emb)
    else:
        from models.rq_vae import RQVAE, RQVAEConfig

        kw = {"levels": levels, "seed": seed}
        if codebook_size:
            kw["codebook_size"] = codebook_size
        tok = RQVAE(RQVAEConfig(**kw)).fit(emb)
    sids = assign_unique(tok.encode(emb))
    dedup = max(int(tok.dedup_size), int(sids[:, -1].max()) + 1)
    tok.dedup_size = dedup
    return tok, sids


# ---- 5. model file ---------------------------------------------------------------------------

@dataclass
class LoadedGenerator:
    model: GenerativeRecommender
    config: GeneratorConfig
    item_ids: list[str]
    item_sids: np.ndarray          # [n_items, D]
    tokenizer_version: str
    tokenizer_bytes: bytes
    metrics: dict

    def ranker(self, **kw):
        from models.generator_ranker import GeneratorRanker

        return GeneratorRanker(self.model, self.item_sids, **kw)


def save_generator(path: str | os.PathLike, model: GenerativeRecommender, item_ids, item_sids: np.ndarray,
                   tokenizer_version: str, metrics: dict, tokenizer_bytes: bytes = b"") -> Path:
    """Write a model file atomically (temp file in the same folder, fsync, rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": FORMAT, "format_version": FORMAT_VERSION,
        "config": model.cfg.to_dict(),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "item_ids": [str(i) for i in item_ids],
        "item_sids": torch.as_tensor(np.asarray(item_sids, dtype=np.int64)),
        "tokenizer_version": str(tokenizer_version),
        "tokenizer": torch.frombuffer(bytearray(tokenizer_bytes), dtype=torch.uint8) if tokenizer_bytes
        else torch.zeros(0, dtype=torch.uint8),
        "metrics": _plain(metrics),
    }
    buf = io.BytesIO()
    torch.save(payload, buf)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(buf.getvalue())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    dfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)
    return path


def _plain(x):
    """Metrics as plain JSON-like values (what weights_only loading accepts)."""
    if isinstance(x, dict):
        return {str(k): _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    if isinstance(x, (np.floating, np.integer)):
        return x.item()
    if isinstance(x, (int, float, str, bool)) or x is None:
        return x
    return str(x)


def load_generator(path: str | os.PathLike, device: str | torch.device = "cpu") -> LoadedGenerator:
    """Load a model file written by :func:`save_generator`; clear :class:`GeneratorFileError` otherwise."""
    path = Path(path)
    if not path.is_file():
        raise GeneratorFileError(f"model file {path} does not exist; train one with `genrec train --out {path}`")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated zip, random bytes, pickle of foreign objects...
        raise GeneratorFileError(f"model file {path} is corrupt or not a genrec generator "
                                 f"({type(e).__name__}: {str(e)[:200]}); retrain it with `genrec train`") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise GeneratorFileError(f"{path} is not a genrec generator file (format "
                                 f"{payload.get('format') if isinstance(payload, dict) else type(payload).__name__!r})")
    if payload.get("format_version") != FORMAT_VERSION:
        raise GeneratorFileError(f"{path} has format_version {payload.get('format_version')}, this code reads "
                                 f"{FORMAT_VERSION}; retrain or use a matching genrec version")
    try:
        cfg = GeneratorConfig.from_dict(payload["config"])
        model = GenerativeRecommender(cfg)
        model.load_state_dict(payload["state_dict"])
        item_sids = payload["item_sids"].numpy().astype(np.int64)
        item_ids = list(payload["item_ids"])
        if item_sids.shape != (len(item_ids), cfg.sid_len):
            raise ValueError(f"item_sids shape {item_sids.shape} does not match {len(item_ids)} items x D={cfg.sid_len}")
    except (KeyError, ValueError, RuntimeError, TypeError) as e:
        raise GeneratorFileError(f"model file {path} is inconsistent ({type(e).__name__}: {str(e)[:300]}); "
                                 "retrain it with `genrec train`") from None
    model.to(device).eval()
    return LoadedGenerator(model, cfg, item_ids, item_sids, str(payload.get("tokenizer_version", "")),
                           bytes(payload["tokenizer"].numpy().tobytes()), dict(payload.get("metrics", {})))


# ---- 4. the job ------------------------------------------------------------------------------

@dataclass
class TrainJobResult:
    path: Path
    model: GenerativeRecommender
    report: TrainReport
    metrics: dict
    item_sids: np.ndarray
    data: Interactions
    tokenizer: object


def evaluate_test(model: GenerativeRecommender, data: Interactions, item_sids: np.ndarray,
                  beam: int = 20, max_users: int = 0) -> dict:
    """Leave-one-out test metrics of the generator (full ranking over all items, seen excluded)."""
    from models.generator_ranker import GeneratorRanker
    from models.metrics import hit_rate, ndcg, target_ranks

    cases = data.split.test()
    if max_users and len(cases) > max_users:
        cases = cases.subset(np.arange(max_users))
    ranker = GeneratorRanker(model, item_sids, beam_width=beam)
    ranked = ranker.rank(cases.histories, 10)
    r = target_ranks(ranked, cases.targets)
    invalid = float(((ranked < 0) | (ranked >= data.n_items)).float().mean()) if len(ranked) else 0.0
    return {"test_users": int(len(cases)), "ndcg10": ndcg(r, 10), "hr10": hit_rate(r, 10),
            "invalid_rate": invalid}


def run_train_job(cfg: TrainJobConfig, *, data: Interactions | None = None, tokenizer=None,
                  item_sids: np.ndarray | None = None, encoder=None, say=print) -> TrainJobResult:
    """The whole job (see module docstring). Pieces already at hand (data, a fitted
    tokenizer with its ``item_sids``) can be passed in and are not recomputed."""
    from models.tokenizer import tokenizer_to_bytes

    t0 = time.time()
    torch.manual_seed(cfg.seed)
    data = data if data is not None else load_interactions(cfg)
    say(f"data: {data.name}: {data.split.n_users} users, {data.n_items} items, "
        f"{sum(len(s) for s in data.split.items)} events")
    emb = None
    if tokenizer is None or item_sids is None:
        emb = item_embeddings(data, cfg.embeddings, cfg.collab_dim, cfg.seed, encoder=encoder)
        tokenizer, item_sids = fit_tokenizer(emb, cfg.tokenizer, cfg.levels, cfg.codebook_size, cfg.seed)
    level_sizes = tuple(int(x) for x in tokenizer.sid_level_sizes)
    say(f"tokenizer: {cfg.tokenizer if tokenizer is None else type(tokenizer).__name__} "
        f"{tokenizer.version}, SID level sizes {level_sizes} ({time.time() - t0:.1f}s)")
    gen_kw = {k: v for k, v in cfg.generator.items() if k != "level_sizes"}
    gcfg = GeneratorConfig(level_sizes=level_sizes, **gen_kw)
    tcfg = cfg.train
    if tcfg.device == "cpu" and torch.cuda.is_available():
        tcfg = replace(tcfg, device="cuda")
    from models.training import fit_generator

    def checkpoint(epoch, model, report):
        val = f", valid NDCG@10 {report.val_ndcg10[-1]:.4f}" if report.val_ndcg10 else ""
        say(f"  epoch {epoch}: loss {report.train_loss[-1]:.4f}{val} ({report.train_s:.0f}s)")
        save_generator(cfg.out, model, data.split.item_ids, item_sids, tokenizer.version,
                       {"epoch": epoch, "partial": True, **report.as_dict()}, tokenizer_to_bytes(tokenizer))

    tv = data.split.train_valid()
    model, report = fit_generator(tv.items, item_sids, gcfg, tcfg, types=tv.types, ts=tv.ts,
                                  validate=True, on_epoch_end=checkpoint,
                                  item_emb=emb if cfg.init_codes else None)
    model.to("cpu")
    test = evaluate_test(model, data, item_sids, beam=cfg.eval_beam, max_users=cfg.eval_max_users)
    metrics = {"data": data.name, "train": report.as_dict(), "test": test,
               "tokenizer": cfg.tokenizer, "embeddings": cfg.embeddings, "level_sizes": list(level_sizes)}
    path = save_generator(cfg.out, model, data.split.item_ids, item_sids, tokenizer.version, metrics,
                          tokenizer_to_bytes(tokenizer))
    say(f"trained {report.epochs_run} epochs ({report.steps} steps, best epoch {report.best_epoch}) in "
        f"{report.train_s:.0f}s; test NDCG@10 {test['ndcg10']:.4f} HR@10 {test['hr10']:.4f} "
        f"invalid {test['invalid_rate']:.3f}; saved {path}")
    return TrainJobResult(path, model, report, metrics, item_sids, data, tokenizer)
