"""Continuous batching in a recommender replica: greedy requests join the running decode between items.

Why: with static batches an admitted request waits for the batch that is
decoding when it arrives and then decodes in the next one — about two batch
decodes, which is most of the tail under overload (docs/decisions/009).
Continuous batching (Orca, Yu et al., OSDI 2022) lets a request start at the
next item boundary instead.

What: :class:`SessionStreams` wraps a :class:`serving.backend.GeneratorBackend`
with one :class:`models.decoding.continuous.ContinuousGreedy` per model version.
:meth:`admit` reads the requests' histories, encodes them and adds their rows;
:meth:`step` generates one more item for every row and returns the requests
that are complete. Both hold the backend's decode lock and the catalog lock,
and release them in between: catalog updates (new items, retirements) land
between two items, when no row is inside the trie. The caller — the
recommender process loop, :mod:`serving.decode_process` — decides who is
admitted (at most ``max_rows`` rows) and answers the finished requests.

Only the greedy mode streams (:meth:`accepts`); beam search and the
speculative modes keep static batches in the same loop.
"""

from __future__ import annotations

import time
from typing import Sequence

from serving.backend import GeneratorBackend
from serving.requests import EMPTY_CATALOG, RecRequest, RecResult


class SessionStreams:
    """Running greedy sessions of one backend, all model versions (see module docstring)."""

    def __init__(self, backend: GeneratorBackend) -> None:
        self.backend = backend
        self.streams: dict = {}                     # model version -> ContinuousGreedy
        self._meta: dict = {}                       # tag -> (admitted at perf_counter, history_ms, batch_wait_ms)
        self.steps = 0
        self.row_steps = 0                          # rows decoded, summed over steps (mean rows = row_steps/steps)

    def __len__(self) -> int:
        return sum(len(s) for s in self.streams.values())

    def accepts(self, req: RecRequest) -> bool:
        """Whether this request can join a stream: greedy decoding of a loaded model version."""
        return req.model_version in self.backend.models and req.decode.mode == "greedy"

    def admit(self, requests: Sequence[RecRequest], tags: Sequence,
              sent: Sequence[float] | None = None) -> list[tuple[object, RecResult]]:
        """Add requests (all :meth:`accepts`) as new rows; returns those answered at once (errors).

        ``tags`` name the requests in :meth:`step`'s answers; ``sent``: each request's
        ``time.perf_counter()`` when it was queued, for its ``batch_wait_ms``.
        """
        import torch

        from models.decoding.continuous import ContinuousGreedy

        if not requests:
            return []
        be = self.backend
        t0 = time.perf_counter()
        hists = be.history.histories([r.user_id for r in requests])
        history_ms = (time.perf_counter() - t0) * 1e3
        groups: dict[tuple, list[int]] = {}
        for i, r in enumerate(requests):
            groups.setdefault((r.model_version, r.exclude_seen), []).append(i)
        answered = []
        with be._lock, be.catalog.lock:
            if len(be.catalog) == 0:
                return [(t, RecResult(error=EMPTY_CATALOG)) for t in tags]
            for (version, exclude_seen), idx in groups.items():
                model = be.models[version]
                hb, seen = be.model_inputs(model, [hists[i] for i in idx], exclude_seen)
                stream = self.streams.get(version)
                if stream is None or stream.model is not model:   # first use, or the version was reloaded
                    if stream is not None and len(stream):
                        answered += self._drain(stream)
                    stream = self.streams[version] = ContinuousGreedy(model)
                with torch.no_grad():
                    stream.admit(model.encode(hb), [requests[i].k for i in idx], [tags[i] for i in idx], seen)
        now = time.perf_counter()
        for i, t in enumerate(tags):
            self._meta[t] = (now, history_ms, (t0 - sent[i]) * 1e3 if sent is not None else 0.0)
        return answered

    def step(self) -> list[tuple[object, RecResult]]:
        """One more item for every running row; the requests that are now complete, with their sessions."""
        from models.decoding.constraint import SidConstraint

        be = self.backend
        out = []
        with be._lock, be.catalog.lock:
            constraint = SidConstraint.of(be.catalog.trie, be.device)      # the catalog as it is at this step
            for stream in self.streams.values():
                n = len(stream)
                if not n:
                    continue
                self.steps += 1
                self.row_steps += n
                for f in stream.step(constraint):
                    out.append((f.tag, self._result(f)))
        return out

    def _result(self, f) -> RecResult:
        admitted, history_ms, wait_ms = self._meta.pop(f.tag, (time.perf_counter(), 0.0, 0.0))
        # decode_ms: from joining the rows to the last item (encode included, other rows' joins too)
        stats = {"mode": "greedy", "lossless": True, "continuous": True,
                 "target_forwards": f.steps * len(f.sids[0]) if f.sids else 0,
                 "history_ms": history_ms, "decode_ms": (time.perf_counter() - admitted) * 1e3,
                 "batch_size": f.max_rows, "group_size": f.max_rows, "batch_wait_ms": wait_ms,
                 "catalog_version": self.backend.catalog.version}
        return self.backend.to_result(f.items, f.sids, f.scores, stats)

    def _drain(self, stream) -> list[tuple[object, RecResult]]:
        """Finish a stream's rows (its model version is being replaced)."""
        from models.decoding.constraint import SidConstraint

        out = []
        constraint = SidConstraint.of(self.backend.catalog.trie, self.backend.device)
        while len(stream):
            out += [(f.tag, self._result(f)) for f in stream.step(constraint)]
        return out

    def abandon(self) -> list:
        """Drop every running row (after a failed step: their state is unknown); returns their tags."""
        tags = [t for s in self.streams.values() for t in s.rows.tags]
        self.streams.clear()
        for t in tags:
            self._meta.pop(t, None)
        return tags

    def status(self) -> dict:
        return {"continuous_rows": len(self), "continuous_steps": self.steps,
                "continuous_mean_rows": round(self.row_steps / self.steps, 2) if self.steps else 0.0}
