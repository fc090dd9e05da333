"""The event contract (docs/architecture.md §3, invariant): topics, their keys and typed records.

Every producer and consumer in genrec shares these definitions. Records are
``msgspec.Struct`` types: decoding a JSON message *is* validation (types,
ranges, enums, required fields, checked in C by msgspec), and ``__post_init__``
adds the few semantic checks a type cannot express (finite floats, matching list
lengths). The Arrow schemas for the Parquet archive live in
:mod:`ingest.arrow_schemas` and describe the same fields.

Why msgspec: it decodes *and* validates JSON against a typed schema in one pass,
several times faster than ``json.loads`` followed by Python checks (and faster
than orjson + pydantic), is small, has no dependencies and is actively
maintained. See BENCHMARKS.md (suite ``codec``) for the measured rate.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Union

import msgspec
from msgspec import Meta, Struct

# ---- topics --------------------------------------------------------------------------------

USER_EVENTS = "user-events"
ITEM_EVENTS = "item-events"
SERVED = "served"
REWARDS = "rewards"
DEAD_LETTERS = "dead-letters"

#: Largest accepted message (bytes). Bigger messages are dead-lettered before decoding.
MAX_MESSAGE_BYTES = 1 << 20

# ---- field types ---------------------------------------------------------------------------

Id = Annotated[str, Meta(min_length=1, max_length=128, pattern=r"^[^\s]+$")]
#: The same rule as ``Id`` for the record fields, checked faster: a msgspec ``pattern`` calls Python's
#: ``re`` once per id field, which made ``user-events`` decoding markedly slower (BENCHMARKS.md, suite
#: codec). The records' ``__post_init__`` checks "no whitespace" with ``str.split()``, which uses the same
#: Unicode whitespace definition (Py_UNICODE_ISSPACE) as the regex's ``\s``; the JSON schema still shows the
#: pattern. Messages are accepted and rejected exactly as with ``Id``, except one case ``Id`` let through by
#: mistake: its ``$`` also matches before a final newline, so ``"u1\n"`` passed; the check rejects it.
WireId = Annotated[str, Meta(min_length=1, max_length=128, extra_json_schema={"pattern": r"^[^\s]+$"})]
TimestampMs = Annotated[int, Meta(ge=0, le=10**14)]  # ms since epoch; < year 5000
NonNegInt = Annotated[int, Meta(ge=0)]
ShortText = Annotated[str, Meta(max_length=1024)]
LongText = Annotated[str, Meta(max_length=32_768)]
Tag = Annotated[str, Meta(min_length=1, max_length=64)]
ContextValue = Union[str, int, float, bool, None]

#: Event types a user can produce (``type`` of a ``user-events`` record).
EventType = Literal[
    "impression", "click", "like", "share", "comment", "follow",
    "watch", "skip", "purchase", "rating", "dislike",
]
EVENT_TYPES: tuple[str, ...] = EventType.__args__  # type: ignore[attr-defined]

#: Event types that count as positive engagement (sessions are built from these).
ENGAGED_TYPES = frozenset({"click", "like", "share", "comment", "follow", "watch", "purchase", "rating"})

ItemOp = Literal["upsert", "retire"]


def _check_ids(record: Any, *names: str) -> None:
    """Raise if an id field (``WireId``) contains whitespace; ``None`` (an absent optional id) is fine."""
    for name in names:
        v = getattr(record, name)
        if v is not None and v.split() != [v]:
            raise ValueError(f"{name} must be an id without whitespace, got {v[:80]!r}")


def _check_finite(name: str, values: Any) -> None:
    for v in values:
        if not math.isfinite(v):
            raise ValueError(f"{name} must contain only finite numbers, got {v!r}")


# ---- records -------------------------------------------------------------------------------

class UserEvent(Struct, frozen=True, forbid_unknown_fields=False, omit_defaults=True):
    """One thing a user did (topic ``user-events``, key ``user_id``).

    ``event_id`` is unique per event and makes every consumer idempotent.
    ``request_id`` links the event to the served session it answers (rewards).
    ``value`` carries an explicit rating (MovieLens) where there is one.
    """

    event_id: WireId
    user_id: WireId
    item_id: WireId
    type: EventType
    ts: TimestampMs
    watch_ms: Annotated[int, Meta(ge=0, le=86_400_000)] | None = None
    request_id: WireId | None = None
    position: Annotated[int, Meta(ge=0, le=10_000)] | None = None
    value: float | None = None
    context: dict[Annotated[str, Meta(max_length=64)], ContextValue] | None = None

    def __post_init__(self) -> None:
        # Hot path (every consumed event): one split over the joined ids; a field-by-field check
        # only to name the culprit. Ids are non-empty, so the join has whitespace iff one of them has.
        ids = self.event_id + self.user_id + self.item_id + (self.request_id or "")
        if ids.split() != [ids]:
            _check_ids(self, "event_id", "user_id", "item_id", "request_id")
        if self.value is not None and not math.isfinite(self.value):
            raise ValueError(f"value must be finite, got {self.value!r}")
        if self.context is not None and len(self.context) > 32:
            raise ValueError(f"context has {len(self.context)} keys; at most 32 are allowed")


class ItemEvent(Struct, frozen=True, omit_defaults=True):
    """A catalog change (topic ``item-events``, key ``item_id``).

    ``upsert`` adds or updates an item; ``retire`` removes it from what can be
    recommended. Content is text (``title``/``text``/``tags``) and/or a
    precomputed ``embedding``; whether an upsert carries enough content to be
    indexed is the item indexer's check, not the contract's.
    """

    item_id: WireId
    ts: TimestampMs
    op: ItemOp = "upsert"
    title: ShortText | None = None
    text: LongText | None = None
    tags: Annotated[list[Tag], Meta(max_length=64)] | None = None
    creator: WireId | None = None
    embedding: Annotated[list[float], Meta(min_length=1, max_length=4096)] | None = None

    def __post_init__(self) -> None:
        _check_ids(self, "item_id", "creator")
        if self.embedding is not None:
            _check_finite("embedding", self.embedding)

    def content_text(self) -> str:
        """The text a sentence encoder sees: title, tags and body, in that order."""
        parts = [self.title or ""]
        if self.tags:
            parts.append(", ".join(self.tags))
        if self.text:
            parts.append(self.text)
        return ". ".join(p for p in parts if p)


class Served(Struct, frozen=True, omit_defaults=True):
    """The exposure log: one record per answered ``/recommend`` (topic ``served``).

    ``latency_ms``: how long the ingress took to answer, from the moment its
    recommend route starts on the (parsed) request to the moment it writes
    this record (admission, arm resolution, history, generation; the produce
    acknowledgement it then awaits is not in it), as the ingress measured it. Optional: records written before the field
    existed have none, and readers that do not know it ignore it. The A/B
    report's p99-latency guardrail reads it per arm.
    """

    request_id: WireId
    user_id: WireId
    ts: TimestampMs
    model_version: WireId
    experiment: Annotated[str, Meta(max_length=128)]
    arm: Annotated[str, Meta(max_length=128)]
    items: Annotated[list[WireId], Meta(max_length=1000)]
    sids: list[list[NonNegInt]]
    scores: list[float]
    decode: dict[str, ContextValue] = {}
    latency_ms: Annotated[float, Meta(ge=0)] | None = None

    def __post_init__(self) -> None:
        _check_ids(self, "request_id", "user_id", "model_version")
        if self.latency_ms is not None and not math.isfinite(self.latency_ms):
            raise ValueError(f"latency_ms must be a finite number of milliseconds, got {self.latency_ms!r}")
        for item in self.items:
            if item.split() != [item]:
                raise ValueError(f"items must be ids without whitespace, got {item[:80]!r}")
        if not (len(self.items) == len(self.sids) == len(self.scores)):
            raise ValueError(
                f"items, sids and scores must have equal lengths, got "
                f"{len(self.items)}, {len(self.sids)}, {len(self.scores)}"
            )
        _check_finite("scores", self.scores)


class Reward(Struct, frozen=True, omit_defaults=True):
    """One joined reward per served session (topic ``rewards``), emitted exactly once."""

    request_id: WireId
    user_id: WireId
    experiment: Annotated[str, Meta(max_length=128)]
    arm: Annotated[str, Meta(max_length=128)]
    model_version: WireId
    components: dict[Annotated[str, Meta(max_length=64)], float]
    reward: float
    window_closed_ts: TimestampMs
    ts: TimestampMs

    def __post_init__(self) -> None:
        _check_ids(self, "request_id", "user_id", "model_version")
        _check_finite("components", self.components.values())
        _check_finite("reward", [self.reward])


class DeadLetter(Struct, frozen=True, omit_defaults=True):
    """A message that failed validation, kept with the reason (topic ``dead-letters``)."""

    source_topic: str
    partition: NonNegInt
    offset: NonNegInt
    raw_b64: str
    error: str
    ts: TimestampMs
    key: str | None = None


Record = Union[UserEvent, ItemEvent, Served, Reward, DeadLetter]


@dataclass(frozen=True)
class TopicSpec:
    """What travels on a topic: its record type and the field that is the message key."""

    name: str
    record: type
    key_field: str


TOPICS: dict[str, TopicSpec] = {
    USER_EVENTS: TopicSpec(USER_EVENTS, UserEvent, "user_id"),
    ITEM_EVENTS: TopicSpec(ITEM_EVENTS, ItemEvent, "item_id"),
    SERVED: TopicSpec(SERVED, Served, "user_id"),
    REWARDS: TopicSpec(REWARDS, Reward, "user_id"),
    DEAD_LETTERS: TopicSpec(DEAD_LETTERS, DeadLetter, "key"),
}


def topic_spec(topic: str) -> TopicSpec:
    """The spec of a contract topic; a clear error for an unknown one."""
    try:
        return TOPICS[topic]
    except KeyError:
        raise ValueError(f"unknown topic {topic!r}; the contract has {sorted(TOPICS)}") from None


def record_key(record: Record, spec: TopicSpec | None = None) -> str | None:
    """The Kafka message key of a record (user_id / item_id / original key)."""
    if spec is None:
        spec = TOPICS[_TOPIC_OF_TYPE[type(record)]]
    return getattr(record, spec.key_field)


_TOPIC_OF_TYPE = {spec.record: name for name, spec in TOPICS.items()}


def topic_of(record: Record) -> str:
    """The topic a record belongs on."""
    return _TOPIC_OF_TYPE[type(record)]


def to_dict(record: Record) -> dict[str, Any]:
    """A plain dict of a record (defaults included), e.g. for Arrow tables and JSON APIs."""
    return {f: getattr(record, f) for f in record.__struct_fields__}


def replace(record: Record, **changes: Any) -> Record:
    """A copy of a frozen record with some fields changed (validated again on the wire)."""
    return msgspec.structs.replace(record, **changes)
