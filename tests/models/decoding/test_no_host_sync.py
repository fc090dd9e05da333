"""No decoding step synchronises with the host (issue 18, decision 028).

Every search keeps its per-step work in named step functions (``search.beam_step``, ``search.topn_step``,
``search.greedy_item``, ``continuous.continuous_step``, ``spec_beam._draft_beams`` / ``tree_layout`` / ``commit_cache`` /
``verify_tree``, the proposers' ``propose`` and the verifiers' ``verify``). Here each of them runs under
:func:`forbid_host_sync`: every Python-level way of reading a tensor on the host (``item``, ``tolist``,
``cpu``, ``numpy``, ``bool``/``int``/``float``/``index`` of a tensor, ``nonzero``, ``torch.equal``) raises,
and on CUDA ``torch.cuda.set_sync_debug_mode("error")`` turns any other synchronisation into an error.
Only the sanctioned reads are let through: the accepted length of a speculative round
(``spec_types.accepted_length``; the per-row beam reads ``accepted_lengths`` between its guarded steps).
The generator's ``decode_ragged`` runs guarded too: the continuous batch tells it on the host whether its
rows are ragged.
The test also checks that each guarded function really ran, so inlining a step out of its function fails.
"""

from __future__ import annotations

import functools
from contextlib import contextmanager

import pytest
import torch

from fastdec_helpers import bigram_world, random_world, one_thread  # noqa: F401
from models.decoding import continuous, proposer_mtp, search, spec_beam, verifiers
from models.generator.model import GenerativeRecommender
from models.decoding.continuous import ContinuousGreedy
from models.decoding.generate import generate
from models.decoding.settings import MODES, DecodeSettings
from models.generator.mtp import MTPConfig, MTPHeads

pytestmark = pytest.mark.usefixtures("one_thread")

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


class HostSync(AssertionError):
    """A decoding step read a tensor back to the host."""


_FORBIDDEN = [False]
_TENSOR_METHODS = ("item", "tolist", "cpu", "numpy", "__bool__", "__int__", "__float__", "__index__", "nonzero")


def _set_cuda_mode(on: bool) -> None:
    if torch.cuda.is_available():
        torch.cuda.set_sync_debug_mode("error" if on else "default")


@contextmanager
def forbid_host_sync():
    """Within this block (and inside functions wrapped by :func:`guarded`), host reads raise :class:`HostSync`.
    Installs the patches; :func:`guarded` / :func:`allowed` switch them on and off."""
    saved = {name: getattr(torch.Tensor, name) for name in _TENSOR_METHODS}
    saved_fns = {"equal": torch.equal, "nonzero": torch.nonzero}

    def trap(name, original):
        @functools.wraps(original)
        def f(*a, **k):
            if _FORBIDDEN[0]:
                raise HostSync(f"host synchronisation inside a decoding step: Tensor.{name}")
            return original(*a, **k)
        return f

    for name, orig in saved.items():
        setattr(torch.Tensor, name, trap(name, orig))
    for name, orig in saved_fns.items():
        setattr(torch, name, trap(name, orig))
    try:
        yield
    finally:
        for name, orig in saved.items():
            setattr(torch.Tensor, name, orig)
        for name, orig in saved_fns.items():
            setattr(torch, name, orig)
        _FORBIDDEN[0] = False
        _set_cuda_mode(False)


def _switch(fn, on: bool, calls: dict, key: str):
    @functools.wraps(fn)
    def f(*a, **k):
        prev = _FORBIDDEN[0]
        _FORBIDDEN[0] = on
        _set_cuda_mode(on)
        calls[key] = calls.get(key, 0) + 1
        try:
            return fn(*a, **k)
        finally:
            _FORBIDDEN[0] = prev
            _set_cuda_mode(prev)
    return f


STEPS = [(search, "beam_step"), (search, "topn_step"), (search, "greedy_item"), (continuous, "continuous_step"),
         (spec_beam, "_draft_beams"), (spec_beam, "tree_layout"),
         (spec_beam, "verify_tree"), (spec_beam, "commit_cache"), (spec_beam, "_ragged_commit_index"),
         (GenerativeRecommender, "decode_tree"),
         (proposer_mtp.MTPProposer, "propose"), (verifiers.GreedyVerifier, "verify"),
         (verifiers.SamplingVerifier, "verify"), (verifiers.AcceptAllVerifier, "verify")]
ALLOWED = [(verifiers, "accepted_length"), (spec_beam, "accepted_length")]


