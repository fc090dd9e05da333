"""RecommenderProcess: the recommender in a child process, on the session's real broker.

The child builds the real backend (model, live catalog, Kafka history feed); the
parent calls it over a pipe. Checked: the answers equal the same backend's in
this process, concurrent requests are batched in the child (greedy ones continuously,
beam ones in static batches), every method is forwarded, a child killed with SIGKILL
fails the waiting calls (never hangs them) and marks the process dead, and a child
that cannot start says why.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
import uuid

import numpy as np
import pytest

from models.decoding.settings import DecodeSettings
from serving.requests import ModelSpec, RecRequest
from serving.decode_process import RecommenderProcess, RecommenderProcessDied
from serving.recommender import build_backend
from serving.recommender_config import RecommenderConfig

LEVELS = (8, 8, 8)


def recommender_cfg(broker, **kw) -> RecommenderConfig:
    from ingest.contract import UserEvent
    from ingest.kafka_client import KafkaConfig
    from ingest.producer import EventProducer
    from ingest.topics import ensure_topics

    kafka = KafkaConfig(bootstrap=broker, namespace=f"dp-{uuid.uuid4().hex[:8]}.")
    ensure_topics(kafka)
    ids = [f"it{i}" for i in range(60)]
    rng = np.random.default_rng(0)
    sids = np.stack([rng.integers(0, 8, 60), rng.integers(0, 8, 60), np.zeros(60, int)], 1)
    sids[:, 2] = [sum(1 for j in range(i) if (sids[j, :2] == sids[i, :2]).all()) for i in range(60)]
    with EventProducer(kafka) as p:
        for u in range(12):
            for j in range(4):
                p.send(UserEvent(f"e{u}-{j}", f"u{u}", ids[(u * 7 + j) % 60], "click", 1000 + j))
    spec = ModelSpec("v1", {"d_model": 32, "heads": 2, "enc_layers": 1, "dec_layers": 1, "max_history": 20,
                            "level_sizes": LEVELS}, seed=3)
    return RecommenderConfig(kafka=kafka, level_sizes=LEVELS, models=(spec,), seed_catalog=(ids, sids),
                             item_feed=False, max_batch_size=8, **kw)


@pytest.fixture(scope="module")
def cfg(broker):
    return recommender_cfg(broker)


@pytest.fixture(scope="module")
def proc(cfg):
    p = RecommenderProcess(cfg)
    yield p
    p.close()


def _req(u: int) -> RecRequest:
    return RecRequest(f"u{u}", 3, "v1", DecodeSettings("greedy"), True)


def test_answers_equal_the_in_process_backend_and_are_batched_in_the_child(cfg, proc):
    local = build_backend(cfg)
    try:
        want = [(r.items, r.sids) for r in local.recommend([_req(u) for u in range(12)])]
    finally:
        for f in local.feeds:
            f.stop()

    async def main():
        return await asyncio.gather(*(proc.recommend(_req(u)) for u in range(12)))

    got = asyncio.run(main())
    assert [(r.items, r.sids) for r in got] == want
    assert all(len(r.items) == 3 and r.error is None for r in got)
    assert max(r.stats["batch_size"] for r in got) > 1, "concurrent requests must share a batch"
    assert max(r.stats["batch_size"] for r in got) <= 8
    assert all(r.stats["batch_wait_ms"] >= 0 for r in got)
    assert proc.child_pid != os.getpid()
    # decoding gets a core first: the child runs below the parent's nice value where that is permitted
    nice = os.getpriority(os.PRIO_PROCESS, proc.child_pid)
    assert nice == min(cfg.process_niceness, os.getpriority(os.PRIO_PROCESS, 0)) or \
        (os.geteuid() != 0 and nice == os.getpriority(os.PRIO_PROCESS, 0))


def test_every_method_is_forwarded_to_the_child(proc):
    async def main():
        return (await proc.model_versions(), await proc.is_recommendable("it1"),
                await proc.is_recommendable("nope"), await proc.item_state("it1"), await proc.status(),
                await proc.pid())

    versions, yes, no, state, st, pid = asyncio.run(main())
    assert versions == ["v1"] and yes is True and no is False
    assert state[0] == "live"
    assert st["pid"] == pid == proc.child_pid and st["decode_process"] and st["catalog_items"] == 60
    assert st["max_batch_size"] == 8 and st["continuous_steps"] > 0
    assert [name for name, _ in proc.startup_stages][-1] == "recommender: catalog and history feeds caught up"


def test_continuous_and_static_batching_give_the_in_process_answers(cfg, proc):
    """Greedy requests stream (join the running rows); beam requests beside them decode in static batches.
    Every answer equals the in-process backend's."""
    reqs = [RecRequest(f"u{u}", 2 + u % 4, "v1", DecodeSettings("greedy" if u % 3 else "beam", beam_width=2),
                       bool(u % 2)) for u in range(12)]
    local = build_backend(cfg)
    try:
        want = [(r.items, r.sids) for r in local.recommend(reqs)]
    finally:
        for f in local.feeds:
            f.stop()

    async def run_all():
        return await asyncio.gather(*(proc.recommend(r) for r in reqs))

    got = asyncio.run(run_all())
    assert [(r.items, r.sids) for r in got] == want
    for r, q in zip(got, reqs):
        assert len(r.items) == q.k and r.error is None
        assert bool(r.stats.get("continuous")) == (q.decode.mode == "greedy")
        assert r.stats["batch_wait_ms"] >= 0 and 1 <= r.stats["batch_size"] <= 8


