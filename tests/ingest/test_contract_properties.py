"""Property-based round trips: wire codec and Arrow tables keep every field of every record type."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ingest.arrow_schemas import archive_schema, from_table, schema, to_table
from ingest.codec import ContractError, decode, encode
from ingest.contract import DEAD_LETTERS, ITEM_EVENTS, REWARDS, SERVED, TOPICS, USER_EVENTS

from contract_strategies import dead_letters, item_events, rewards, served, user_events

STRATEGIES = {USER_EVENTS: user_events, ITEM_EVENTS: item_events, SERVED: served(), REWARDS: rewards,
              DEAD_LETTERS: dead_letters}


@pytest.mark.parametrize("topic", sorted(STRATEGIES))
def test_wire_roundtrip(topic):
    @settings(max_examples=100, deadline=None)
    @given(STRATEGIES[topic])
    def check(rec):
        assert decode(topic, encode(rec)) == rec

    check()


@pytest.mark.parametrize("topic", sorted(STRATEGIES))
def test_arrow_and_parquet_roundtrip(topic, tmp_path):
    @settings(max_examples=25, deadline=None)
    @given(st.lists(STRATEGIES[topic], max_size=8))
    def check(recs):
        table = to_table(recs, topic)
        assert table.schema == schema(topic)
        assert from_table(table, topic) == recs
        t2 = to_table(recs, topic, partitions=[1] * len(recs), offsets=range(len(recs)))
        assert t2.schema == archive_schema(topic)
        pq.write_table(t2, tmp_path / "x.parquet")
        assert from_table(pq.read_table(tmp_path / "x.parquet"), topic) == recs

    check()


def test_every_contract_field_has_a_column():
    for topic, spec in TOPICS.items():
        assert [f.name for f in schema(topic)] == list(spec.record.__struct_fields__)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200))
def test_arbitrary_bytes_either_decode_or_raise_contract_error(raw):
    try:
        decode(USER_EVENTS, raw)
    except ContractError as e:
        assert e.reason


@settings(max_examples=100, deadline=None)
@given(user_events, st.sampled_from(["event_id", "user_id", "item_id", "type", "ts"]))
def test_missing_required_field_is_rejected_with_its_name(ev, field):
    import msgspec

    d = msgspec.to_builtins(ev)
    del d[field]
    with pytest.raises(ContractError, match=field):
        decode(USER_EVENTS, msgspec.json.encode(d))


def test_table_missing_a_field_is_a_clear_error():
    t = pa.table({"event_id": ["e"]})
    with pytest.raises(ValueError, match="lacks"):
        from_table(t, USER_EVENTS)

