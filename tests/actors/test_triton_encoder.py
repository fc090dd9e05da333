"""Triton path: a real local Triton server (PyTriton venv) serves MiniLM; the indexer embeds through it.

The PyTriton environment is created on first use (``infra.triton_server.setup``: a download of a few
minutes from the package index, cached in the user's cache directory for later runs). A machine with
no package index can opt out with ``GENREC_TRITON=off`` (the tests then skip and say so); otherwise a
server that cannot start within ``GENREC_TRITON_START_S`` seconds (default 300) fails the test.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

from actors.triton_encoder import TritonEncoder, TritonEncoderConfig
from infra.triton_server import LocalTritonServer, TritonUnavailable, setup, unavailable_reason


def test_config_is_validated():
    with pytest.raises(ValueError, match="host:port"):
        TritonEncoderConfig(url="http://127.0.0.1:8000")
    with pytest.raises(ValueError, match="protocol"):
        TritonEncoderConfig(url="127.0.0.1:8000", protocol="carrier-pigeon")


def test_unreachable_server_is_not_ready():
    enc = TritonEncoder(TritonEncoderConfig(url="127.0.0.1:9", timeout_s=1))
    assert enc.ready() is False


@pytest.fixture(scope="module")
def triton_server():
    if os.environ.get("GENREC_TRITON", "").lower() == "off":
        pytest.skip("Triton path not exercised: GENREC_TRITON=off")
    setup()     # idempotent: seconds when the cached environment is there
    reason = unavailable_reason()
    assert reason is None, reason
    try:
        server = LocalTritonServer(start_timeout_s=float(os.environ.get("GENREC_TRITON_START_S", "300"))).start()
    except TritonUnavailable as e:
        pytest.fail(f"the local Triton server did not start: {e}")
    yield server
    server.stop()


@pytest.mark.slow
@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_triton_embeddings_match_in_process_minilm(triton_server, protocol):
    from actors.text_encoder import shared_encoder

    texts = ["a rocket launch to mars", "slow-cooked lentil soup", "jazz piano trio live"] * 5
    url = triton_server.url if protocol == "http" else triton_server.grpc_url
    remote = TritonEncoder(TritonEncoderConfig(url=url, protocol=protocol, batch_size=4))
    assert remote.ready()
    got = remote.encode(texts)
    want = shared_encoder().encode(texts)
    assert got.shape == (15, 384)
    np.testing.assert_allclose(got, want, atol=1e-4)


@pytest.mark.slow
def test_indexer_embeds_through_triton(triton_server, broker, topic_name):
    from actors.item_indexer import ItemIndexer, ItemIndexerConfig
    from actors.text_encoder import shared_encoder
    from ingest.contract import DEAD_LETTERS, ITEM_EVENTS, ItemEvent
    from ingest.kafka_client import KafkaConfig
    from ingest.producer import EventProducer
    from ingest.topics import TopicsConfig, ensure_topics
    from models.sid.rq_kmeans import RQKMeans, RQKMeansConfig

    kafka = KafkaConfig(bootstrap=broker, namespace=topic_name + ".")
    ensure_topics(kafka, TopicsConfig(partitions={ITEM_EVENTS: 1, DEAD_LETTERS: 1}))
    titles = [f"{t} episode {k}" for t in ("space rocket", "lentil soup", "jazz piano", "football final")
              for k in range(6)]
    tok = RQKMeans(RQKMeansConfig(codebook_size=4, n_iter=5)).fit(shared_encoder().encode(titles))
    with EventProducer(kafka) as p:
        for i, t in enumerate(titles):
            p.send(ItemEvent(item_id=f"x{i}", ts=i, title=t))
    idx = ItemIndexer(kafka, tok, ItemIndexerConfig(name="triton", triton_url=triton_server.url))
    try:
        idx.run_until_caught_up(timeout_s=120)
        assert type(idx.encoder).__name__ == "TritonEncoder"
        assert len(idx.catalog) == len(titles) and idx.stats["encoded"] == len(titles)
        near = [n for n, _ in idx.catalog.neighbours("x0", 3)]
        assert set(near) <= {f"x{i}" for i in range(6)}
    finally:
        idx.close()
