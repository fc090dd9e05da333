"""The batch user-events decoder accepts exactly what the contract accepts, and gives the same fields."""

from __future__ import annotations

import json

import msgspec
import pytest
from contract_strategies import user_events
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ingest.codec import ContractError, decode, encode
from ingest.codec_batch import UserEventColumns, UserEventColumnsDecoder, WireUserEvent
from ingest.contract import USER_EVENTS, UserEvent

DEC = UserEventColumnsDecoder()
FIELDS = ("event_id", "user_id", "item_id", "type", "ts", "watch_ms")
BASE = {"event_id": "e1", "user_id": "u1", "item_id": "i1", "type": "click", "ts": 5}


def _contract_accepts(raw: bytes) -> UserEvent | None:
    try:
        return decode(USER_EVENTS, raw)
    except ContractError:
        return None


def _batch(raw: bytes) -> UserEventColumns | None:
    try:
        return DEC([raw])
    except (ValueError, msgspec.MsgspecError):
        return None


def _same(cols: UserEventColumns, records: list[UserEvent]) -> bool:
    return all(getattr(cols, f) == [getattr(r, f) for r in records] for f in FIELDS)


def test_wire_struct_has_the_contract_fields_and_defaults():
    assert WireUserEvent.__struct_fields__ == UserEvent.__struct_fields__
    assert WireUserEvent.__struct_defaults__ == UserEvent.__struct_defaults__


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(user_events, min_size=1, max_size=8))
def test_valid_runs_decode_to_the_contract_fields(events):
    raws = [encode(e) for e in events]
    cols = DEC(raws)
    assert len(cols) == len(events)
    assert _same(cols, [decode(USER_EVENTS, r) for r in raws])
    assert cols.records() == [UserEvent(**{f: getattr(e, f) for f in FIELDS}) for e in events]


# Mutations of a valid event that hit every check of UserEvent (msgspec types and bounds, __post_init__).
_MUTATIONS = st.sampled_from([
    ("event_id", "a b"), ("user_id", "u\t1"), ("item_id", "i\n"), ("request_id", " r"), ("item_id", "x\u2003y"),
    ("event_id", ""), ("user_id", "u" * 129), ("type", "teleport"), ("ts", -1), ("ts", 10**14 + 1), ("ts", "5"),
    ("ts", 1.5), ("watch_ms", -1), ("watch_ms", 86_400_001), ("position", 10_001), ("value", "x"),
    ("context", {str(k): 1 for k in range(33)}), ("context", {str(k): 1 for k in range(32)}),
    ("context", {"k" * 65: 1}), ("context", {"k": [1]}), ("context", {"k": None}), ("request_id", None),
    ("watch_ms", None), ("value", 1e308), ("extra_field", 1), ("event_id", 7), ("user_id", None),
])


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(user_events, _MUTATIONS)
def test_a_mutated_event_is_accepted_by_the_batch_decoder_only_if_the_contract_accepts_it(ev, mutation):
    obj = msgspec.to_builtins(ev)
    name, value = mutation
    obj[name] = value
    raw = json.dumps(obj).encode()
    contract, batch = _contract_accepts(raw), _batch(raw)
    assert (contract is None) == (batch is None), (raw, contract, batch)
    if batch is not None:
        assert _same(batch, [contract])


@pytest.mark.parametrize("raw", [
    b"{not json", b"", b"null", b"[]", b'{"event_id":"e"}', b"NaN",
    json.dumps({**BASE, "value": float("nan")}).encode(),           # NaN literal: not JSON
    json.dumps({**BASE, "value": 1e999}).encode().replace(b"Infinity", b"1e999"),  # overflows a float
    json.dumps(BASE).encode() + json.dumps(BASE).encode(),          # two objects in one message
    json.dumps(BASE).encode() + b",",
])
def test_malformed_or_non_finite_messages_are_rejected_by_both(raw):
    assert _contract_accepts(raw) is None and _batch(raw) is None


def test_one_bad_message_rejects_the_whole_run():
    good = json.dumps(BASE).encode()
    bad = json.dumps({**BASE, "user_id": "u 1"}).encode()
    assert len(DEC([good, good])) == 2
    with pytest.raises(ValueError, match="whitespace"):
        DEC([good, bad, good])


def test_columns_take_and_from_records():
    evs = [UserEvent(event_id=f"e{i}", user_id=f"u{i % 2}", item_id="i", type="watch", ts=i, watch_ms=i)
           for i in range(5)]
    cols = UserEventColumns.from_records(evs)
    assert cols.records() == evs
    assert cols.take([4, 1]).records() == [evs[4], evs[1]]
