"""RecommendPath (the ingress's recommend, also the benchmark's in-process baseline) on the real broker:
the answer is encoded only after its ``served`` record is acknowledged, and a failed generation
leaves no record."""

from __future__ import annotations

import asyncio

import msgspec
import pytest

from ingest.contract import SERVED
from ingest.kafka_client import KafkaConfig
from ingest.topics import ensure_topics
from serving.requests import RecResult
from serving.experiments.config import ExperimentRegistry
from serving.metrics import ServingMetrics
from serving.recommend_path import RecommendPath, ServedLog, Unavailable
from tests.serving.conftest import EXPERIMENTS


def _served(kafka):
    from ingest.consumer_loop import ConsumerConfig, ContractConsumer

    with ContractConsumer(kafka, SERVED, config=ConsumerConfig(poll_timeout_ms=100)) as c:
        return [r for b in c.drain(until_empty_polls=2, timeout_s=30) for r in b.records()]


def test_answer_follows_its_acked_served_record_and_failures_leave_none(broker, topic_name):
    kafka = KafkaConfig(bootstrap=broker, namespace=topic_name + ".")
    ensure_topics(kafka)
    log = ServedLog(kafka)
    metrics = ServingMetrics()
    path = RecommendPath(ExperimentRegistry(source=EXPERIMENTS), log, metrics)
    seen = []

    async def ok(req):
        seen.append(req)
        await asyncio.sleep(0.02)  # generation takes 20 ms: the served record's latency includes it
        return RecResult(items=["a", "b"], sids=[[1, 2, 0], [3, 1, 0]], scores=[-0.5, -1.0], stats={"batch_size": 1})

    async def broken(req):
        return RecResult(error="decode mode 'mtp' failed: no heads")

    async def go():
        body, timings = await path.run("user-1", 2, True, ok)
        with pytest.raises(Unavailable) as e:
            await path.run("user-2", 2, True, broken)
        return body, timings, e.value

    try:
        body, timings, err = asyncio.run(go())
    finally:
        log.close()
    ans = msgspec.json.decode(body)
    assert [x["item_id"] for x in ans["items"]] == ["a", "b"] and ans["items"][0]["sid"] == [1, 2, 0]
    assert seen[0].user_id == "user-1" and seen[0].k == 2 and seen[0].model_version == ans["model_version"]
    assert timings["log_ms"] > 0 and timings["total_ms"] >= timings["recommender_ms"] + timings["log_ms"]
    assert err.reason == "backend" and "no heads" in err.detail
    records = _served(kafka)
    assert [(r.request_id, r.user_id, r.items, r.arm) for r in records] == \
        [(ans["request_id"], "user-1", ["a", "b"], ans["arm"])]
    # the ingress's latency up to writing the record: generation included, the produce ack not
    assert 20 <= records[0].latency_ms <= timings["total_ms"] - timings["log_ms"] + 1e-3
    assert b"genrec_served_total" in metrics.render()


def test_request_ids_are_32_hex_digits_and_unique():
    from serving.recommend_path import new_request_id

    ids = [new_request_id() for _ in range(20_000)]
    assert all(len(i) == 32 and int(i, 16) >= 0 for i in ids)
    assert len(set(ids)) == len(ids)


def test_the_decode_section_is_what_a_request_starts_from_and_arms_override_it(broker, topic_name):
    from models.decoding.settings import DecodeSettings

    kafka = KafkaConfig(bootstrap=broker, namespace=topic_name + ".")
    ensure_topics(kafka)
    log = ServedLog(kafka)
    only_beam = "default: {model_version: v1, decode: {mode: beam}}\nlayers: []\n"
    path = RecommendPath(ExperimentRegistry(source=only_beam), log,
                         decode_defaults=DecodeSettings(beam_width=3, temperature=0.5))
    seen = []

    async def ok(req):
        seen.append(req)
        return RecResult(items=["a"], sids=[[1, 2, 0]], scores=[-0.5])

    try:
        asyncio.run(path.run("user-1", 1, True, ok))
    finally:
        log.close()
    # the section's non-default fields, then the experiment's (mode), nothing else
    assert seen[0].decode == DecodeSettings("beam", beam_width=3, temperature=0.5)
