"""JSON wire codec for the event contract: encode records, decode + validate messages.

One message is one UTF-8 JSON object (docs/architecture.md §3). Decoding goes through a
per-topic ``msgspec.json.Decoder`` bound to the record type, so parsing and
validation happen in a single C pass; anything wrong raises
:class:`ContractError` with a reason that names the field (``$.ts``) — the text
that ends up in the dead-letter record.
"""

from __future__ import annotations

import base64
import time
from typing import Any

import msgspec

from ingest.contract import (
    DEAD_LETTERS,
    MAX_MESSAGE_BYTES,
    TOPICS,
    DeadLetter,
    Record,
    topic_spec,
)


class ContractError(ValueError):
    """A message that does not satisfy the event contract; ``reason`` says why."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


_encoder = msgspec.json.Encoder()
_decoders: dict[str, msgspec.json.Decoder] = {
    name: msgspec.json.Decoder(spec.record) for name, spec in TOPICS.items()
}


def encode(record: Record) -> bytes:
    """Serialize a record to its wire form (compact UTF-8 JSON)."""
    return _encoder.encode(record)


def decode(topic: str, raw: bytes | bytearray | memoryview | str | None,
           max_bytes: int = MAX_MESSAGE_BYTES) -> Record:
    """Parse and validate one message of ``topic``; raise :class:`ContractError` if bad."""
    if raw is None:
        raise ContractError("empty message (null value)")
    if len(raw) > max_bytes:
        raise ContractError(f"message of {len(raw)} bytes exceeds the limit of {max_bytes} bytes")
    try:
        dec = _decoders[topic]
    except KeyError:
        topic_spec(topic)  # raises the clear unknown-topic error
        raise
    try:
        return dec.decode(raw)
    except msgspec.ValidationError as e:
        raise ContractError(f"invalid record: {e}") from None
    except msgspec.DecodeError as e:
        raise ContractError(f"malformed JSON: {e}") from None
    except UnicodeDecodeError as e:  # pragma: no cover - msgspec reports bad UTF-8 as DecodeError
        raise ContractError(f"not UTF-8: {e}") from None


def decode_dict(topic: str, obj: dict[str, Any]) -> Record:
    """Validate an already-parsed JSON object (e.g. an HTTP request body) as a record of ``topic``."""
    try:
        return msgspec.convert(obj, TOPICS[topic].record if topic in TOPICS else topic_spec(topic).record)
    except msgspec.ValidationError as e:
        raise ContractError(f"invalid record: {e}") from None


def dead_letter(source_topic: str, partition: int, offset: int, key: bytes | None,
                raw: bytes | None, error: str, ts_ms: int | None = None,
                keep_bytes: int = MAX_MESSAGE_BYTES // 2) -> DeadLetter:
    """Build the ``dead-letters`` record that keeps a bad message and its reason.

    The raw bytes are kept whole up to ``keep_bytes``; an oversized message keeps
    its first ``keep_bytes`` (the reason says so, and its offset still points at
    the whole message on the source topic while retention lasts).
    """
    raw = raw or b""
    if len(raw) > keep_bytes:
        error = f"{error} [raw truncated to {keep_bytes} of {len(raw)} bytes]"
        raw = raw[:keep_bytes]
    return DeadLetter(
        source_topic=source_topic,
        partition=partition,
        offset=offset,
        key=None if key is None else key.decode("utf-8", errors="replace")[:1024],
        raw_b64=base64.b64encode(raw).decode("ascii"),
        error=error[:2000],
        ts=int(time.time() * 1000) if ts_ms is None else ts_ms,
    )


def raw_of(letter: DeadLetter) -> bytes:
    """The original bytes of a dead-lettered message."""
    return base64.b64decode(letter.raw_b64)


__all__ = ["ContractError", "encode", "decode", "decode_dict", "dead_letter", "raw_of", "DEAD_LETTERS"]
