"""Offline training job of the generator: data -> item embeddings -> semantic IDs -> model file.

Steps (each a function, so the demo, the CLI and benchmarks reuse them):

1. :func:`load_interactions` — a data set (:func:`ingest.datasets.load_dataset`:
   ``synthetic``, ``ml100k`` or a file) or the Parquet archive
   (:func:`ingest.archive.read_archive`), as per-user time-ordered arrays;
2. :func:`item_embeddings` — content (MiniLM sentence embeddings of the item
   text, :mod:`actors.text_encoder`), collaborative (PPMI-SVD of in-sequence
   co-occurrence, :mod:`models.sid.embeddings`) or their fusion. Collaborative
   signal is what makes SIDs useful on interaction-only data; fusion keeps
   cold items placeable by text;
3. :func:`fit_tokenizer` — RQ-KMeans (default) or RQ-VAE, then the
   de-duplication level: every item index gets a unique SID;
4. leave-one-out split (:mod:`models.evaluation.splits`), :func:`models.generator.training.train_generator`
   with early stopping on the validation item, test metrics;
5. :func:`save_generator` — one safetensors file, never pickle, written atomically (temp, fsync,
   rename): the tensors of a registry version (:func:`models.generator.checkpoint.encode`: weights,
   item SIDs, tokenizer bytes) and, in the file's header metadata, its JSON config (generator config,
   item ids, tokenizer version) and the metrics. One file rather than a folder: it is replaced in one
   atomic rename, ``--out`` stays a file path, and any safetensors reader opens it. :func:`load_generator`
   refuses a corrupt, foreign or old pickle-format file with :class:`GeneratorFileError` (naming the
   fix: retrain), never a raw traceback, and never unpickles anything.

Training runs in this process or through Ray Train (``ray_train``: :mod:`actors.ray_train`,
``TorchTrainer`` with one worker here and data-parallel GPU workers on a cluster — the path
``genrec train`` takes, the same one the aligner's rounds take).
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from models.serialization import plain_json
from models.generator.model import GenerativeRecommender, GeneratorConfig
from models.generator.training import TrainConfig, TrainReport

log = logging.getLogger(__name__)

FILE_FORMAT = "genrec-generator-file"
"""The ``format`` tag in a model file's safetensors metadata (beside ``format_version``, ``config`` — the
registry's JSON config of :mod:`models.generator.checkpoint` — and ``metrics``, JSON)."""
FILE_FORMAT_VERSION = 1


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
    out: str = "generator.safetensors"
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
    init_codes: bool = True      # start code embeddings from the item embeddings (models.generator.code_init)
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

    split: object                 # models.evaluation.splits.LeaveOneOut
    item_text: list[str]          # [n_items] content text ('' when unknown)
    name: str = ""

    @property
    def n_items(self) -> int:
        return self.split.n_items


def interactions_from_records(name: str, user_events, item_events, max_events: int = 0) -> Interactions:
    """Engaged events (one per consumption) as a leave-one-out split named ``name``."""
    from ingest.contract import ENGAGED_TYPES, EVENT_TYPES
    from models.evaluation.splits import leave_one_out

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
        return interactions_from_records(f"archive:{cfg.archive}", user_events, item_events, cfg.max_events)
    from ingest.datasets import load_dataset

    if cfg.data == "synthetic-small":
        from ingest.synthetic import SyntheticWorld, WorldConfig

        ds = SyntheticWorld(WorldConfig.small(seed=cfg.seed)).dataset()
    else:
        ds = load_dataset(cfg.data)
    return interactions_from_records(ds.name, ds.user_events, ds.item_events, cfg.max_events)


# ---- 2. embeddings ----------------------------------------------------------------------------

def item_embeddings(data: Interactions, mode: str = "fusion", collab_dim: int = 64, seed: int = 0,
                    encoder=None, text_weight: float = 0.5) -> np.ndarray:
    """[n_items, E] embeddings of every item index: MiniLM text, co-occurrence PPMI-SVD
    (:mod:`models.sid.embeddings`, training sequences only), or their fusion."""
    from models.sid.embeddings import CooccurrenceConfig, collaborative_embeddings, fuse

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
    from models.sid.dedup import assign_unique

    if kind == "rq_kmeans":
        from models.sid.rq_kmeans import RQKMeans, RQKMeansConfig

        tok = RQKMeans(RQKMeansConfig(levels=levels, codebook_size=codebook_size, seed=seed)).fit(emb)
    else:
        from models.sid.rq_vae import RQVAE, RQVAEConfig

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
        from models.evaluation.generator_ranker import GeneratorRanker

        return GeneratorRanker(self.model, self.item_sids, **kw)


