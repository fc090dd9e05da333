"""Hypothesis strategies for valid contract records (shared by the property-based tests)."""

from __future__ import annotations

from hypothesis import strategies as st

from ingest.contract import EVENT_TYPES, DeadLetter, ItemEvent, Reward, Served, UserEvent

ids = st.text(st.characters(blacklist_categories=("Z", "Cc", "Cs"), blacklist_characters=" \t\n\r\x0b\x0c\x85"),
              min_size=1, max_size=40)
ts = st.integers(0, 10**14)
finite = st.floats(allow_nan=False, allow_infinity=False, width=64)
text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=80)
ctx_value = st.one_of(st.none(), st.booleans(), st.integers(-2**53, 2**53), finite, text)

user_events = st.builds(
    UserEvent, event_id=ids, user_id=ids, item_id=ids, type=st.sampled_from(EVENT_TYPES), ts=ts,
    watch_ms=st.none() | st.integers(0, 86_400_000), request_id=st.none() | ids,
    position=st.none() | st.integers(0, 10_000), value=st.none() | finite,
    context=st.none() | st.dictionaries(st.text(max_size=20), ctx_value, max_size=5))

item_events = st.builds(
    ItemEvent, item_id=ids, ts=ts, op=st.sampled_from(["upsert", "retire"]), title=st.none() | text,
    text=st.none() | text, tags=st.none() | st.lists(st.text(min_size=1, max_size=20), max_size=6),
    creator=st.none() | ids, embedding=st.none() | st.lists(finite, min_size=1, max_size=16))


@st.composite
def served(draw):
    n = draw(st.integers(0, 6))
    return Served(request_id=draw(ids), user_id=draw(ids), ts=draw(ts), model_version=draw(ids),
                  experiment=draw(text), arm=draw(text), items=draw(st.lists(ids, min_size=n, max_size=n)),
                  sids=draw(st.lists(st.lists(st.integers(0, 2**40), max_size=4), min_size=n, max_size=n)),
                  scores=draw(st.lists(finite, min_size=n, max_size=n)),
                  decode=draw(st.dictionaries(st.text(max_size=10), ctx_value, max_size=4)),
                  latency_ms=draw(st.none() | st.floats(0, 1e7, allow_nan=False, allow_infinity=False)))


rewards = st.builds(
    Reward, request_id=ids, user_id=ids, experiment=text, arm=text, model_version=ids,
    components=st.dictionaries(st.text(max_size=20), finite, max_size=5), reward=finite,
    window_closed_ts=ts, ts=ts)

dead_letters = st.builds(
    DeadLetter, source_topic=text, partition=st.integers(0, 2**31 - 1), offset=st.integers(0, 2**62),
    raw_b64=text, error=text, ts=ts, key=st.none() | text)
