"""The recommender backend: history source + live catalog + model versions + decoding.

The Serve deployment (:mod:`serving.recommender`) only batches, times and
reports; everything it asks of the model side goes through the small
:class:`RecommenderBackend` protocol, so the same deployment serves the real
generator, and the benchmarks can call the very same backend in-process to
measure what HTTP + Serve add.

:class:`GeneratorBackend` is the real one: per request it reads the user's
fresh history, maps it onto the live catalog (:class:`serving.live_state.LiveCatalog`, a
:class:`models.sid.catalog.Catalog`),
encodes it once and generates a session of ``k`` items with the arm's decode
settings under the trie constraint (never an invalid ID), without repeats, and
without already-seen items when asked. Several model versions are loaded side
by side; each request names the one its experiment arm chose.
"""

from __future__ import annotations

import threading
import time
from dataclasses import replace
from typing import Sequence

import numpy as np

from serving.live_state import HistorySource, LiveCatalog
from models.decoding.settings import DecodeSettings
from serving.requests import EMPTY_CATALOG, ModelSpec, RecRequest, RecResult


def load_bundle(spec: ModelSpec, device: str, level_sizes: tuple[int, ...] | None = None):
    """The :class:`models.generator.checkpoint.GeneratorBundle` of a spec, its model in eval mode on ``device``.

    A registry version is checked against the serving catalog's ``level_sizes`` when given
    (:class:`actors.model_registry.RegistryError` names the fix); a seeded spec is an untrained model with no
    catalog of its own.
    """
    import torch

    from models.generator.checkpoint import GeneratorBundle
    from models.generator.model import GenerativeRecommender, GeneratorConfig

    if spec.registry:
        from actors.model_registry import ModelRegistry

        return ModelRegistry(spec.registry).load(spec.version, device, level_sizes=level_sizes)
    torch.manual_seed(spec.seed)
    return GeneratorBundle(GenerativeRecommender(GeneratorConfig.from_dict(dict(spec.config))).to(device).eval())


def load_model(spec: ModelSpec, device: str, level_sizes: tuple[int, ...] | None = None):
    """``(model, mtp_heads or None)`` of a spec (:func:`load_bundle`)."""
    bundle = load_bundle(spec, device, level_sizes)
    return bundle.model, bundle.mtp_heads


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
        return sorted(list(self.models))

    def add_model(self, version: str, model, mtp_heads=None) -> None:
        """Load another version beside the running ones (no restart), with its MTP heads when it has them.

        Safe from another thread (the recommender's promoted-pointer follower): the model is moved to the
        device first, then both tables are replaced by new dicts between two decode steps (under the
        decode lock), so a running decode never sees a half-added version."""
        if tuple(model.cfg.level_sizes) != self.catalog.level_sizes:
            raise ValueError(f"model {version!r} level_sizes {model.cfg.level_sizes} != catalog "
                             f"{self.catalog.level_sizes}")
        model = model.to(self.device).eval()
        heads = None if mtp_heads is None else mtp_heads.to(self.device).eval()
        with self._lock:
            self.models = {**self.models, version: model}
            rest = {v: h for v, h in self.mtp_heads.items() if v != version}
            self.mtp_heads = rest if heads is None else {**rest, version: heads}

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
            key = (r.model_version, r.decode, r.k, r.exclude_seen)
            groups.setdefault(key, []).append(i)
        with self._lock, self.catalog.lock:
            for (version, dec, k, excl), idx in groups.items():
                t1 = time.perf_counter()
                res = self._generate(self.models[version], [hist[i] for i in idx], dec, k, excl,
                                     self.mtp_heads.get(version), version)
                dt = time.perf_counter() - t1
                for j, i in enumerate(idx):
                    res[j].stats.update({"history_ms": t_hist * 1000, "decode_ms": dt * 1000,
                                         "batch_size": len(requests), "group_size": len(idx),
                                         "catalog_version": self.catalog.version})
                    out[i] = res[j]
        return out  # type: ignore[return-value]

    def model_inputs(self, model, hists, exclude_seen: bool):
        """Histories on the live catalog -> (HistoryBatch on the device, seen: B arrays of item indices, or None).

        Items the catalog does not know are dropped from the history. Call with the catalog lock held.
        """
        from models.generator.features import history_batch

        cat = self.catalog
        items = [cat.indices_of(h.item_ids) for h in hists]
        keep = [it >= 0 for it in items]
        hb = history_batch([it[m] for it, m in zip(items, keep)], cat.sids(), model.cfg.max_history,
                           model.cfg.n_time_buckets, types=[h.types[m] for h, m in zip(hists, keep)],
                           ts=[h.ts[m] for h, m in zip(hists, keep)]).to(self.device)
        seen = [it[m] for it, m in zip(items, keep)] if exclude_seen else None   # no [B, n_items] mask
        return hb, seen

    def _generate(self, model, hists, decode: DecodeSettings, k: int, exclude_seen: bool, heads=None,
                  version: str = "") -> list[RecResult]:
        import torch

        cat = self.catalog
        if len(cat) == 0:
            return [RecResult(error=EMPTY_CATALOG) for _ in hists]
        settings = replace(decode, session_len=k, exclude_seen=exclude_seen)
        mode = settings.mode
        hb, seen = self.model_inputs(model, hists, exclude_seen)
        try:
            with torch.no_grad():
                memory = model.encode(hb)
                session = self._decode(model, memory, settings, seen, heads)
        except ValueError as e:  # e.g. a mode that needs MTP heads this version does not have
            hint = ("" if heads is not None or "MTP heads" not in str(e) else
                    f" Model version {version!r} has no MTP heads: publish a version with them "
                    "(actors.model_registry, GeneratorBundle(model, mtp_heads=...)).")
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
        return RecResult(items=self.catalog.item_ids(items[ok]), sids=sids[ok].tolist(),
                         scores=[float(s) if np.isfinite(s) else -1e9 for s in scores[ok]], stats=dict(stats))

    def _decode(self, model, memory, settings, seen, heads=None):
        """Decode with :func:`models.decoding.generate.generate` (the one entry point every caller shares) under
        the catalog's constraint as it is now. Call with the catalog lock held."""
        from models.decoding.constraint import SidConstraint
        from models.decoding.generate import generate

        return generate(model, memory, SidConstraint.of(self.catalog.trie, self.device), settings, seen=seen,
                        mtp_heads=heads)
