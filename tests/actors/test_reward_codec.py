"""The joiner's batch decoders accept exactly what the contract accepts; its WireReward encodes as a Reward."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "ingest"))  # the shared contract strategies
from contract_strategies import rewards, served, user_events  # noqa: E402

from actors.reward_codec import (  # noqa: E402
    EventBatchDecoder,
    ServedBatchDecoder,
    WireReward,
    WireServed,
    encode_rewards,
)
from ingest.codec import ContractError, decode, encode  # noqa: E402
from ingest.contract import SERVED, USER_EVENTS, Reward, Served  # noqa: E402

SERVED_DEC, EVENT_DEC = ServedBatchDecoder(), EventBatchDecoder()
BASE = {"request_id": "r1", "user_id": "u1", "ts": 5, "model_version": "v1", "experiment": "e", "arm": "a",
        "items": ["i1", "i2"], "sids": [[1, 2], [3]], "scores": [0.5, 0.25]}


def _accepts(topic: str, raw: bytes):
    try:
        return decode(topic, raw)
    except ContractError:
        return None


def _batch(dec, raw: bytes):
    try:
        return dec([raw])[0]
    except (ValueError, msgspec.MsgspecError):
        return None


def test_wire_structs_have_the_contract_fields_and_defaults():
    assert WireServed.__struct_fields__ == Served.__struct_fields__
    def defaults(cls):  # a mutable default ({}) is kept as a factory
        return [d.factory() if hasattr(d, "factory") else d for d in cls.__struct_defaults__]

    assert defaults(WireServed) == defaults(Served)
    assert WireReward.__struct_fields__ == Reward.__struct_fields__


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(served(), min_size=1, max_size=6))
def test_valid_served_runs_decode_to_the_contract_fields(records):
    raws = [encode(r) for r in records]
    got = SERVED_DEC(raws)
    assert [msgspec.structs.asdict(g) for g in got] == [msgspec.structs.asdict(decode(SERVED, r)) for r in raws]


_SERVED_MUTATIONS = st.sampled_from([
    ("request_id", "a b"), ("user_id", "u\t1"), ("model_version", "v\n"), ("request_id", ""), ("user_id", None),
    ("ts", -1), ("ts", 10**14 + 1), ("ts", "5"), ("items", ["i 1"]), ("items", ["i1", "x\u2003y"]),
    ("items", ["i1"]), ("sids", [[1]]), ("scores", [0.5]), ("sids", [[-1], [2]]), ("scores", ["x", 1.0]),
    ("experiment", "e" * 129), ("arm", None), ("decode", {"k": [1]}), ("latency_ms", -1.0), ("latency_ms", "1"),
    ("latency_ms", None), ("extra_field", 1), ("items", [""] * 2), ("scores", [1e308, 0.0]),
])


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(served(), _SERVED_MUTATIONS)
def test_a_mutated_served_record_is_accepted_only_if_the_contract_accepts_it(rec, mutation):
    obj = msgspec.to_builtins(rec)
    name, value = mutation
    obj[name] = value
    raw = json.dumps(obj).encode()
    contract, batch = _accepts(SERVED, raw), _batch(SERVED_DEC, raw)
    assert (contract is None) == (batch is None), (raw, contract, batch)
    if batch is not None:
        assert msgspec.structs.asdict(batch) == msgspec.structs.asdict(contract)


@pytest.mark.parametrize("raw", [
    b"{not json", b"", b"null", b"[]", b'{"request_id":"r"}',
    json.dumps({**BASE, "scores": [float("nan"), 0.0]}).encode(),
    json.dumps({**BASE, "scores": [1e999, 0.0]}).encode().replace(b"Infinity", b"1e999"),
    json.dumps(BASE).encode() + json.dumps(BASE).encode(),
])
def test_malformed_or_non_finite_served_messages_are_rejected_by_both(raw):
    assert _accepts(SERVED, raw) is None and _batch(SERVED_DEC, raw) is None


def test_one_bad_message_rejects_the_whole_run():
    good = json.dumps(BASE).encode()
    assert len(SERVED_DEC([good, good])) == 2
    with pytest.raises(ValueError, match="whitespace"):
        SERVED_DEC([good, json.dumps({**BASE, "items": ["a", "b c"]}).encode()])
    with pytest.raises(ValueError, match="equal lengths"):
        SERVED_DEC([good, json.dumps({**BASE, "scores": [1.0]}).encode()])
    ev = {"event_id": "e1", "user_id": "u1", "item_id": "i1", "type": "click", "ts": 5, "request_id": "r1"}
    assert len(EVENT_DEC([json.dumps(ev).encode()])) == 1
    with pytest.raises(ValueError, match="whitespace"):
        EVENT_DEC([json.dumps(ev).encode(), json.dumps({**ev, "request_id": "r 1"}).encode()])


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(user_events, min_size=1, max_size=6))
def test_valid_event_runs_decode_to_the_contract_fields(events):
    raws = [encode(e) for e in events]
    got = EVENT_DEC(raws)
    want = [decode(USER_EVENTS, r) for r in raws]
    assert [msgspec.structs.asdict(g) for g in got] == [msgspec.structs.asdict(w) for w in want]


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(rewards)
def test_wire_reward_encodes_to_the_same_bytes_as_the_reward(r):
    wire = WireReward(**msgspec.structs.asdict(r))
    assert msgspec.json.encode(wire) == encode(r)
    ((key, value),) = encode_rewards([wire])
    assert key == r.user_id.encode("utf-8") and decode("rewards", value) == r
