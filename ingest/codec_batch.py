"""Batch decoding of ``user-events`` straight to columns: the sequence shards' hot path.

:func:`ingest.codec.decode` turns one message into a :class:`~ingest.contract.UserEvent`;
msgspec parses and type-checks it in C, then calls the record's Python
``__post_init__`` (the whitespace-in-ids check msgspec cannot express cheaply).
That Python call, and the garbage-collector tracking of every record, cost
more than the parse itself (BENCHMARKS.md, suite ``sequences``). A consumer
that only wants a few fields of thousands of events per poll — a sequence
shard — can do better with :class:`UserEventColumnsDecoder`:

* every message of a run is parsed by msgspec into :class:`WireUserEvent`,
  a struct with the *same* fields, types and bounds as ``UserEvent`` but no
  ``__post_init__`` and ``gc=False``; ``UserEvent``'s context rule (at most
  32 keys) is expressed as a msgspec ``max_length`` bound instead;
* the fields a shard needs are pulled into lists (:class:`UserEventColumns`),
  and ``__post_init__``'s remaining check runs once per run: all ids of the
  run joined into one string, split once on whitespace;
* ``value`` needs no finiteness check here: msgspec's JSON parser has no
  NaN/Infinity literals and rejects numbers that overflow a float.

The decoder *accepts only messages the contract accepts* (tested property by
property against ``ingest.codec.decode``); if anything in a run fails, it
raises and the caller falls back to message-by-message decoding, which gives
each bad message its standard dead-letter reason. So a poisoned run costs
time, never correctness. No I/O.
"""

from __future__ import annotations

from typing import Annotated, Sequence

import msgspec
from msgspec import Meta

from ingest.contract import ContextValue, UserEvent


def wire_twin(record: type, name: str, types: dict | None = None, **config) -> type:
    """A msgspec struct with ``record``'s fields, types, bounds and defaults but no ``__post_init__``.

    The contract's records check what msgspec types cannot express in ``__post_init__``, once per
    record; batch decoders parse a run into the twin and run those checks once per run. ``types``
    replaces a field's type (a rule of ``__post_init__`` written as a msgspec bound); ``config`` is the
    struct's options (``gc=False`` and ``frozen=True`` always). Built from the record itself, so the twin
    cannot drift from the contract.
    """
    fields = []
    for f in msgspec.structs.fields(record):
        t = (types or {}).get(f.name, f.type)
        if f.required:
            fields.append((f.name, t))
        elif f.default_factory is not msgspec.NODEFAULT:
            fields.append((f.name, t, msgspec.field(default_factory=f.default_factory)))
        else:
            fields.append((f.name, t, f.default))
    return msgspec.defstruct(name, fields, frozen=True, gc=False, **config)


#: ``UserEvent``'s wire shape; its context rule (at most 32 keys) as a msgspec bound (module docstring).
WireUserEvent = wire_twin(UserEvent, "WireUserEvent", forbid_unknown_fields=False, types={
    "context": Annotated[dict[Annotated[str, Meta(max_length=64)], ContextValue], Meta(max_length=32)] | None})


class UserEventColumns:
    """The fields a sequence shard keeps of a run of events, one list per field, in message order.

    ``type`` holds the type names (``EVENT_TYPES`` entries); ``watch_ms`` may hold None.
    """

    __slots__ = ("event_id", "user_id", "item_id", "type", "ts", "watch_ms")

    def __init__(self, event_id: list[str], user_id: list[str], item_id: list[str], type: list[str],
                 ts: list[int], watch_ms: list[int | None]):
        self.event_id, self.user_id, self.item_id = event_id, user_id, item_id
        self.type, self.ts, self.watch_ms = type, ts, watch_ms

    def __len__(self) -> int:
        return len(self.event_id)

    @classmethod
    def from_records(cls, records: Sequence) -> "UserEventColumns":
        """Columns of already-decoded records (``UserEvent`` or anything with the same attributes)."""
        return cls([e.event_id for e in records], [e.user_id for e in records], [e.item_id for e in records],
                   [e.type for e in records], [e.ts for e in records], [e.watch_ms for e in records])

    def take(self, idx: Sequence[int]) -> "UserEventColumns":
        """The events at positions ``idx`` (in that order)."""
        return UserEventColumns(*([col[i] for i in idx] for col in
                                  (self.event_id, self.user_id, self.item_id, self.type, self.ts, self.watch_ms)))

    def records(self) -> list[UserEvent]:
        """The events as contract records again (tests, tools; not the hot path)."""
        return [UserEvent(event_id=e, user_id=u, item_id=i, type=t, ts=ts, watch_ms=w)
                for e, u, i, t, ts, w in zip(self.event_id, self.user_id, self.item_id, self.type, self.ts,
                                             self.watch_ms)]


class UserEventColumnsDecoder:
    """``values`` (the raw message bytes of one partition's run) → validated :class:`UserEventColumns`.

    Raises ``ValueError`` (or a msgspec error) if any message of the run is not
    a valid ``user-events`` record; the caller then decodes message by message
    to find and dead-letter the bad ones (``ContractConsumer(batch_decoder=)``).
    """

    def __init__(self) -> None:
        self._decode = msgspec.json.Decoder(WireUserEvent).decode

    def __call__(self, values: Sequence[bytes]) -> UserEventColumns:
        recs = list(map(self._decode, values))
        eids = [e.event_id for e in recs]
        uids = [e.user_id for e in recs]
        iids = [e.item_id for e in recs]
        # UserEvent.__post_init__'s id rule for the whole run at once: ids are non-empty, so the
        # concatenation has whitespace (by str.split's definition, the same as the contract's) iff one has.
        ids = "".join(eids) + "".join(uids) + "".join(iids) + "".join(filter(None, [e.request_id for e in recs]))
        if ids.split() != [ids]:
            raise ValueError("an id of the run contains whitespace")
        return UserEventColumns(eids, uids, iids, [e.type for e in recs], [e.ts for e in recs],
                                [e.watch_ms for e in recs])


__all__ = ["UserEventColumns", "UserEventColumnsDecoder"]