@pytest.fixture
def guard(monkeypatch):
    """Installs the guard on every step function; yields the per-function call counts."""
    calls: dict = {}
    for owner, name in STEPS:
        monkeypatch.setattr(owner, name, _switch(getattr(owner, name), True, calls, name))
    for owner, name in ALLOWED:
        monkeypatch.setattr(owner, name, _switch(getattr(owner, name), False, calls, name))
    with forbid_host_sync():
        yield calls


def test_the_guard_catches_every_kind_of_host_read(guard):
    """The guard itself can fail: each forbidden read raises inside a guarded function, not outside."""
    x = torch.arange(4)

    def reads():
        return [lambda: x.sum().item(), lambda: x.tolist(), lambda: x.cpu(), lambda: x.numpy(),
                lambda: bool(x.any()), lambda: int(x[0]), lambda: float(x[0]), lambda: [0, 1][x[1]],
                lambda: x.nonzero(), lambda: torch.nonzero(x), lambda: torch.equal(x, x)]

    for read in reads():
        with pytest.raises(HostSync):
            _switch(read, True, {}, "probe")()
        read()   # outside a step: fine


def _heads(w):
    return MTPHeads(MTPConfig(w.model.cfg.level_sizes, w.model.cfg.d_model)).double().eval()


@pytest.mark.parametrize("dev", DEVICES)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("noise", [0.0, 0.7])
def test_every_mode_decodes_without_host_sync_in_a_step(guard, mode, noise, dev):
    """Each mode on a bigram target whose twin heads draft perfectly (noise 0: accept paths) or badly
    (reject paths); the output equals the unguarded run's."""
    if dev == "cpu":
        w, heads = bigram_world(3, b=3, noise=noise)
    else:                       # the bigram target is a CPU-only fixture: the real generator on the GPU
        w = random_world(3 + int(10 * noise), b=3, session_len=4)
        heads = _heads(w)
    model, heads = w.model.to(dev), heads.to(dev)
    from models.decoding.constraint import SidConstraint
    con = SidConstraint.of(w.trie, dev)
    s = DecodeSettings(mode=mode, beam_width=3, seed=0, draft_len=3)
    res = generate(model, w.memory.__class__(w.memory.states.to(dev), w.memory.mask.to(dev)), con, s,
                   seen=w.seen, mtp_heads=heads)
    _FORBIDDEN[0] = False
    assert (res.items >= 0).all()
    expect = {"greedy": "greedy_item", "beam": "beam_step", "spec_beam": "verify_tree",
              "spec_beam_relaxed": "verify_tree", "spec_greedy": "propose", "mtp": "propose",
              "sample": "verify", "spec_sample": "propose"}[mode]
    assert guard.get(expect, 0) > 0, f"mode {mode} never ran its guarded step {expect}: {guard}"


@pytest.mark.parametrize("dev", DEVICES)
def test_real_generator_beam_topn_and_spec_beam_without_host_sync(guard, dev):
    """The real encoder-decoder (its KV cache reordered by reorder_beams, not KVCache.index_select)."""
    w = random_world(5, b=2, session_len=3)
    model = w.model.to(dev)
    from models.decoding.constraint import SidConstraint
    con = SidConstraint.of(w.trie, dev)
    memory = w.memory.__class__(w.memory.states.to(dev), w.memory.mask.to(dev))
    search.beam_topn(model, memory, con, 3, beam_width=4, seen=w.seen)
    for mode in ("beam", "spec_beam", "spec_greedy"):
        generate(model, memory, con, DecodeSettings(mode=mode, beam_width=3, draft_len=2), seen=w.seen,
                 mtp_heads=_heads(w).to(dev))
    assert guard["topn_step"] and guard["beam_step"] and guard["verify_tree"] and guard["propose"]
    assert guard["decode_tree"] and guard["commit_cache"]          # the tree forward and its KV commit
    assert guard["_ragged_commit_index"]                            # batch 2: the per-row (ragged) rounds


def test_continuous_batching_step_without_host_sync(guard):
    """A continuous batch reads nothing back inside a step (finished sessions are read once, after it)."""
    w = random_world(7, b=3, session_len=3)
    w.model.decode_ragged = _switch(w.model.decode_ragged, True, guard, "decode_ragged")  # the host says ragged
    cb = ContinuousGreedy(w.model)
    cb.admit(w.memory, [2, 3, 1], ["a", "b", "c"], w.seen_mask)
    got = {}
    while len(cb):
        for f in cb.step(w.constraint):
            got[f.tag] = f
    assert sorted(got) == ["a", "b", "c"] and [len(got[t].items) for t in "abc"] == [2, 3, 1]
    assert guard["continuous_step"] == 3
