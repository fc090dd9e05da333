"""The recommender backend: history source + live catalog + model versions + decoding.

The Serve deployment (:mod:`serving.recommender`) only batches, times and
reports; everything it asks of the model side goes through the small
:class:`RecommenderBackend` protocol, so the same deployment serves the real
generator, and the benchmarks can call the very same backend in-process to
measure what HTTP + Serve add.

:class:`GeneratorBackend` is the real one: per request it reads the user's
fresh history, maps it onto the live catalog (:class:`serving.live_state.LiveCatalog`),
encodes it once and generates a session of ``k`` items with the arm's decode
settings under the trie constraint (never an invalid ID), without repeats, and
without already-seen items when asked. Several model versions are loaded side
by side; each request names the one its experiment arm chose.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Protocol, Sequence

import numpy as np

from serving.live_state import HistorySource, LiveCatalog


@dataclass(frozen=True)
class RecRequest:
    """One recommendation to compute (already resolved to a model version and decode settings)."""

    user_id: str
    k: int
    model_version: str
    decode: dict = field(default_factory=dict, hash=False)
    exclude_seen: bool = True


@dataclass
class RecResult:
    """A generated session, or ``error`` (then nothing was recommended)."""

    items: list[str] = field(default_factory=list)
    sids: list[list[int]] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)
    stats: dict = field(default_factory=dict)
    error: str | None = None


EMPTY_CATALOG = "the catalog is empty: no item can be recommended yet"


class RecommenderBackend(Protocol):
    """What a recommender replica needs from the model side."""

    def model_versions(self) -> list[str]: ...

    def recommend(self, requests: Sequence[RecRequest]) -> list[RecResult]: ...

    def status(self) -> dict: ...

    def is_recommendable(self, item_id: str) -> bool: ...


@dataclass(frozen=True)
class ModelSpec:
    """One model version: a saved checkpoint (``path``: ``{"config", "state_dict"}``) or a seeded init.

    A seeded init (no ``path``) is an untrained model with the given
    ``config`` — used by tests and by benchmarks that measure speed only.
    """

    version: str
    config: dict = field(default_factory=dict, hash=False)
    path: str | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.version or len(self.version) > 64 or any(c.isspace() for c in self.version):
            raise ValueError(f"ModelSpec.version={self.version!r} must be 1-64 characters without spaces")
        if self.path is None and not self.config:
            raise ValueError(f"ModelSpec {self.version!r}: give a checkpoint path or a generator config")


def save_model(model, path: str, mtp_heads=None) -> None:
    """Write a generator checkpoint the backend can load (``{"config": dict, "state_dict": ...}``).

    ``mtp_heads`` (a trained :class:`models.mtp.MTPHeads`) are stored beside the generator under
    ``"mtp"``; a served version that has them can decode in the MTP and speculative modes.
    """
    import dataclasses

    import torch

    blob = {"config": model.cfg.to_dict(), "state_dict": model.state_dict()}
    if mtp_heads is not None:
        blob["mtp"] = {"config": dataclasses.asdict(mtp_heads.cfg), "state_dict": mtp_heads.state_dict()}
    torch.save(blob, path)


def load_mtp_heads(spec: ModelSpec, device: str):
    """The :class:`models.mtp.MTPHeads` saved with a checkpoint (``save_model(..., mtp_heads=...)``), or None."""
    import torch

    if not spec.path:
        return None
    blob = torch.load(spec.path, map_location="cpu", weights_only=False)
    if not blob.get("mtp"):
        return None
    from models.mtp import MTPConfig, MTPHeads

    heads = MTPHeads(MTPConfig(**blob["mtp"]["config"]))
    heads.load_state_dict(blob["mtp"]["state_dict"])
    return heads.to(device).eval()


def load_model(spec: ModelSpec, device: str):
    """Build the :class:`models.generator.GenerativeRecommender` of a spec, in eval mode."""
    import torch

    from models.generator import GenerativeRecommender, GeneratorConfig

    if spec.path:
        blob = torch.load(spec.path, map_location="cpu", weights_only=False)
        cfg = GeneratorConfig.from_dict(blob["config"])
        model = GenerativeRecommender(cfg)
        model.load_state_dict(blob["state_dict"])
    else:
        torch.manual_seed(spec.seed)
        model = GenerativeRecommender(GeneratorConfig.from_dict(dict(spec.config)))
    return model.to(device).eval()


def pick_device(device: str = "auto") -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


class GeneratorBackend:
    """Real generation: histories → HistoryBatch → encode once → constrained session decode."""

    def __init__(self, catalog: LiveCatalog, history: HistorySource, models: dict, max_history: int = 50,
                 device: str = "cpu", mtp_heads: dict | None = None):
        if not models:
            raise ValueError("GeneratorBackend needs at least one model version")
        for v, m in models.items():
            if tuple(m.cfg.level_sizes) != catalog.level_sizes:
                raise ValueError(f"model {v!r} has level_sizes {m.cfg.level_sizes} but the catalog "
                                 f"{catalog.level_sizes}; serve models trained with this tokenizer")
        self.catalog, self.history, self.models = catalog, history, dict(models)
        self.max_history, self.device = max_history, device
        self.mtp_heads = {v: h for v, h in (mtp_heads or {}).items() if h is not None}  # version -> MTPHeads
        self._lock = threading.Lock()  # one decode at a time per replica (the batch is the parallelism)

    def model_versions(self) -> list[str]:
        return sorted(self.models)

    def add_model(self, version: str, model, mtp_heads=None) -> None:
        """Load another version beside the running ones (no restart), with its MTP heads when it has them."""
        if tuple(model.cfg.level_sizes) != self.catalog.level_sizes:
            raise ValueError(f"model {version!r} level_sizes {model.cfg.level_sizes} != catalog "
                             f"{self.catalog.level_sizes}")
        self.models[version] = model.to(self.device).eval()
        if mtp_heads is not None:
            self.mtp_heads[version] = mtp_heads.to(self.device).eval()
        else:
            self.mtp_heads.pop(version, None)

    def is_recommendable(self, item_id: str) -> bool:
        return self.catalog.is_live(item_id)

    def item_state(self, item_id: str) -> tuple[str, str | None]:
        return self.catalog.state_of(item_id)

    def status(self) -> dict:
        return {"catalog_items": len(self.catalog), "catalog_version": self.catalog.version,
                "models": self.model_versions(), "mtp_heads": sorted(self.mtp_heads), "device": self.device,
                "history": self.history.status()}

    def recommend(self, requests: Sequence[RecRequest]) -> list[RecResult]:
        t0 = time.perf_counter()
        hist = self.history.histories([r.user_id for r in requests])
        t_hist = time.perf_counter() - t0
        out: list[RecResult | None] = [None] * len(requests)
        groups: dict[tuple, list[int]] = {}
        for i, r in enumerate(requests):
            if r.model_version not in self.models:
                out[i] = RecResult(error=f"unknown model version {r.model_version!r}; loaded: "
                                         f"{self.model_versions()}")
                continue
            key = (r.model_version, tuple(sorted(r.decode.items())), r.k, r.exclude_seen)
            groups.setdefault(key, []).append(i)
        with self._lock, self.catalog.lock:
            for (version, dec, k, excl), idx in groups.items():
                t1 = time.perf_counter()
                res = self._generate(self.models[version], [hist[i] for i in idx], dict(dec), k, excl,
                                     self.mtp_heads.get(version), version)
                dt = time.perf_counter() - t1
                for j, i in enumerate(idx):
                    res[j].stats.update({"history_ms": t_hist * 1000, "decode_ms": dt * 1000,
                                         "batch_size": len(requests), "group_size": len(idx),
                                         "catalog_version": self.catalog.version})
                    out[i] = res[j]
        return out  # type: ignore[return-value]

    def model_inputs(self, model, hists, exclude_seen: bool):
        """Histories on the live catalog -> (HistoryBatch on the device, seen mask [B, n_items] or None).

        Items the catalog does not know are dropped from the history. Call with the catalog lock held.
        """
        import torch

        from models.history_features import history_batch

        cat = self.catalog
        items = [cat.indices_of(h.item_ids) for h in hists]
        keep = [it >= 0 for it in items]
        hb = history_batch([it[m] for it, m in zip(items, keep)], cat.item_sids(), model.cfg.max_history,
                           model.cfg.n_time_buckets, types=[h.types[m] for h, m in zip(hists, keep)],
                           ts=[h.ts[m] for h, m in zip(hists, keep)]).to(self.device)
        seen = None
        if exclude_seen:
            seen = torch.zeros(len(hists), cat.n_items, dtype=torch.bool)
            for b, (it, m) in enumerate(zip(items, keep)):
                if m.any():
                    seen[b, torch.as_tensor(it[m])] = True
            seen = seen.to(self.device)
        return hb, seen

    def _generate(self, model, hists, decode: dict, k: int, exclude_seen: bool, heads=None,
                  version: str = "") -> list[RecResult]:
        import torch

        cat = self.catalog
        if len(cat) == 0:
            return [RecResult(error=EMPTY_CATALOG) for _ in hists]
        hb, seen = self.model_inputs(model, hists, exclude_seen)
        mode = decode.get("mode", "greedy")   # DecodeSettings's default, which _decode uses
        try:
            with torch.no_grad():
                memory = model.encode(hb)
                session = self._decode(model, memory, k, mode, decode, seen, exclude_seen, heads)
        except ValueError as e:  # e.g. a mode that needs MTP heads this version does not have
            hint = ("" if heads is not None or "MTP heads" not in str(e) else
                    f" Model version {version!r} was loaded without MTP heads: serve a checkpoint written "
                    "with serving.backend.save_model(model, path, mtp_heads=heads).")
            return [RecResult(error=f"decode mode {mode!r} failed: {e}.{hint}") for _ in hists]
        it = session.items.cpu().numpy()
        sids = session.sids.cpu().numpy()
        scores = session.scores.float().cpu().numpy()
        stats = {k2: v for k2, v in (session.stats or {}).items() if isinstance(v, (int, float, str, bool))}
        stats["mode"] = mode
        return [self.to_result(it[b], sids[b], scores[b], stats) for b in range(len(hists))]

    def to_result(self, items, sids, scores, stats: dict) -> RecResult:
        """One generated session (item indices [K], codes [K, D], scores [K]) as item ids; -1 items dropped."""
        items, sids, scores = np.asarray(items), np.asarray(sids), np.asarray(scores, dtype=np.float64)
        ok = items >= 0
        ids = self.catalog.item_ids
        return RecResult(items=[ids[i] for i in items[ok].tolist()], sids=sids[ok].tolist(),
                         scores=[float(s) if np.isfinite(s) else -1e9 for s in scores[ok]], stats=dict(stats))

    def _decode(self, model, memory, k: int, mode: str, decode: dict, seen, exclude_seen: bool, heads=None):
        """Run the arm's decode mode through ``models.decode_modes.generate`` (the one switch every
        caller shares); plain ``models.decoding`` searches where that module is not there."""
        from models import decoding as dec

        try:
            from models import decode_modes as dm
        except ImportError:
            dm = None
        if dm is not None:
            known = set(getattr(dm.DecodeSettings, "__dataclass_fields__", {}))
            kw = {key: v for key, v in decode.items() if key in known}
            kw.update(session_len=k, exclude_seen=exclude_seen)
            return dm.generate(model, memory, self.catalog.trie, dm.DecodeSettings(**kw), seen=seen,
                               mtp_heads=heads)
        procs = dec.default_processors(self.catalog.trie, seen=seen, no_repeat=True,
                                       index=self.catalog.range_index(), n_items=self.catalog.n_items)
        if mode == "greedy":
            return dec.greedy_session(model, memory, self.catalog.trie, session_len=k, processors=procs)
        return dec.beam_session(model, memory, self.catalog.trie, session_len=k,
                                beam_width=int(decode.get("beam_width", 4)), processors=procs)