def test_errors_in_the_child_are_raised_where_the_caller_awaits(proc):
    async def main():
        with pytest.raises(ValueError, match="no model registry"):
            await proc.load_model("v9")
        res = await proc.recommend(RecRequest("u1", 3, "v9", DecodeSettings("greedy"), True))
        assert res.error and "unknown model version" in res.error
        return await proc.model_versions()      # the child is still serving

    assert asyncio.run(main()) == ["v1"]


def test_a_killed_child_fails_the_waiting_calls_and_marks_the_process_dead(cfg):
    p = RecommenderProcess(cfg)
    try:
        async def main():
            calls = [asyncio.ensure_future(p.recommend(_req(u % 12))) for u in range(40)]
            await asyncio.sleep(0)
            os.kill(p.child_pid, signal.SIGKILL)
            out = await asyncio.wait_for(asyncio.gather(*calls, return_exceptions=True), 30)
            later = await asyncio.gather(p.status(), return_exceptions=True)
            return out, later

        out, later = asyncio.run(main())
        died = [o for o in out if isinstance(o, RecommenderProcessDied)]
        assert died, "calls in flight when the child died must fail, not hang"
        assert all(isinstance(o, RecommenderProcessDied) or (o.items and o.error is None) for o in out)
        assert p.alive is False
        assert isinstance(later[0], RecommenderProcessDied)
    finally:
        p.close()


def test_a_bad_niceness_is_refused_with_its_range(cfg):
    from dataclasses import replace

    with pytest.raises(ValueError, match="process_niceness=30.*-20..19"):
        replace(cfg, process_niceness=30)


def test_a_child_that_cannot_start_says_why(cfg, tmp_path):
    from dataclasses import replace

    bad = replace(cfg, models=(ModelSpec("nonexistent", registry=str(tmp_path / "registry")),))
    t = time.monotonic()
    with pytest.raises(RuntimeError, match="could not start.*'nonexistent' is not in the registry"):
        RecommenderProcess(bad)
    assert time.monotonic() - t < 120


def test_the_child_exits_when_the_parent_side_closes(cfg):
    p = RecommenderProcess(cfg)
    pid = p.child_pid
    p.close()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and os.path.exists(f"/proc/{pid}") and \
            open(f"/proc/{pid}/stat").read().split()[2] != "Z":
        time.sleep(0.1)
    assert not os.path.exists(f"/proc/{pid}") or open(f"/proc/{pid}/stat").read().split()[2] == "Z"


def test_the_child_reads_histories_from_the_sequence_shard_actors(broker, tmp_path):
    """history='shards': the child joins the parent's Ray cluster and finds the shards by name."""
    import ray

    from actors.checkpoint import CheckpointConfig
    from actors.supervisor import SequenceSupervisor, SupervisorConfig
    from tests.serving.conftest import start_ray

    base = recommender_cfg(broker)          # its user-events: 12 users x 4 clicks
    started = start_ray()
    try:
        sup_cfg = SupervisorConfig(kafka=base.kafka, checkpoint=CheckpointConfig(uri=str(tmp_path)), num_shards=1,
                                   monitor_s=0)
        with SequenceSupervisor(sup_cfg) as sup:
            sup.wait_ready()
            deadline = time.monotonic() + 60
            while sup.histories(["u3"])["lengths"][0] < 4 and time.monotonic() < deadline:
                time.sleep(0.2)
            spec = sup.router_spec()
            from dataclasses import replace

            cfg = replace(base, history="shards", shard_names=tuple(spec["names"]),
                          shard_namespace=spec["namespace"], num_partitions=spec["num_partitions"])
            p = RecommenderProcess(cfg)
            try:
                async def main():
                    return await p.status(), await asyncio.gather(*(p.recommend(_req(u)) for u in range(12)))

                st, out = asyncio.run(main())
            finally:
                p.close()
        assert st["history"]["source"] == "shards" and "error" not in st["history"], st["history"]
        assert st["history"]["users"] == 12
        for u, r in enumerate(out):   # exclude_seen: the clicks the shard holds are never recommended
            seen = {f"it{(u * 7 + j) % 60}" for j in range(4)}
            assert r.error is None and len(r.items) == 3 and not (set(r.items) & seen), (u, r.items)
    finally:
        if started:
            ray.shutdown()
