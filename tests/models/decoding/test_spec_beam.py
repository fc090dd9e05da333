"""Speculative beam search: strict mode equals plain constrained beam search exactly; relaxed stays valid."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st

from fastdec_helpers import bigram_world, random_world, one_thread  # noqa: E402
from models.decoding.search import beam_session  # noqa: E402
from models.generator.mtp import MTPConfig, MTPHeads  # noqa: E402
from models.decoding.spec_beam import speculative_beam  # noqa: E402
from models.decoding.spec_types import SpecConfig  # noqa: E402

FAST = settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
CHEAP = settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])

pytestmark = pytest.mark.usefixtures("one_thread")


def _plain_beam(w, n_items, width):
    return beam_session(w.model, w.memory, w.constraint, session_len=n_items, beam_width=width, seen=w.seen_mask)


def _assert_valid(w, codes, n_items):
    items = w.constraint.lookup(codes.view(codes.shape[0], n_items, -1))
    assert (items >= 0).all(), "invalid SID generated"
    for b in range(items.shape[0]):
        row = items[b].tolist()
        assert len(set(row)) == len(row), f"repeat within a session: {row}"
        assert not set(row) & {int(x) for x in w.seen[b]}, "seen item recommended"
    return items


def _item_scores(cum, b, n_items, D):
    ends = cum.view(b, n_items, D)[:, :, -1]
    return ends - torch.cat([ends.new_zeros(b, 1), ends[:, :-1]], 1)


@FAST
@given(seed=st.integers(0, 10_000), b=st.integers(1, 3), width=st.integers(1, 5), gamma=st.integers(1, 5),
       n_items=st.integers(1, 4))
def test_strict_spec_beam_equals_plain_beam_random_model(seed, b, width, gamma, n_items):
    w = random_world(seed, b=b, session_len=n_items)
    ref = _plain_beam(w, n_items, width)
    heads = MTPHeads(MTPConfig(w.model.cfg.level_sizes, w.model.cfg.d_model)).double().eval()
    out = speculative_beam(w.model, w.memory, w.constraint, n_items, width, heads=heads,
                           spec=SpecConfig(gamma=gamma, gamma_max=6), seen=w.seen)
    assert torch.equal(out.codes, ref.sids.reshape(b, -1))
    assert torch.equal(_assert_valid(w, out.codes, n_items), ref.items)
    np.testing.assert_allclose(_item_scores(out.cum, b, n_items, 3).numpy(), ref.scores.numpy(), atol=1e-5)
    plain = speculative_beam(w.model, w.memory, w.constraint, n_items, width, seen=w.seen)
    assert torch.equal(plain.codes, out.codes) and plain.stats.target_forwards == n_items * 3


@CHEAP
@given(seed=st.integers(0, 10_000), noise=st.sampled_from([0.0, 0.05, 0.5, 3.0]), b=st.integers(1, 3),
       width=st.integers(1, 4), gamma=st.integers(1, 6))
def test_strict_spec_beam_bigram_accepts_and_rejects(seed, noise, b, width, gamma):
    """Perfect drafts are all accepted; noisy ones partly; the output is always plain beam search's."""
    w, heads = bigram_world(seed, b=b, noise=noise)
    ref = _plain_beam(w, 4, width)
    out = speculative_beam(w.model, w.memory, w.constraint, 4, width, heads=heads,
                           spec=SpecConfig(gamma=gamma, gamma_max=8), seen=w.seen)
    assert torch.equal(out.codes, ref.sids.reshape(b, -1))
    _assert_valid(w, out.codes, 4)
    np.testing.assert_allclose(_item_scores(out.cum, b, 4, 3).numpy(), ref.scores.numpy(), atol=1e-5)
    if noise == 0.0:
        assert out.stats.acceptance_rate == 1.0
        assert out.stats.target_forwards < 12


