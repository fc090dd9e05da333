"""Suite ``codec``: decode + validate of ``user-events`` messages on one core, beside ``json.loads``.

Both run over the same encoded messages (the synthetic world's events, with
their optional fields) in the same process; ``decode_validate_eps`` is
:func:`ingest.codec.decode` (size check, parse and full contract validation
into a typed record), ``json_loads_eps`` is the standard library parsing the
same bytes into dicts with no validation at all. Each rate is the best of
several repetitions (the machine is shared). Target: decode + validate
>= 300k events/s.

Where the time goes (measured while building this suite): the contract's id
fields carry a msgspec regex ``pattern``, which calls Python's ``re`` once per
id; the same events decoded into a twin record whose ids are checked with one
``str.split()`` in ``__post_init__`` ran 2.35x faster on the same machine.
That change was tried and backed out: ``__post_init__`` also runs when a record
is *constructed*, which made construction stricter than the wire (serving built
records from ids its own validation accepted, e.g. ``"\x1f"``).
"""

import json
import time

SUITE = "codec"


def _rate(fn, msgs, reps: int) -> float:
    best = 0.0
    for _ in range(reps):
        t0 = time.perf_counter()
        fn(msgs)
        best = max(best, len(msgs) / (time.perf_counter() - t0))
    return best


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

    assert decode(USER_EVENTS, msgs[0]) == events[0]
    j = _rate(loads, msgs, reps)
    d = _rate(dec, msgs, reps)
    mean_bytes = sum(map(len, msgs)) / len(msgs)
    return {
        "config": {"messages": len(msgs), "mean_bytes": round(mean_bytes, 1), "repetitions": reps,
                   "library": "msgspec (typed Struct decoder)"},
        "metrics": {
            "decode_validate_eps": round(d),
            "json_loads_eps": round(j),
            "decode_validate_over_json_loads": round(d / j, 3),
            "decode_validate_mb_s": round(d * mean_bytes / 1e6, 1),
        },
    }