def save_generator(path: str | os.PathLike, model: GenerativeRecommender, item_ids, item_sids: np.ndarray,
                   tokenizer_version: str, metrics: dict, tokenizer_bytes: bytes = b"") -> Path:
    """Write a model file atomically (temp file in the same folder, fsync, rename): one safetensors file
    whose tensors are a registry version's weights (:func:`models.generator.checkpoint.encode`) and whose
    header metadata holds the version's JSON config and the metrics (see :data:`FILE_FORMAT`)."""
    from models.generator.checkpoint import GeneratorBundle, encode
    from safetensors.torch import load as st_load, save as st_save

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    bundle = GeneratorBundle(model, None, tuple(str(i) for i in item_ids),
                             np.asarray(item_sids, dtype=np.int64).reshape(len(item_ids), -1),
                             str(tokenizer_version), bytes(tokenizer_bytes))
    weights, config = encode(bundle)
    blob = st_save(st_load(weights), metadata={"format": FILE_FORMAT, "format_version": str(FILE_FORMAT_VERSION),
                                               "config": config.decode(),
                                               "metrics": json.dumps(plain_json(metrics), sort_keys=True)})
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(blob)
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


def _header_metadata(data: bytes, path: Path) -> dict:
    """The ``__metadata__`` of a safetensors file's JSON header (parsed here: no tensor is read)."""
    if len(data) < 8:
        raise GeneratorFileError(f"model file {path} is corrupt or not a genrec generator ({len(data)} bytes); "
                                 "retrain it with `genrec train`")
    n = int.from_bytes(data[:8], "little")
    try:
        if n > len(data) - 8:
            raise ValueError(f"header of {n} bytes in a file of {len(data)}")
        header = json.loads(data[8:8 + n].decode())
        if not isinstance(header, dict):
            raise ValueError("header is not a JSON object")
    except (ValueError, UnicodeDecodeError) as e:
        raise GeneratorFileError(f"model file {path} is corrupt or not a genrec generator ({str(e)[:200]}); "
                                 "retrain it with `genrec train`") from None
    meta = header.get("__metadata__") or {}
    return meta if isinstance(meta, dict) else {}


def load_generator(path: str | os.PathLike, device: str | torch.device = "cpu") -> LoadedGenerator:
    """Load a model file written by :func:`save_generator`; clear :class:`GeneratorFileError` otherwise.

    Reads tensors and JSON only. A pickle file (the ``torch.save`` format of older genrec versions, or
    anything else pickled) is refused without being unpickled: unpickling can run code."""
    from models.generator.checkpoint import CheckpointError, decode

    path = Path(path)
    if not path.is_file():
        raise GeneratorFileError(f"model file {path} does not exist; train one with `genrec train --out {path}`")
    data = path.read_bytes()
    if data[:4] == b"PK\x03\x04" or data[:1] == b"\x80":     # a zip (torch.save) or a raw pickle
        raise GeneratorFileError(
            f"{path} is a pickle (torch.save) file, not a genrec generator file in the safetensors format: "
            "genrec no longer loads pickled models (unpickling can run code). Retrain it with "
            f"`genrec train --out {path.with_suffix('.safetensors')}`")
    meta = _header_metadata(data, path)
    if meta.get("format") != FILE_FORMAT:
        raise GeneratorFileError(f"{path} is not a genrec generator file (format {meta.get('format')!r}); "
                                 "train one with `genrec train --out FILE.safetensors`")
    if meta.get("format_version") != str(FILE_FORMAT_VERSION):
        raise GeneratorFileError(f"{path} has format_version {meta.get('format_version')}, this code reads "
                                 f"{FILE_FORMAT_VERSION}; retrain or use a matching genrec version")
    try:
        bundle = decode(data, str(meta.get("config", "")).encode(), "cpu")
        metrics = json.loads(meta.get("metrics") or "{}")
    except CheckpointError as e:
        msg = str(e)
        what = "has an unreadable format_version" if "format_version" in msg else \
            "is corrupt" if "not a valid safetensors" in msg else "is inconsistent"
        raise GeneratorFileError(f"model file {path} {what} ({msg[:300]}); retrain it with `genrec train`") from None
    except json.JSONDecodeError as e:
        raise GeneratorFileError(f"model file {path} is inconsistent (metrics: {e}); retrain it with "
                                 "`genrec train`") from None
    model = bundle.model.to(device).eval()
    sids = bundle.item_sids if bundle.item_sids is not None else np.zeros((0, model.cfg.sid_len), np.int64)
    return LoadedGenerator(model, model.cfg, list(bundle.item_ids), sids, bundle.tokenizer_version,
                           bundle.tokenizer, metrics if isinstance(metrics, dict) else {})


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
    from models.evaluation.generator_ranker import GeneratorRanker
    from models.evaluation.metrics import hit_rate, ndcg, target_ranks

    cases = data.split.test()
    if max_users and len(cases) > max_users:
        cases = cases.subset(np.arange(max_users))
    ranker = GeneratorRanker(model, item_sids, beam_width=beam)
    ranked = ranker.rank(cases.histories, 10)
    r = target_ranks(ranked, cases.targets)
    invalid = float(((ranked < 0) | (ranked >= data.n_items)).float().mean()) if len(ranked) else 0.0
    return {"test_users": int(len(cases)), "ndcg10": ndcg(r, 10), "hr10": hit_rate(r, 10),
            "invalid_rate": invalid}


