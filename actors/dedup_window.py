"""The event_id de-duplication window of one partition (a "lane") of a sequence shard.

Kept apart from :mod:`actors.sequence_state` because its representation is
what makes both the hot path and checkpoints cheap: membership is a set, the
order (which id leaves first) is a deque of immutable chunks, so

* a micro-batch with no duplicate is checked and remembered with one set
  update (:meth:`DedupWindow.add_if_all_new`), and the oldest ids leave by
  whole chunks;
* a checkpoint snapshots the window by copying chunk *references*
  (:meth:`DedupWindow.view`) on the consume loop, and joins the ids into
  bytes later on the writer thread (:func:`join_view`).

The semantics are exactly those of a FIFO of the last ``window`` distinct ids
seen on the partition (:meth:`DedupWindow.seen_or_add`, one at a time), which
is what keeps a shard's state a pure function of each partition's messages.
No I/O.
"""

from __future__ import annotations

from collections import deque
from itertools import islice
from typing import Iterable


class DedupWindow:
    """Bounded FIFO of recently seen event ids for one partition (``ids`` == set of the window).

    The window is kept as a deque of *chunks* (lists of ids, in order) minus
    the first ``start`` ids of the oldest chunk. Chunks are never changed once
    closed — only the open ``tail`` that the one-at-a-time path appends to —
    so :meth:`view` snapshots a 200k-id window by copying chunk references
    (a checkpoint used to copy every id on the consume loop: ~5 ms of pause).
    """

    __slots__ = ("ids", "chunks", "start", "size", "window", "tail")
    _TAIL_MAX = 1024

    def __init__(self, window: int, ids: Iterable[str] = ()):
        self.window = window
        first = list(ids)[-window:] if window else []
        self.chunks: deque[list[str]] = deque([first] if first else [])
        self.start = 0          # ids of chunks[0] before this index have left the window
        self.size = len(first)  # ids in the window
        self.tail: list[str] | None = None  # the open chunk (== chunks[-1]) of the one-at-a-time path
        self.ids = set(first)

    @property
    def fifo(self) -> list[str]:
        """The window's ids, oldest first (a copy)."""
        return window_ids(*self.view())

    def view(self) -> tuple[list[list[str]], int]:
        """``(chunks, start)`` describing the window now, unaffected by later changes to the lane."""
        chunks = list(self.chunks)
        if self.tail is not None and chunks:
            chunks[-1] = list(self.tail)  # the only chunk that still changes
        return chunks, self.start

    def _evict(self, k: int) -> None:
        """The ``k`` oldest ids leave the window."""
        chunks, ids = self.chunks, self.ids
        self.size -= k
        while k > 0:
            c = chunks[0]
            avail = len(c) - self.start
            if avail <= k:
                ids.difference_update(islice(c, self.start, None))
                chunks.popleft()
                if c is self.tail:
                    self.tail = None
                self.start, k = 0, k - avail
            else:
                ids.difference_update(islice(c, self.start, self.start + k))
                self.start, k = self.start + k, 0

    def seen_or_add(self, event_id: str) -> bool:
        """True if ``event_id`` is in the window; otherwise remember it (evicting the oldest)."""
        if event_id in self.ids:
            return True
        if self.window:
            if self.size >= self.window:
                self._evict(1)
            if self.tail is None or len(self.tail) >= self._TAIL_MAX or not self.chunks:
                self.tail = []
                self.chunks.append(self.tail)
            self.tail.append(event_id)
            self.size += 1
            self.ids.add(event_id)
        return False

    def add_if_all_new(self, ids: list[str]) -> bool:
        """Remember ``ids`` and return True if none is in the window and none repeats; else change nothing.

        The batch form of :meth:`seen_or_add` for the common case, in C-level
        loops: one set update tells both (the set grew by ``len(ids)`` exactly
        when every id is new), then the oldest ids leave the window. ``ids``
        becomes a chunk: the caller must not change it afterwards.
        """
        before = len(self.ids)
        self.ids.update(ids)
        if len(self.ids) - before != len(ids):
            self.ids = set(self.fifo)  # undo: a duplicate is in there; the caller goes one by one
            return False
        if len(ids) >= self.window:  # the run alone fills the window: keep only its newest ids
            keep = ids[len(ids) - self.window:]
            self.chunks, self.start, self.size, self.tail = deque([keep]), 0, len(keep), None
            self.ids = set(keep)
            return True
        drop = self.size + len(ids) - self.window
        if drop > 0:
            self._evict(drop)
        self.chunks.append(ids)
        self.tail = None
        self.size += len(ids)
        return True


def window_ids(chunks: list[list[str]], start: int) -> list[str]:
    """The ids of a lane :meth:`DedupWindow.view`, oldest first."""
    out: list[str] = []
    for j, c in enumerate(chunks):
        out.extend(c[start:] if j == 0 and start else c)
    return out


def join_view(chunks: list[list[str]], start: int) -> bytes:
    """:func:`_join_ids` of a lane view, chunk by chunk (no list of all its ids is built)."""
    parts = [join_ids(c[start:] if j == 0 and start else c) for j, c in enumerate(chunks)]
    return b"\n".join([p for p in parts if p])


def join_ids(ids: list[str], chunk: int = 16_384) -> bytes:
    """Ids as one UTF-8 blob, newline-separated (contract ids hold no whitespace).

    Joined in chunks: one ``str.join`` over a 200k-id de-dup window holds the
    GIL for milliseconds, stalling the consume loop while a checkpoint is written.
    """
    if len(ids) <= chunk:
        return "\n".join(ids).encode("utf-8")
    return b"\n".join(["\n".join(ids[i:i + chunk]).encode("utf-8") for i in range(0, len(ids), chunk)])