def test_perfect_drafts_save_forwards_and_noisy_drafts_still_accept_some():
    w, heads = bigram_world(21, b=2, noise=0.0)
    out = speculative_beam(w.model, w.memory, w.constraint, 4, 3, heads=heads, spec=SpecConfig(gamma=4),
                           seen=w.seen)
    assert out.stats.target_forwards <= 4          # 12 codes in 1 + ceil(11 / 5..8) forwards
    w, heads = bigram_world(21, b=2, noise=0.3)
    out = speculative_beam(w.model, w.memory, w.constraint, 4, 3, heads=heads, spec=SpecConfig(gamma=4),
                           seen=w.seen)
    assert torch.equal(out.codes, _plain_beam(w, 4, 3).sids.reshape(2, -1))
    assert 0 < out.stats.accepted < out.stats.drafted


@CHEAP
@given(seed=st.integers(0, 10_000), noise=st.sampled_from([0.0, 0.5, 3.0]), width=st.integers(1, 4),
       factor=st.sampled_from([1.0, 2.0, 4.0]))
def test_relaxed_is_valid_and_labelled_lossy(seed, noise, width, factor):
    w, heads = bigram_world(seed, b=2, noise=noise)
    strict = speculative_beam(w.model, w.memory, w.constraint, 4, width, heads=heads, seen=w.seen)
    out = speculative_beam(w.model, w.memory, w.constraint, 4, width, heads=heads, seen=w.seen,
                           relaxed=True, relax_factor=factor)
    _assert_valid(w, out.codes, 4)
    assert not out.stats.lossless and strict.stats.lossless
    if noise == 0.0:                                   # perfect drafts: relaxed = strict
        assert torch.equal(out.codes, strict.codes)


@CHEAP
@given(seed=st.integers(0, 10_000), noise=st.sampled_from([0.0, 0.5, 3.0]), b=st.integers(1, 3),
       width=st.integers(1, 4), extra=st.integers(1, 4), gamma=st.integers(1, 6))
def test_wider_draft_tree_equals_plain_beam(seed, noise, b, width, extra, gamma):
    """A draft tree wider than the beam (draft_width > W) is still verified to plain beam search's output."""
    w, heads = bigram_world(seed, b=b, noise=noise)
    ref = _plain_beam(w, 4, width)
    out = speculative_beam(w.model, w.memory, w.constraint, 4, width, heads=heads, draft_width=width + extra,
                           spec=SpecConfig(gamma=gamma, gamma_max=8), seen=w.seen)
    assert torch.equal(out.codes, ref.sids.reshape(b, -1))
    _assert_valid(w, out.codes, 4)
    np.testing.assert_allclose(_item_scores(out.cum, b, 4, 3).numpy(), ref.scores.numpy(), atol=1e-5)


@FAST
@given(seed=st.integers(0, 10_000), width=st.integers(1, 4), extra=st.integers(1, 6), n_items=st.integers(1, 4))
def test_wider_draft_tree_random_model(seed, width, extra, n_items):
    w = random_world(seed, b=2, session_len=n_items)
    ref = _plain_beam(w, n_items, width)
    heads = MTPHeads(MTPConfig(w.model.cfg.level_sizes, w.model.cfg.d_model)).double().eval()
    out = speculative_beam(w.model, w.memory, w.constraint, n_items, width, heads=heads, draft_width=width + extra,
                           spec=SpecConfig(gamma=3), seen=w.seen)
    assert torch.equal(out.codes, ref.sids.reshape(2, -1))


def test_wider_draft_tree_accepts_more_and_validates():
    w, heads = bigram_world(21, b=2, noise=0.5)
    narrow = speculative_beam(w.model, w.memory, w.constraint, 4, 2, heads=heads, spec=SpecConfig(gamma=3),
                              seen=w.seen)
    wide = speculative_beam(w.model, w.memory, w.constraint, 4, 2, heads=heads, spec=SpecConfig(gamma=3),
                            seen=w.seen, draft_width=6)
    assert torch.equal(narrow.codes, wide.codes)
    assert wide.stats.target_forwards <= narrow.stats.target_forwards
    with pytest.raises(ValueError, match="draft_width=1 must be >= beam_width=2"):
        speculative_beam(w.model, w.memory, w.constraint, 4, 2, heads=heads, draft_width=1)


# ---- tree verification (one forward per request over the whole draft tree) ----------------------

