"""The reward joiner's wire side: batch decoders for its two inputs, and its output records as bytes.

Decoding (the joiner's ``ContractConsumer(batch_decoder=...)``, see
:meth:`ingest.consumer_loop.ContractConsumer.poll_records`): msgspec parses
and type-checks a message in C, then the contract record's Python
``__post_init__`` runs, and the record is tracked by the garbage collector.
For a consumer of thousands of records per poll that is more than the parse
(the same finding as :mod:`ingest.codec_batch`). So each run of values is
parsed into wire structs with the *same* fields, types and bounds as the
contract records but no ``__post_init__`` and ``gc=False``, and the checks
``__post_init__`` makes run once per run:

* ``served`` (:class:`ServedBatchDecoder`): no whitespace in the ids and the
  items (all of them joined, split once), ``items``, ``sids`` and ``scores``
  of equal length; finite scores need no check (msgspec's JSON parser has no
  NaN/Infinity literals and rejects numbers that overflow a float);
* ``user-events`` (:class:`EventBatchDecoder`): the wire struct of
  :mod:`ingest.codec_batch` and its one-split id check.

Both accept *only* what :func:`ingest.codec.decode` accepts
(``tests/actors/test_reward_codec.py``, property by property); a run with any
bad message raises and the consumer decodes it message by message, which
dead-letters the bad ones with their standard reason and yields contract
records for the rest — the engine takes either.

Output: :class:`WireReward` has :class:`~ingest.contract.Reward`'s fields in
its order and encodes to the same bytes, without ``Reward.__post_init__``:
the joiner builds it only from validated input (ids from decoded ``served``
records, finite components and a finite reward by construction of
:mod:`actors.reward_spec`). :func:`encode_rewards` turns closed sessions into
``(key, value)`` pairs for :class:`ingest.batch_producer.BatchProducer`.
"""

from __future__ import annotations

from typing import Sequence

import msgspec

from ingest.codec_batch import WireUserEvent, wire_twin
from ingest.contract import Reward, Served


#: ``Served``'s wire shape: its fields, types and bounds without its ``__post_init__`` (run once per run below).
WireServed = wire_twin(Served, "WireServed", omit_defaults=True)


class ServedBatchDecoder:
    """``values`` (one partition's run of raw ``served`` messages) → wire records; raises if any is invalid."""

    def __init__(self) -> None:
        self._decode = msgspec.json.Decoder(WireServed).decode

    def __call__(self, values: Sequence[bytes]) -> list[WireServed]:
        recs = list(map(self._decode, values))
        # Served.__post_init__ for the whole run: ids and items are non-empty, so the concatenation has
        # whitespace (str.split's definition, the contract's) iff one of them has.
        ids = "".join([s.request_id + s.user_id + s.model_version + "".join(s.items) for s in recs])
        if ids.split() != [ids]:
            raise ValueError("an id or item of the run contains whitespace")
        for s in recs:
            n = len(s.items)
            if len(s.sids) != n or len(s.scores) != n:
                raise ValueError("items, sids and scores must have equal lengths")
        return recs


class EventBatchDecoder:
    """``values`` (one partition's run of raw ``user-events`` messages) → wire events; raises if any is invalid."""

    def __init__(self) -> None:
        self._decode = msgspec.json.Decoder(WireUserEvent).decode

    def __call__(self, values: Sequence[bytes]) -> list[WireUserEvent]:
        recs = list(map(self._decode, values))
        ids = "".join([e.event_id + e.user_id + e.item_id + (e.request_id or "") for e in recs])
        if ids.split() != [ids]:
            raise ValueError("an id of the run contains whitespace")
        return recs


#: ``Reward``'s fields, in its order, without its ``__post_init__`` (what the joiner encodes).
WireReward = wire_twin(Reward, "WireReward", omit_defaults=True)


_encode = msgspec.json.Encoder().encode


def encode_rewards(rewards: Sequence) -> list[tuple[bytes, bytes]]:
    """``(key, value)`` of each reward: the user id (the topic's key) and the record's wire bytes."""
    return [(r.user_id.encode("utf-8"), _encode(r)) for r in rewards]


__all__ = ["EventBatchDecoder", "ServedBatchDecoder", "WireReward", "WireServed", "encode_rewards"]
