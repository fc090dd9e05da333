"""Step graphs: the decoder's per-step forwards compiled once per model (issue 18, part 2).

A decoding step is a few dozen small tensor ops (embedding, attention over the cache, FFN, the tied
output layer), so on CPU and GPU alike its cost is mostly per-op dispatch and kernel launch, not
arithmetic. :func:`graphed` returns the model as the searches see it, with the two forwards that run
inside a step — :meth:`~models.generator.model.GenerativeRecommender.decode` (greedy, beam, top-N and
speculative verification of a chain) and :meth:`~models.generator.model.GenerativeRecommender.decode_tree`
(the speculative beam's draft-tree verification) — captured by ``torch.compile``:

* ``"compile"`` — TorchInductor fuses each forward into a few kernels (C++ on CPU, Triton on CUDA);
* ``"cuda_graphs"`` — the same, replayed as CUDA graphs (``mode="reduce-overhead"``): one launch per
  step instead of one per op. CUDA only.

The searches are untouched: they call ``model.decode`` / ``model.decode_tree`` and get the compiled
ones. Every other attribute is the model's own, so the output is the eager model's (the equivalence
tests hold it to that, token for token).

Shapes: the cache grows by one position per step and a search changes its row count (one request, then
``W`` beams; a draft tree of ``B·(G+1)·W`` rows), so the forwards are compiled with dynamic shapes.
Dynamo still specialises sizes 0 and 1 and the request/beam grouping, which gives one graph per
(rows = 1 / > 1, cache length 0 / 1 / longer, group) combination — about a dozen per model, all made by
the first few requests; the recompile limit is raised so that they fit (a search hitting the default
limit of 8 would fall back to eager and be slower than no compile at all). Compilation is paid once per
process, on the first requests of each shape: worth it for a server, not for a short job
(docs/decisions/040-step-graphs.md has the figures).
"""

from __future__ import annotations

import weakref

import torch

from models.decoding.settings import STEP_GRAPHS

_RECOMPILE_LIMIT = 64   # graphs per compiled forward: a dozen are made; room for several session lengths

_graphed: "weakref.WeakKeyDictionary[torch.nn.Module, dict[str, GraphedSteps]]" = weakref.WeakKeyDictionary()


class GraphedSteps:
    """The model with ``decode`` and ``decode_tree`` compiled (see the module docstring).

    Invariant: every attribute but the two forwards is the wrapped model's, so a search cannot tell the
    difference except in speed; parameters are read at call time (an in-place weight update is seen). It
    holds the model weakly (the compiled functions are the class's, called with the model), so a cached
    wrapper never keeps a dropped model alive.
    """

    _OWN = frozenset({"_model", "_decode", "_decode_tree", "step_graphs"})

    def __init__(self, model: torch.nn.Module, mode: str) -> None:
        if mode not in STEP_GRAPHS[1:]:
            raise ValueError(f"step_graphs={mode!r}: compile with one of {', '.join(STEP_GRAPHS[1:])}")
        device = next(model.parameters()).device
        if mode == "cuda_graphs" and device.type != "cuda":
            raise ValueError(f"step_graphs='cuda_graphs' needs the model on CUDA, it is on {device}; "
                             "use 'compile' (or 'eager') on CPU")
        dyn = torch._dynamo.config
        dyn.recompile_limit = max(dyn.recompile_limit, _RECOMPILE_LIMIT)
        dyn.accumulated_recompile_limit = max(dyn.accumulated_recompile_limit, 4 * _RECOMPILE_LIMIT)
        opts = {"dynamic": True, "mode": "reduce-overhead" if mode == "cuda_graphs" else "default"}
        self._model, self.step_graphs = weakref.ref(model), mode
        self._decode = torch.compile(type(model).decode, **opts)
        self._decode_tree = torch.compile(type(model).decode_tree, **opts)

    def _live(self) -> torch.nn.Module:
        model = self._model()
        if model is None:
            raise RuntimeError("the model of these step graphs was garbage-collected; call graphed() again")
        return model

    def decode(self, *args, **kwargs):
        return self._decode(self._live(), *args, **kwargs)

    def decode_tree(self, *args, **kwargs):
        return self._decode_tree(self._live(), *args, **kwargs)

    def __getattr__(self, name: str):
        if name in GraphedSteps._OWN:   # not set yet (during __init__): never look it up on the model
            raise AttributeError(name)
        return getattr(self._live(), name)


def graphed(model: torch.nn.Module, mode: str):
    """``model`` itself for ``"eager"``; else its :class:`GraphedSteps`, made once per model and mode (the
    cache entry goes when the model does)."""
    if mode == "eager":
        return model
    if isinstance(model, GraphedSteps):
        raise TypeError("graphed() got a GraphedSteps; pass the model itself")
    per_model = _graphed.setdefault(model, {})
    if mode not in per_model:
        per_model[mode] = GraphedSteps(model, mode)
    return per_model[mode]
