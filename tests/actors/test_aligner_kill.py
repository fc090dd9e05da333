"""A real kill of an alignment round: SIGKILL the process running ``run_round``, during training and during
the publish; the registry then holds no half-written version and the next round with the same version name
publishes cleanly (issue 16, "Kill the aligner mid-round").

Each round runs in a child process (``python -c``) on the same tiny world as tests/actors/test_aligner.py,
from a ``base`` version published here. The child marks the moment with a file: when training starts
(its training never ends on its own), or — in the registry's publish — after ``weights.safetensors`` is
written and before ``config.json`` and ``meta.json`` are (it then sleeps there). The test waits for the
mark and kills the child with SIGKILL: no handler, no ``finally``, exactly what a crash or the OOM killer does.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from actors.aligner import RoundData, WorldValueScorer, run_round
from actors.model_registry import ModelRegistry, RegistryError
from models.alignment.config import AlignConfig
from tiny_generator import tiny_base

torch.set_num_threads(1)

ROOT = Path(__file__).resolve().parents[2]
WORLD = dict(seed=0, n_users=80, n_items=120)
# the NDCG guard off: a tiny world's held-out NDCG is noise, and this test is about the kill, not the guard
ROUND = dict(user_share=1.0, max_users=30, n_candidates=4, steps=4, pair_batch=8, ntp_batch=16, beta=0.5,
             lr=1e-3, eval_users=8, eval_beam=4, guard_every=0, seed=0)

CHILD = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    import torch
    torch.set_num_threads(1)
    import actors.aligner as al
    from actors.model_registry import ModelRegistry
    from actors.train_job import interactions_from_records
    from ingest.synthetic import SyntheticWorld, WorldConfig
    from models.alignment.config import AlignConfig

    registry_uri, where, mark, world_kw, round_kw = sys.argv[1], sys.argv[2], Path(sys.argv[3]), eval(sys.argv[4]), eval(sys.argv[5])
    world = SyntheticWorld(WorldConfig.small(**world_kw))
    ds = world.dataset()
    data = interactions_from_records("synthetic", ds.user_events, ds.item_events)
    registry = ModelRegistry(registry_uri)
    if where == "training":
        round_kw["steps"] = 10**9                       # training that only the kill ends
        real_train = al.train_in_process

        def train(*a, **k):
            mark.write_text("training")
            return real_train(*a, **k)

        al.train_in_process = train
    else:
        real_put = registry._put

        def put(path, data_):
            if path.endswith("/config.json"):           # weights.safetensors is written, config and meta are not
                mark.write_text("publishing")
                time.sleep(600)
            real_put(path, data_)

        registry._put = put
    truth = al.WorldValueScorer(world, data.split.item_ids, draws=4)
    al.run_round(AlignConfig(**round_kw), registry, al.RoundData(data.split), truth, parent="base", version="k1",
                 say=lambda _: None)
    print("the round finished before it was killed", flush=True)
""")


@pytest.fixture(scope="module")
def base():
    tb = tiny_base(WORLD["n_users"], WORLD["n_items"], d_model=16, epochs=1, seed=WORLD["seed"])
    return tb.world, tb.data, tb.bundle


def _start(registry: ModelRegistry, where: str, mark: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.Popen([sys.executable, "-c", CHILD, registry.uri, where, str(mark), repr(WORLD), repr(ROUND)],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _kill_at_mark(proc: subprocess.Popen, mark: Path, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not mark.exists():
        if proc.poll() is not None:
            pytest.fail(f"the round ended (rc {proc.returncode}) before the kill point:\n{proc.stdout.read()[-3000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail("the round never reached the kill point")
        time.sleep(0.05)
    time.sleep(0.3)                                   # well inside the step: training runs on, the publish sleeps
    assert proc.poll() is None, "the child is gone before the kill"
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait(30) == -signal.SIGKILL


def test_sigkill_during_training_and_during_publish_leaves_no_half_version(base, tmp_path):
    world, data, bundle = base
    regs = {}
    procs = {}
    for where in ("training", "publish"):            # both children at once: the test waits for the slower
        reg = ModelRegistry(str(tmp_path / f"registry-{where}"))
        reg.publish("base", bundle)
        regs[where] = reg
        procs[where] = _start(reg, where, tmp_path / f"{where}.mark")
    for where, proc in procs.items():
        _kill_at_mark(proc, tmp_path / f"{where}.mark")

    vdir = Path(regs["training"].uri) / "versions" / "k1"
    assert not (vdir / "meta.json").exists() and not (vdir / "weights.safetensors").exists()
    vdir = Path(regs["publish"].uri) / "versions" / "k1"
    assert (vdir / "weights.safetensors").is_file() and not (vdir / "meta.json").exists()   # killed mid-publish

    truth = WorldValueScorer(world, data.split.item_ids, draws=4)
    for where, reg in regs.items():
        fresh = ModelRegistry(reg.uri)                # a new process's view of the registry after the crash
        assert [v.version for v in fresh.versions()] == ["base"], where
        with pytest.raises(RegistryError, match="not in the registry"):
            fresh.load("k1")
        rep = run_round(AlignConfig(**ROUND), fresh, RoundData(data.split), truth, parent="base", version="k1",
                        say=lambda _: None)
        assert rep.published, (where, rep.refused)
        assert [v.version for v in fresh.versions()] == ["base", "k1"], where
        assert fresh.info("k1").parent == "base"
        loaded = fresh.load("k1").model               # both files match the new meta.json digests
        assert any(not torch.equal(a, b) for a, b in zip(loaded.state_dict().values(),
                                                          bundle.model.state_dict().values()))
