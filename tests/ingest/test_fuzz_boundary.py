"""Kafka boundary fuzz over the real broker: every consumer dead-letters bad input with a reason, never
crashes, and its counts reconcile (inputs = dead letters + valid records applied).

Hypothesis draws the inputs (tests/ingest/boundary_fuzz.py: random bytes, truncated and oversized
messages, wrong types, valid JSON of another record kind, null values, a flood of one key, mixed with
valid records); each example runs the real consumer — sequence shard, item indexer, reward joiner,
archive — in a fresh namespace on the session's embedded broker. Few examples, each a few hundred
messages, so a test takes seconds; ``genrec bench fuzz`` runs more.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from ingest.contract import ITEM_EVENTS, REWARDS, SERVED, USER_EVENTS

from boundary_fuzz import DATA_TOPICS, DIM, boundary_inputs, contract_valid, run_archive, run_consumer

FUZZ = settings(max_examples=2, deadline=None, database=None, derandomize=True, phases=[Phase.generate],
                suppress_health_check=list(HealthCheck))


@pytest.fixture(scope="module")
def tokenizer():
    from models.sid.rq_kmeans import RQKMeans, RQKMeansConfig

    rng = np.random.default_rng(0)
    centers = np.random.default_rng(99).normal(size=(12, DIM))
    emb = (centers[rng.integers(0, 12, 600)] + 0.4 * rng.normal(size=(600, DIM))).astype(np.float32)
    return RQKMeans(RQKMeansConfig(codebook_size=16, n_iter=8)).fit(emb)


def _check(res) -> None:
    assert res.inputs > res.contract_invalid > 0 and res.applied > 0, (res.topic, res.problems())  # both kinds tried
    assert res.problems() == [], res.problems()


@pytest.mark.parametrize("consumer, topic", [("sequence_shard", USER_EVENTS), ("item_indexer", ITEM_EVENTS),
                                             ("reward_joiner", SERVED)])
def test_consumer_dead_letters_every_bad_input_and_reconciles(consumer, topic, broker, tmp_path, tokenizer):
    @FUZZ
    @given(boundary_inputs(topic))
    def check(msgs):
        _check(run_consumer(consumer, broker, msgs, tmp_path / consumer, tokenizer=tokenizer))

    check()


def test_archive_dead_letters_every_bad_input_of_every_topic_and_reconciles(broker, tmp_path):
    @FUZZ
    @given(st.fixed_dictionaries({t: boundary_inputs(t, min_size=10, max_size=20, flood=20) for t in DATA_TOPICS}))
    def check(per_topic):
        for res in run_archive(broker, per_topic, tmp_path / "arch"):
            _check(res)

    check()


def test_the_oracle_rejects_each_kind_of_bad_input():
    """The inputs the harness calls bad are bad by the contract (a harness that sent only valid data
    would make the consumer tests pass vacuously)."""
    from ingest.codec import encode
    from ingest.contract import MAX_MESSAGE_BYTES, UserEvent

    ok = encode(UserEvent(event_id="e1", user_id="u1", item_id="i1", type="click", ts=5))
    assert contract_valid(USER_EVENTS, ok)
    for bad in (None, b"", ok[:-1], b"\xff" + ok, b"[]", b"null",
                ok.replace(b'"ts":5', b'"ts":"5"'), ok.replace(b'"click"', b'"klick"'),
                b'{"event_id": "' + b"x" * MAX_MESSAGE_BYTES + b'"}'):
        assert not contract_valid(USER_EVENTS, bad), bad[:40] if bad else bad
    assert not contract_valid(SERVED, ok) and not contract_valid(REWARDS, ok)