def _random_draft(rng, b, w, wd, g, k=3):
    """A random draft tree: parents among the previous step's nodes (step 1: the W beams), random codes
    (states and masks unused here)."""
    from models.decoding.spec_beam import BeamDraft
    par = [torch.as_tensor(rng.integers(0, w if i == 0 else wd, (b, wd))) for i in range(g)]
    tok = [torch.as_tensor(rng.integers(0, k, (b, wd))) for _ in range(g)]
    return BeamDraft(par, tok, [p * k + t for p, t in zip(par, tok)], [], [])


def _tree_cache(cache, b, w):
    """The W beams' cached columns of each request side by side in one row (the spec beam's cache layout):
    [B·W, H, L, Dh] -> [B, H, W·L, Dh] per layer."""
    from models.generator.kv_cache import KVCache

    def cat(x):
        n, h, L, dh = x.shape
        return x.view(b, w, h, L, dh).transpose(1, 2).reshape(b, h, w * L, dh)
    return KVCache(list(cache.cross_k), list(cache.cross_v), cache.cross_mask,
                   [cat(k) for k in cache.self_k], [cat(v) for v in cache.self_v], 1, None)


def _path_columns(draft, i, w, wd, b):
    """[B, n_i, i+1] tree columns of each step-i node's ancestors at steps 0..i (itself last), by walking
    parents (roots at columns 0..W-1, step-j node k at W + (j-1)·WD + k)."""
    nodes = [torch.arange(w if i == 0 else wd).expand(b, -1)]
    for j in range(i, 0, -1):
        nodes.append(draft.parent[j - 1].gather(1, nodes[-1]))
    first = torch.tensor([0] + [w + j * wd for j in range(i)])
    return torch.stack(nodes[::-1], 2) + first


@FAST
@given(seed=st.integers(0, 10_000), b=st.integers(1, 3), width=st.integers(1, 4), extra=st.integers(0, 3),
       g=st.integers(1, 4), length=st.integers(1, 5))
def test_tree_forward_equals_one_decode_per_path(seed, b, width, extra, g, length):
    """Every node of ONE tree forward (tree mask, tree positions, the beams' caches side by side) has the
    logits and hidden state the target gives the path from its root beam decoded on that beam's own cache;
    the committed cache (source beam's columns + the tree K/V of the path, no recomputation) equals that
    decode's cache, in the same side-by-side layout."""
    from models.decoding.search import reorder_beams
    from models.decoding.spec_beam import commit_cache, tree_layout
    w = random_world(seed, b=b, session_len=4)
    rng = np.random.default_rng(seed)
    model, wd = w.model, width + extra
    rows = torch.arange(b).repeat_interleave(width)
    cache = model.start_cache(w.memory).index_select(rows)
    prefix = torch.as_tensor(rng.integers(0, 3, (b * width, length)))
    model.decode(prefix, None, cache, 0)                                     # beams with distinct prefixes
    draft = _random_draft(rng, b, width, wd, g)
    root_tok = torch.as_tensor(rng.integers(0, 3, (b, width)))
    tree = tree_layout(draft, root_tok, b, wd, g, width, length)
    out = model.decode_tree(tree.tokens, tree.depth, length, _tree_cache(cache, b, width), tree.mask)
    q = width + g * wd
    assert tree.tokens.shape == (b, q) and tree.mask.shape == (b, q, width * length + q)
    fast = model.decode_tree(tree.tokens, tree.depth, length, _tree_cache(cache, b, width), tree.mask,
                             model.tree_tables(length + g + 1))              # per-decode lookup tables
    assert torch.equal(fast.logits, out.logits) and torch.equal(fast.hidden, out.hidden)
    for i in range(g + 1):                                                   # check every node by its path
        cols = _path_columns(draft, i, width, wd, b)                         # [B, n_i, i+1]
        n_i = cols.shape[1]
        path = tree.tokens.gather(1, cols.reshape(b, -1)).view(b * n_i, i + 1)
        src = cols[..., 0]                                                   # [B, n_i] root beam of each node
        ref = model.decode(path, None, reorder_beams(cache, (torch.arange(b)[:, None] * width + src).reshape(-1),
                                                     n_i), length)
        node = (torch.arange(b)[:, None] * q + cols[..., -1]).reshape(-1)
        torch.testing.assert_close(out.logits.reshape(b * q, -1)[node], ref.logits[:, -1])
        torch.testing.assert_close(out.hidden.reshape(b * q, -1)[node], ref.hidden[:, -1])
        keep = torch.as_tensor(rng.integers(0, n_i, (b, width)))             # W new beams from step-i nodes
        kept = commit_cache(out.cache, src.gather(1, keep), cols.gather(1, keep[..., None].expand(-1, -1, i + 1)),
                            width, length)
        pick = (torch.arange(b)[:, None] * n_i + keep).reshape(-1)
        theirs = _tree_cache(reorder_beams(ref.cache, pick, width), b, width)
        for mine, them in zip(kept.self_k + kept.self_v, theirs.self_k + theirs.self_v):
            torch.testing.assert_close(mine, them)


