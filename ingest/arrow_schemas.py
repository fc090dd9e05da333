"""Arrow schemas for every contract record, and record ↔ table conversion (the Parquet archive).

The schemas hold the same fields as the msgspec records of
:mod:`ingest.contract`, with the same names and nullability. Two kinds of
field have no single Arrow type and are stored as JSON text instead:
``UserEvent.context`` and ``Served.decode`` (maps whose values may be strings,
numbers, booleans or null). ``Reward.components`` is a ``map<string, double>``.

The archive adds two columns to each record schema, ``kafka_partition`` and
``kafka_offset``: where the record came from. They are what makes the archive
exactly-once (the resume offset is derived from them) and let offline readers
de-duplicate or join back to the log.
"""

from __future__ import annotations

from typing import Any, Iterable

import msgspec
import pyarrow as pa

from ingest.contract import (
    DEAD_LETTERS,
    ITEM_EVENTS,
    REWARDS,
    SERVED,
    USER_EVENTS,
    DeadLetter,
    ItemEvent,
    Record,
    Reward,
    Served,
    UserEvent,
    topic_spec,
)

SCHEMAS: dict[str, pa.Schema] = {
    USER_EVENTS: pa.schema([
        pa.field("event_id", pa.string(), nullable=False),
        pa.field("user_id", pa.string(), nullable=False),
        pa.field("item_id", pa.string(), nullable=False),
        pa.field("type", pa.string(), nullable=False),
        pa.field("ts", pa.int64(), nullable=False),
        pa.field("watch_ms", pa.int64()),
        pa.field("request_id", pa.string()),
        pa.field("position", pa.int32()),
        pa.field("value", pa.float64()),
        pa.field("context", pa.string()),  # JSON object text
    ]),
    ITEM_EVENTS: pa.schema([
        pa.field("item_id", pa.string(), nullable=False),
        pa.field("ts", pa.int64(), nullable=False),
        pa.field("op", pa.string(), nullable=False),
        pa.field("title", pa.string()),
        pa.field("text", pa.string()),
        pa.field("tags", pa.list_(pa.string())),
        pa.field("creator", pa.string()),
        pa.field("embedding", pa.list_(pa.float64())),  # float64: records round-trip exactly
    ]),
    SERVED: pa.schema([
        pa.field("request_id", pa.string(), nullable=False),
        pa.field("user_id", pa.string(), nullable=False),
        pa.field("ts", pa.int64(), nullable=False),
        pa.field("model_version", pa.string(), nullable=False),
        pa.field("experiment", pa.string(), nullable=False),
        pa.field("arm", pa.string(), nullable=False),
        pa.field("items", pa.list_(pa.string()), nullable=False),
        pa.field("sids", pa.list_(pa.list_(pa.int64())), nullable=False),
        pa.field("scores", pa.list_(pa.float64()), nullable=False),
        pa.field("decode", pa.string(), nullable=False),  # JSON object text
        pa.field("latency_ms", pa.float64()),  # absent in files written before the field existed: null
    ]),
    REWARDS: pa.schema([
        pa.field("request_id", pa.string(), nullable=False),
        pa.field("user_id", pa.string(), nullable=False),
        pa.field("experiment", pa.string(), nullable=False),
        pa.field("arm", pa.string(), nullable=False),
        pa.field("model_version", pa.string(), nullable=False),
        pa.field("components", pa.map_(pa.string(), pa.float64()), nullable=False),
        pa.field("reward", pa.float64(), nullable=False),
        pa.field("window_closed_ts", pa.int64(), nullable=False),
        pa.field("ts", pa.int64(), nullable=False),
    ]),
    DEAD_LETTERS: pa.schema([
        pa.field("source_topic", pa.string(), nullable=False),
        pa.field("partition", pa.int32(), nullable=False),
        pa.field("offset", pa.int64(), nullable=False),
        pa.field("raw_b64", pa.string(), nullable=False),
        pa.field("error", pa.string(), nullable=False),
        pa.field("ts", pa.int64(), nullable=False),
        pa.field("key", pa.string()),
    ]),
}

#: Columns the archive adds to each record: where in the Kafka log the record was.
KAFKA_FIELDS = [pa.field("kafka_partition", pa.int32(), nullable=False),
                pa.field("kafka_offset", pa.int64(), nullable=False)]

_JSON_FIELDS = {USER_EVENTS: ("context",), SERVED: ("decode",)}
_MAP_FIELDS = {REWARDS: ("components",)}
_enc = msgspec.json.Encoder()


def schema(topic: str) -> pa.Schema:
    """The Arrow schema of a contract topic's records."""
    topic_spec(topic)
    return SCHEMAS[topic]


def archive_schema(topic: str) -> pa.Schema:
    """The record schema plus ``kafka_partition`` and ``kafka_offset``."""
    s = schema(topic)
    for f in KAFKA_FIELDS:
        s = s.append(f)
    return s


def _column(topic: str, name: str, records: list[Record]) -> list[Any]:
    vals = [getattr(r, name) for r in records]
    if name in _JSON_FIELDS.get(topic, ()):
        return [None if v is None else _enc.encode(v).decode() for v in vals]
    if name in _MAP_FIELDS.get(topic, ()):
        return [list(v.items()) for v in vals]
    return vals


def to_table(records: Iterable[Record], topic: str, partitions: Iterable[int] | None = None,
             offsets: Iterable[int] | None = None) -> pa.Table:
    """Records of ``topic`` as an Arrow table (with Kafka columns when partitions/offsets are given)."""
    records = list(records)
    sch = schema(topic)
    cols = [pa.array(_column(topic, f.name, records), type=f.type) for f in sch]
    if partitions is not None or offsets is not None:
        if partitions is None or offsets is None:
            raise ValueError("to_table: give both partitions and offsets, or neither")
        sch = archive_schema(topic)
        cols += [pa.array(list(partitions), pa.int32()), pa.array(list(offsets), pa.int64())]
    return pa.Table.from_arrays(cols, schema=sch)


_RECORD_TYPES = {USER_EVENTS: UserEvent, ITEM_EVENTS: ItemEvent, SERVED: Served, REWARDS: Reward,
                 DEAD_LETTERS: DeadLetter}


def from_table(table: pa.Table, topic: str) -> list[Record]:
    """Records of ``topic`` from an Arrow table (extra columns such as Kafka's are ignored).

    Each row is validated again by msgspec, so a table that drifted from the
    contract raises instead of yielding bad records.
    """
    typ = _RECORD_TYPES[topic_spec(topic).name]
    names = [f.name for f in schema(topic)]
    missing = [n for n in names if n not in table.column_names]
    if missing:
        raise ValueError(f"table lacks the {topic} fields {missing}; its columns are {table.column_names}")
    cols = {n: table.column(n).to_pylist() for n in names}
    for n in _JSON_FIELDS.get(topic, ()):
        cols[n] = [None if v is None else msgspec.json.decode(v) for v in cols[n]]
    for n in _MAP_FIELDS.get(topic, ()):
        cols[n] = [dict(v) for v in cols[n]]
    out = []
    for row in zip(*cols.values()):
        d = {k: v for k, v in zip(names, row) if v is not None}
        out.append(msgspec.convert(d, typ))
    return out
