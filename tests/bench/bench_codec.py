"""Suite ``codec``: decode + validate of ``user-events`` messages on one core, beside ``json.loads``.

Both run over the same encoded messages (the synthetic world's events, with
their optional fields) in the same process; ``decode_validate_eps`` is
:func:`ingest.codec.decode` (size check, parse and full contract validation
into a typed record), ``json_loads_eps`` is the standard library parsing the
same bytes into dicts with no validation at all. Each rate is the best of
several repetitions (the machine is shared). Target: decode + validate
>= 300k events/s. ``regex_id_decode_eps`` decodes the same messages into a
twin of ``UserEvent`` whose ids are checked by a msgspec regex ``pattern``
(how the contract first did it; no ``__post_init__``), the baseline for the
contract's faster id check.
"""


import json
import time

import msgspec

SUITE = "codec"


def _rate(fn, msgs, reps: int) -> float:
    best = 0.0
    for _ in range(reps):
        t0 = time.perf_counter()
        fn(msgs)
        best = max(best, len(msgs) / (time.perf_counter() - t0))
    return best


def _regex_id_twin():
    """``UserEvent`` with its ids checked by the ``Id`` regex pattern instead of ``__post_init__``."""
    from typing import Annotated

    from msgspec import Meta, Struct

    from ingest.contract import ContextValue, EventType, Id, TimestampMs

    class RegexIdUserEvent(Struct, frozen=True, omit_defaults=True):
        event_id: Id
        user_id: Id
        item_id: Id
        type: EventType
        ts: TimestampMs
        watch_ms: Annotated[int, Meta(ge=0, le=86_400_000)] | None = None
        request_id: Id | None = None
        position: Annotated[int, Meta(ge=0, le=10_000)] | None = None
        value: float | None = None
        context: dict[Annotated[str, Meta(max_length=64)], ContextValue] | None = None

    return RegexIdUserEvent


def run(quick: bool = False, dataset: str | None = None) -> dict:
    from ingest.codec import decode, encode
    from ingest.contract import USER_EVENTS, replace
    from ingest.synthetic import SyntheticWorld, WorldConfig

    world = SyntheticWorld(WorldConfig.small() if quick else WorldConfig())
    events = world.user_events
    # Served-session answers carry request_id/position/context: include some so optional fields are parsed.
    events = [replace(e, request_id=f"r{i // 10}", position=i % 10, context={"surface": "home", "dwell": 1.5})
              if i % 4 == 0 else e for i, e in enumerate(events)]
    msgs = [encode(e) for e in events]
    reps = 3 if quick else 5

    def loads(ms):
        for m in ms:
            json.loads(m)

    def dec(ms):
        for m in ms:
            decode(USER_EVENTS, m)

    # Baseline for the contract's id check: the same record with the ids validated by a msgspec regex
    # pattern (contract.Id), as the contract first did.
    regex_dec = msgspec.json.Decoder(_regex_id_twin())

    def dec_regex(ms):
        for m in ms:
            regex_dec.decode(m)

    assert decode(USER_EVENTS, msgs[0]) == events[0]
    j = _rate(loads, msgs, reps)
    d = _rate(dec, msgs, reps)
    r = _rate(dec_regex, msgs, reps)
    mean_bytes = sum(map(len, msgs)) / len(msgs)
    return {
        "config": {"messages": len(msgs), "mean_bytes": round(mean_bytes, 1), "repetitions": reps,
                   "library": "msgspec (typed Struct decoder)"},
        "metrics": {
            "decode_validate_eps": round(d),
            "json_loads_eps": round(j),
            "decode_validate_over_json_loads": round(d / j, 3),
            "decode_validate_mb_s": round(d * mean_bytes / 1e6, 1),
            "regex_id_decode_eps": round(r),
            "decode_validate_over_regex_ids": round(d / r, 3),
        },
    }