def test_decode_tree_rejects_mismatched_shapes():
    w = random_world(1, b=1)
    cache = w.model.start_cache(w.memory)
    with pytest.raises(ValueError, match="do not fit tokens"):
        w.model.decode_tree(torch.zeros(1, 3, dtype=torch.long), torch.zeros(3, dtype=torch.long), 0, cache,
                            torch.ones(1, 3, 4, dtype=torch.bool))


@FAST
@given(seed=st.integers(0, 10_000), b=st.integers(4, 6), width=st.integers(2, 4), extra=st.integers(0, 6),
       gamma=st.integers(1, 6), backoff=st.sampled_from([0, 1, 8]))
def test_spec_beam_equals_plain_beam_larger_batches_and_backoff(seed, b, width, extra, gamma, backoff):
    """Larger batches (rows accept different lengths; the round commits the fewest), wide and deep trees,
    with and without backing off to plain rounds: always plain beam search's output."""
    w = random_world(seed, b=b, session_len=4, n_items=30)
    ref = _plain_beam(w, 4, width)
    heads = MTPHeads(MTPConfig(w.model.cfg.level_sizes, w.model.cfg.d_model)).double().eval()
    out = speculative_beam(w.model, w.memory, w.constraint, 4, width, heads=heads, draft_width=width + extra,
                           spec=SpecConfig(gamma=gamma, gamma_max=6, backoff_max=backoff), seen=w.seen)
    assert torch.equal(out.codes, ref.sids.reshape(b, -1))
    np.testing.assert_allclose(_item_scores(out.cum, b, 4, 3).numpy(), ref.scores.numpy(), atol=1e-5)


def test_backoff_skips_drafting_that_does_not_pay():
    """Untrained heads on a real generator: with back-off most rounds are plain, so far fewer draft steps run
    for about the same target forwards; drafts that partly pay (a noisy bigram twin) are not backed off from.
    One request (every round's drafts wasted or not), then three at their own lengths (a round is wasted when
    the median request accepted nothing, so back-off still drafts less, for no more forwards)."""
    for b in (1, 3):
        w = random_world(5, b=b, session_len=8, n_items=40, level_sizes=(6, 5, 4))
        heads = MTPHeads(MTPConfig(w.model.cfg.level_sizes, w.model.cfg.d_model)).double().eval()
        run = {bo: speculative_beam(w.model, w.memory, w.constraint, 8, 3, heads=heads, seen=w.seen, draft_width=3,
                                    spec=SpecConfig(gamma=1, gamma_min=1, backoff_max=bo)) for bo in (0, 8)}
        assert torch.equal(run[0].codes, run[8].codes)
        assert torch.equal(run[8].codes, _plain_beam(w, 8, 3).sids.reshape(b, -1))
        assert run[8].stats.draft_steps < run[0].stats.draft_steps / (2 if b == 1 else 1.5)
        assert run[8].stats.target_forwards <= run[0].stats.target_forwards + 2
    w, heads = bigram_world(5, b=3, noise=3.0, session_len=8, n_items=18)
    run = {bo: speculative_beam(w.model, w.memory, w.constraint, 8, 3, heads=heads, seen=w.seen,
                                spec=SpecConfig(gamma=1, gamma_min=1, backoff_max=bo)) for bo in (0, 8)}
    assert run[8].stats.target_forwards <= run[0].stats.target_forwards + 1