def _generator_worker(worker, model: GenerativeRecommender, payload: dict) -> dict:
    """One Ray Train worker of ``genrec train`` (:func:`actors.ray_train.run_ray_training`'s ``worker_fn``):
    :func:`models.generator.training.train_generator` on its shard of the examples, its steps through DDP
    when there are several workers, rank 0 validating; progress reported to Ray Train every epoch."""
    from models.generator.training import AnchorStep, DataParallel, train_generator

    tcfg = replace(payload["train_cfg"], device=str(worker.device), progress=False)
    step = None
    if worker.world_size > 1:   # an MoE decoder leaves unrouted experts without gradients
        step = worker.wrap(AnchorStep(model), find_unused_parameters=bool(model.cfg.moe_experts))

    def on_epoch(epoch: int, report: TrainReport) -> None:   # Ray Train logs each report on the driver's console
        val = report.val_ndcg10[-1] if report.val_ndcg10 else float("nan")
        worker.report({"epoch": epoch, "steps": report.steps, "train_loss": report.train_loss[-1],
                       "val_ndcg10": val, "train_s": report.train_s})

    dp = DataParallel(worker.rank, worker.world_size, step, worker.all_max, on_epoch)
    _, report = train_generator(payload["train"], payload["valid"], payload["item_sids"], model.cfg, tcfg,
                                model=model, parallel=dp)
    return {"report": report.as_dict()}


def train_with_ray(train, valid, item_sids: np.ndarray, gen_cfg: GeneratorConfig, tcfg: TrainConfig,
                   model: GenerativeRecommender | None, ray_cfg) -> tuple[GenerativeRecommender, TrainReport]:
    """:func:`models.generator.training.train_generator` through Ray Train (``ray_cfg``:
    :class:`actors.ray_train.RayTrainConfig`); the trained model comes back from rank 0's safetensors
    checkpoint. ``model`` None: a random one, initialised here as in-process training would."""
    import functools

    from actors.ray_train import run_ray_training

    if model is None:
        torch.manual_seed(tcfg.seed)
        model = GenerativeRecommender(gen_cfg)
    payload = {"train": train, "valid": valid, "item_sids": np.asarray(item_sids, dtype=np.int64),
               "train_cfg": tcfg}
    res = run_ray_training(_generator_worker, functools.partial(GenerativeRecommender, gen_cfg), model.cpu(),
                           payload, ray_cfg, name="train")
    out = GenerativeRecommender(gen_cfg)
    out.load_state_dict(res.state)
    return out.eval(), TrainReport(**res.metrics["report"])


