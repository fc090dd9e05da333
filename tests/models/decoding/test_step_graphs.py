"""Step graphs: compiled decoder step forwards decode exactly what the eager model decodes."""

from __future__ import annotations

import pytest
import torch
from torch._dynamo.utils import counters

from fastdec_helpers import random_world, one_thread  # noqa: F401
from models.decoding.generate import generate
from models.decoding.settings import DecodeSettings
from models.decoding.step_graphs import GraphedSteps, graphed
from models.generator.mtp import MTPConfig, MTPHeads

pytestmark = pytest.mark.usefixtures("one_thread")

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
LOSSLESS = ("greedy", "beam", "spec_greedy", "spec_beam")


def _world(device: str):
    w = random_world(21, b=3, n_items=24, session_len=4)
    heads = MTPHeads(MTPConfig(w.model.cfg.level_sizes, w.model.cfg.d_model)).double().eval()
    return w, w.model.to(device), heads.init_from_generator(w.model).to(device)


@pytest.mark.parametrize("device", DEVICES)
def test_compiled_steps_decode_every_lossless_mode_as_eager_does(device):
    w, model, heads = _world(device)
    memory = model.encode(w.hist.to(device))
    modes = ["compile"] + (["cuda_graphs"] if device == "cuda" else [])
    for mode in LOSSLESS:
        kw = dict(mode=mode, beam_width=3, draft_len=2, session_len=4)
        ref = generate(model, memory, w.constraint, DecodeSettings(**kw), seen=w.seen, mtp_heads=heads)
        for graphs in modes:
            got = generate(model, memory, w.constraint, DecodeSettings(**kw, step_graphs=graphs), seen=w.seen,
                           mtp_heads=heads)
            assert torch.equal(got.sids, ref.sids), (mode, graphs)
            assert torch.equal(got.items, ref.items), (mode, graphs)
            torch.testing.assert_close(got.scores, ref.scores, atol=1e-9, rtol=0)
            assert got.stats["target_forwards"] == ref.stats["target_forwards"], (mode, graphs)
    assert isinstance(graphed(model, "compile"), GraphedSteps)


def test_graphs_are_made_once_per_model_and_reused():
    w, model, heads = _world("cpu")
    s = DecodeSettings("beam", beam_width=3, session_len=4, step_graphs="compile")
    assert graphed(model, "compile") is graphed(model, "compile")
    assert graphed(model, "eager") is model
    generate(model, w.memory, w.constraint, s, seen=w.seen)          # warm-up: the graphs of these shapes
    made = counters["stats"]["unique_graphs"]
    again = generate(model, w.memory, w.constraint, s, seen=w.seen)
    assert counters["stats"]["unique_graphs"] == made                 # same shapes: nothing recompiled
    assert torch.equal(again.sids, generate(model, w.memory, w.constraint,
                                            DecodeSettings("beam", beam_width=3, session_len=4), seen=w.seen).sids)


def test_a_cached_wrapper_does_not_keep_its_model_alive():
    import gc
    import weakref

    w = random_world(4, b=1)
    g = graphed(w.model, "compile")
    ref = weakref.ref(w.model)
    del w
    gc.collect()
    assert ref() is None                                  # the weak-keyed cache and the wrapper let it go
    with pytest.raises(RuntimeError, match="garbage-collected"):
        g.decode(None, None)


def test_bad_switch_values_are_refused_with_the_fix():
    with pytest.raises(ValueError, match="eager, compile, cuda_graphs"):
        DecodeSettings(step_graphs="on")
    assert DecodeSettings.from_dict({"step_graphs": "compile"}).step_graphs == "compile"
    w = random_world(3, b=1)
    with pytest.raises(ValueError, match="needs the model on CUDA"):
        graphed(w.model, "cuda_graphs")
    with pytest.raises(TypeError, match="model itself"):
        graphed(graphed(w.model, "compile"), "compile")