def test_backoff_schedule():
    spec = SpecConfig(gamma=2, gamma_min=1, gamma_max=4, backoff_max=8)
    assert [spec.plain_rounds(k) for k in range(7)] == [0, 0, 1, 2, 4, 8, 8]
    assert spec.next_wasted(3, 2, 3) == 0                 # a draft accepted
    assert spec.next_wasted(3, 0, 1) == 4                 # wasted at gamma_min
    assert spec.next_wasted(3, 0, 2) == 3                 # above gamma_min: gamma shrinks first
    assert SpecConfig(backoff_max=0).plain_rounds(5) == 0
    assert SpecConfig(adaptive=False).plain_rounds(5) == 0
    with pytest.raises(ValueError, match="backoff_max=-1 must be >= 0"):
        SpecConfig(backoff_max=-1)


def test_tree_tables_give_the_same_forward_from_position_zero():
    """The first round's tree (the roots at position 0, BOS whatever their token) and a later one: the tree
    forward with the per-decode tables equals the one without, exactly."""
    w = random_world(3, b=2, session_len=4)
    model, k = w.model, w.model.cfg.k_max
    tables = model.tree_tables(12)
    for start, depth in ((0, torch.zeros(3, dtype=torch.long)), (5, torch.tensor([0, 0, 1, 1, 2]))):
        q = depth.shape[0]
        tokens = torch.randint(0, k, (2, q), generator=torch.Generator().manual_seed(start))
        cache = model.start_cache(w.memory)
        if start:
            model.decode(torch.randint(0, 3, (2, start)), None, cache, 0)
        mask = torch.rand(2, q, start + q, generator=torch.Generator().manual_seed(1)) < 0.7
        mask[:, torch.arange(q), start + torch.arange(q)] = True                 # every node sees itself
        plain = model.decode_tree(tokens, depth, start, _copy(cache), mask)
        fast = model.decode_tree(tokens, depth, start, _copy(cache), mask, tables)
        assert torch.equal(plain.logits, fast.logits) and torch.equal(plain.hidden, fast.hidden)


def _copy(cache):
    from models.generator.kv_cache import KVCache
    return KVCache(list(cache.cross_k), list(cache.cross_v), cache.cross_mask, list(cache.self_k),
                   list(cache.self_v), cache.group, cache.self_pad)


# ---- per-row acceptance (requests at their own lengths, not in lock-step) --------------------------

class _RowTarget:
    """A bigram target (:func:`bigram_world`) whose tree forward takes one start per row and whose hidden
    state is the request's id (carried in the memory, so it follows a request when finished ones leave)."""

    ragged_tree = True

    def __init__(self, bigram) -> None:
        self.inner, self.cfg = bigram, bigram.cfg

    def start_cache(self, memory):
        from models.generator.kv_cache import KVCache
        ids = memory.states.reshape(-1, 1, 1, 1)
        return KVCache(cross_k=[ids], cross_v=[ids], cross_mask=memory.mask)

    def decode(self, tokens, memory, cache=None, start=0):
        return self.inner.decode(tokens, memory, cache if cache is not None else self.start_cache(memory), start)

    def decode_tree(self, tokens, depth, start, cache, self_mask):
        from models.generator.model import DecoderOutput
        b, t = tokens.shape
        assert self_mask.shape == (b, t, cache.length + t)
        z = torch.zeros(b, 1, t, 1, dtype=self.inner.table.dtype)
        cache.append(0, z, z)
        D, K = self.cfg.sid_len, self.cfg.k_max
        pos = start[:, None] + depth[None, :] if isinstance(start, torch.Tensor) else (start + depth)[None, :]
        prev = torch.where(pos == 0, torch.full_like(tokens, K), tokens)
        logits = self.inner.table[(pos % D).expand(b, t), prev]
        return DecoderOutput(logits, cache.cross_k[0][:, 0].expand(b, t, 1).contiguous(), cache)