def run_train_job(cfg: TrainJobConfig, *, data: Interactions | None = None, tokenizer=None,
                  item_sids: np.ndarray | None = None, item_emb: np.ndarray | None = None, encoder=None,
                  say=print, ray_train=None) -> TrainJobResult:
    """The whole job (see module docstring). Pieces already at hand (data, a fitted
    tokenizer with its ``item_sids``, ``item_emb`` [n_items, E] the item embeddings the
    SIDs were fitted on, e.g. the live catalog's) can be passed in and are not recomputed.

    ``ray_train`` (:class:`actors.ray_train.RayTrainConfig`): train through Ray Train with its workers
    (what ``genrec train`` does by default); None trains in this process (with a per-epoch partial
    model file at ``cfg.out``; through Ray Train the epochs are reported to Ray Train instead).

    With ``cfg.init_codes`` the code embeddings always start from item embeddings: SIDs
    passed in without ``item_emb`` get ``cfg.embeddings`` computed here. Started at random,
    the generator learns little more than the popularity prior in a CPU budget and gives
    every user nearly the same items.
    """
    from models.sid.tokenizer import tokenizer_to_bytes

    t0 = time.time()
    torch.manual_seed(cfg.seed)
    data = data if data is not None else load_interactions(cfg)
    say(f"data: {data.name}: {data.split.n_users} users, {data.n_items} items, "
        f"{sum(len(s) for s in data.split.items)} events")
    emb = None if item_emb is None else np.asarray(item_emb, dtype=np.float32)
    if emb is not None and (emb.ndim != 2 or len(emb) != data.n_items):
        raise ValueError(f"item_emb has shape {emb.shape}; it must be [n_items={data.n_items}, E], one row "
                         "per item index of the data (data.split.item_ids order)")
    if tokenizer is None or item_sids is None:
        if emb is None:
            emb = item_embeddings(data, cfg.embeddings, cfg.collab_dim, cfg.seed, encoder=encoder)
        tokenizer, item_sids = fit_tokenizer(emb, cfg.tokenizer, cfg.levels, cfg.codebook_size, cfg.seed)
    elif cfg.init_codes and emb is None:
        emb = item_embeddings(data, cfg.embeddings, cfg.collab_dim, cfg.seed, encoder=encoder)
    level_sizes = tuple(int(x) for x in tokenizer.sid_level_sizes)
    say(f"tokenizer: {cfg.tokenizer if tokenizer is None else type(tokenizer).__name__} "
        f"{tokenizer.version}, SID level sizes {level_sizes} ({time.time() - t0:.1f}s)")
    if cfg.init_codes:
        say(f"code embeddings start from the {'given' if item_emb is not None else cfg.embeddings} item embeddings")
    gen_kw = {k: v for k, v in cfg.generator.items() if k != "level_sizes"}
    gcfg = GeneratorConfig(level_sizes=level_sizes, **gen_kw)
    tcfg = cfg.train
    if tcfg.device == "cpu" and torch.cuda.is_available():
        tcfg = replace(tcfg, device="cuda")
    from models.generator.training import fit_generator

    def checkpoint(epoch, model, report):
        val = f", valid NDCG@10 {report.val_ndcg10[-1]:.4f}" if report.val_ndcg10 else ""
        say(f"  epoch {epoch}: loss {report.train_loss[-1]:.4f}{val} ({report.train_s:.0f}s)")
        save_generator(cfg.out, model, data.split.item_ids, item_sids, tokenizer.version,
                       {"epoch": epoch, "partial": True, **report.as_dict()}, tokenizer_to_bytes(tokenizer))

    tv = data.split.train_valid()
    if ray_train is None:
        model, report = fit_generator(tv.items, item_sids, gcfg, tcfg, types=tv.types, ts=tv.ts,
                                      validate=True, on_epoch_end=checkpoint,
                                      item_emb=emb if cfg.init_codes else None)
    else:
        from models.generator.training import fit_inputs

        say(f"training through Ray Train: {ray_train.num_workers} worker(s)"
            f"{', a GPU each' if ray_train.use_gpu else ''}")
        train, valid, init = fit_inputs(tv.items, item_sids, gcfg, tcfg, types=tv.types, ts=tv.ts, validate=True,
                                        item_emb=emb if cfg.init_codes else None)
        model, report = train_with_ray(train, valid, item_sids, gcfg, tcfg, init, ray_train)
        for e, loss in enumerate(report.train_loss):
            val = f", valid NDCG@10 {report.val_ndcg10[e]:.4f}" if e < len(report.val_ndcg10) else ""
            say(f"  epoch {e + 1}: loss {loss:.4f}{val}")
    model.to("cpu")
    test = evaluate_test(model, data, item_sids, beam=cfg.eval_beam, max_users=cfg.eval_max_users)
    metrics = {"data": data.name, "train": report.as_dict(), "test": test,
               "tokenizer": cfg.tokenizer, "embeddings": cfg.embeddings, "level_sizes": list(level_sizes),
               "trainer": "in-process" if ray_train is None else
               f"ray-train x{ray_train.num_workers}{' gpu' if ray_train.use_gpu else ''}"}
    path = save_generator(cfg.out, model, data.split.item_ids, item_sids, tokenizer.version, metrics,
                          tokenizer_to_bytes(tokenizer))
    say(f"trained {report.epochs_run} epochs ({report.steps} steps, best epoch {report.best_epoch}) in "
        f"{report.train_s:.0f}s; test NDCG@10 {test['ndcg10']:.4f} HR@10 {test['hr10']:.4f} "
        f"invalid {test['invalid_rate']:.3f}; saved {path}")
    return TrainJobResult(path, model, report, metrics, item_sids, data, tokenizer)