class _RowHeads(torch.nn.Module):
    """Heads that draft perfectly for even request ids and from a noisy table for odd ones (levels as tensors)."""

    def __init__(self, target, noise: float, seed: int) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        t = target.table
        self.good, self.bad = t.clone(), t + noise * torch.randn(t.shape, generator=g, dtype=t.dtype)
        self.out = torch.nn.Linear(1, 1).to(t.dtype)
        self.D = target.cfg.sid_len

    def step(self, state, code, code_level):
        nxt = (torch.as_tensor(code_level).expand_as(code) + 1) % self.D
        even = (state[:, 0].round().long() % 2 == 0).unsqueeze(1)
        return state, torch.where(even, self.good[nxt, code], self.bad[nxt, code])


def _row_world(seed: int, b: int):
    """A bigram world with codebooks large enough that the noisy rows' drafts miss (8/8/4 codes)."""
    from models.generator.model import Memory
    w, _ = bigram_world(seed, b=b, noise=0.0, session_len=6, level_sizes=(8, 8, 4), n_items=60)
    memory = Memory(torch.arange(b, dtype=torch.float64).view(b, 1, 1), torch.ones(b, 1, dtype=torch.bool))
    return w, _RowTarget(w.model), memory, _RowHeads(w.model, 4.0, seed)


def _lock_step(model):
    """The same target without per-row tree forwards: the loop falls back to lock-step rounds."""
    lock = _RowTarget(model.inner)
    lock.ragged_tree = False
    return lock


@CHEAP
@given(seed=st.integers(0, 10_000), b=st.integers(2, 6), width=st.integers(1, 3), extra=st.integers(0, 3),
       gamma=st.integers(1, 5))
def test_per_row_acceptance_rows_with_very_different_acceptance(seed, b, width, extra, gamma):
    """Even requests draft perfectly, odd ones badly, in ONE batch: each request commits its own accepted
    steps (perfect rows run ahead and finish early, leaving the batch), and every request's output is still
    plain beam search's, as is the lock-step loop's. A row committing another row's count would break the
    equality."""
    w, model, memory, heads = _row_world(seed, b)
    ref = beam_session(w.model, w.memory, w.constraint, session_len=6, beam_width=width, seen=w.seen_mask)
    spec = SpecConfig(gamma=gamma, gamma_max=6, backoff_max=0)
    out = speculative_beam(model, memory, w.constraint, 6, width, heads=heads, draft_width=width + extra,
                           spec=spec, seen=w.seen)
    assert torch.equal(out.codes, ref.sids.reshape(b, -1))
    np.testing.assert_allclose(_item_scores(out.cum, b, 6, 3).numpy(), ref.scores.numpy(), atol=1e-5)
    lock = speculative_beam(_lock_step(model), memory, w.constraint, 6, width, heads=heads,
                            draft_width=width + extra, spec=spec, seen=w.seen)
    assert torch.equal(lock.codes, out.codes)


def test_per_row_batch_equals_each_request_alone():
    """A request decoded in a mixed batch commits exactly what it commits alone (batch 1, lock-step loop):
    same codes, same cumulative scores. The batch needs fewer target forwards than lock-step rounds (every
    row held to the fewest accepted), and commits more drafts."""
    w, model, memory, heads = _row_world(11, 4)
    spec = SpecConfig(gamma=3, gamma_max=6, backoff_max=0)
    both = speculative_beam(model, memory, w.constraint, 6, 2, heads=heads, spec=spec, seen=w.seen, draft_width=2)
    alone_fw = []
    for r in range(4):
        one = speculative_beam(model, memory.__class__(memory.states[r:r + 1], memory.mask[r:r + 1]), w.constraint,
                               6, 2, heads=heads, spec=spec, seen=[w.seen[r]], draft_width=2)
        assert torch.equal(one.codes[0], both.codes[r])
        torch.testing.assert_close(one.cum[0], both.cum[r])
        alone_fw.append(one.stats.target_forwards)
    assert alone_fw[0] < alone_fw[1]                          # the perfect request alone needs fewer forwards
    lock = speculative_beam(_lock_step(model), memory, w.constraint, 6, 2, heads=heads, spec=spec, seen=w.seen,
                            draft_width=2)
    assert torch.equal(lock.codes, both.codes)
    assert both.stats.target_forwards < lock.stats.target_forwards
    assert both.stats.accepted > lock.stats.accepted
