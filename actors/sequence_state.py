"""Per-user recent-behaviour sequences in preallocated NumPy ring buffers (no Ray, no Kafka).

This is the state a sequence shard (``actors/sequence_shard.py``) holds; it is
kept free of I/O so it can be unit-tested alone and so that the fault test can
compute the *expected* state of a fault-free run in-process.

Layout (struct of arrays, one row per user, one column per slot)::

    item   int32 [U, W]  per-shard item index (see ``item_ids``)
    etype  int8  [U, W]  index into ``ingest.contract.EVENT_TYPES``
    ts     int64 [U, W]  event time, ms
    watch  int32 [U, W]  watch_ms, -1 when absent
    sid    int32 [U, W]  semantic-ID slot of the item (e.g. a catalog index), -1 unknown
    head   int64 [U]     events ever applied to the user (write position = head % W)
    last_ts int64 [U]    event time of the user's newest event

Both dimensions grow by doubling: rows when users arrive, columns while the
longest history is shorter than ``capacity`` (so a catalogue of mostly-short
users costs little). Once ``W == capacity`` a row is a true ring buffer that
keeps the newest ``capacity`` events.

Determinism — what makes the shards exactly-once: every piece of state is a
function of *each partition's* message sequence, never of how a poll
interleaves partitions. A user lives in one partition, so its ring only sees
that partition's order; the event_id de-duplication window is kept per
partition ("lane", :class:`actors.dedup_window.DedupWindow`) and evicts
first-in-first-out by that lane's count. The only interleaving-dependent
detail is the numbering of ``item_ids``, which is internal: reads and
comparisons go through the id strings.

Why ring buffers in NumPy: a micro-batch is applied with a handful of
vectorised scatters (the per-event work is C-level ``map``/list
comprehensions over dict lookups), and ``histories()`` for a serving batch
is one gather.
"""

from __future__ import annotations

import io
import struct
from contextlib import AbstractContextManager, nullcontext
from itertools import repeat
from operator import itemgetter
from dataclasses import dataclass
from typing import Iterable, Sequence

import msgspec
import numpy as np

from actors.dedup_window import DedupWindow, join_ids as _join_ids, join_view as _join_view
from ingest.codec_batch import UserEventColumns
from ingest.contract import EVENT_TYPES, UserEvent

STATE_VERSION = 3  # 1 (.npz arrays + msgpack id chunks in one msgpack map) is still readable
_FRAME = struct.Struct("<4sIQ")  # magic, version, len(meta)
_FRAME_MAGIC = b"GRSQ"
_TYPE_CODE = {t: i for i, t in enumerate(EVENT_TYPES)}


@dataclass(frozen=True)
class SequenceConfig:
    """Sizes of a shard's sequence state.

    ``capacity``: events kept per user (newest win). ``dedup_window``: event ids
    remembered per partition to drop duplicate deliveries. ``initial_users`` /
    ``initial_width``: first allocation; both double on demand.
    """

    capacity: int = 256
    dedup_window: int = 65_536
    initial_users: int = 1024
    initial_width: int = 16

    def __post_init__(self) -> None:
        if self.capacity < 1:
            raise ValueError(f"SequenceConfig.capacity={self.capacity} must be >= 1 (events kept per user)")
        if self.dedup_window < 0:
            raise ValueError(f"SequenceConfig.dedup_window={self.dedup_window} must be >= 0 (0 disables de-dup)")
        if self.initial_users < 1:
            raise ValueError(f"SequenceConfig.initial_users={self.initial_users} must be >= 1")
        if not 1 <= self.initial_width:
            raise ValueError(f"SequenceConfig.initial_width={self.initial_width} must be >= 1")


@dataclass
class ApplyResult:
    """What one micro-batch did."""

    applied: int = 0
    duplicates: int = 0
    new_users: int = 0


def _pick(seq: list[str], idx: list[int]) -> list[str]:
    """``[seq[i] for i in idx]`` in one C call (itemgetter) rather than a Python loop over thousands of ids."""
    if len(idx) < 2:
        return [seq[i] for i in idx]
    return list(itemgetter(*idx)(seq))


def _split_ids(blob: bytes) -> list[str]:
    return blob.decode("utf-8").split("\n") if blob else []


def _decode_chunks(chunks: list[bytes]) -> list[str]:
    """Id lists of version-1 checkpoints (msgpack in chunks)."""
    dec = msgspec.msgpack.decode
    out: list[str] = []
    for c in chunks:
        out.extend(dec(c))
    return out


class SequenceState:
    """Ring-buffered per-user event sequences with per-partition event_id de-duplication."""

    def __init__(self, config: SequenceConfig = SequenceConfig()):
        self.config = config
        self.user_row: dict[str, int] = {}
        self.user_ids: list[str] = []
        self.item_index: dict[str, int] = {}
        self.item_ids: list[str] = []
        self.item_sid = np.full(256, -1, np.int32)  # [n_items] SID slot per item, -1 unknown
        self.lanes: dict[int, DedupWindow] = {}
        self.events_applied = 0
        self.duplicates = 0
        w = min(config.initial_width, config.capacity)
        self._alloc(config.initial_users, w)

    # -- storage ---------------------------------------------------------------------------

    def _alloc(self, rows: int, width: int) -> None:
        self.item = np.full((rows, width), -1, np.int32)
        self.etype = np.full((rows, width), -1, np.int8)
        self.ts = np.zeros((rows, width), np.int64)
        self.watch = np.full((rows, width), -1, np.int32)
        self.sid = np.full((rows, width), -1, np.int32)
        self.head = np.zeros(rows, np.int64)
        self.last_ts = np.full(rows, -1, np.int64)
        self._dirty = np.zeros(rows, np.bool_)  # [rows] written since the last reusing snapshot
        self._snap: dict | None = None          # that snapshot's column buffers, [rows, W] each

    _COLS = ("item", "etype", "ts", "watch", "sid")
    _FILL = {"item": -1, "etype": -1, "ts": 0, "watch": -1, "sid": -1}

    def _grow(self, rows: int, width: int) -> None:
        """Reallocate to at least ``rows`` × ``width`` (each doubled), keeping the data in place."""
        r0, w0 = self.item.shape
        r1, w1 = r0, w0
        while r1 < rows:
            r1 *= 2
        while w1 < width:
            w1 = min(w1 * 2, self.config.capacity)
        if (r1, w1) == (r0, w0):
            return
        # Columns only grow while no row has wrapped (head <= w0), so slots keep their positions.
        for name in self._COLS:
            old = getattr(self, name)
            new = np.full((r1, w1), self._FILL[name], old.dtype)
            new[:r0, :w0] = old
            setattr(self, name, new)
        for name, fill in (("head", 0), ("last_ts", -1), ("_dirty", True)):
            old = getattr(self, name)
            new = np.full(r1, fill, old.dtype)
            new[:r0] = old
            setattr(self, name, new)

    @property
    def width(self) -> int:
        return self.item.shape[1]

    @property
    def num_users(self) -> int:
        return len(self.user_ids)

    def nbytes(self) -> int:
        """Bytes held by the slot arrays (the per-slot cost, without the id tables)."""
        return sum(getattr(self, n).nbytes for n in self._COLS) + self.head.nbytes + self.last_ts.nbytes

    def bytes_per_slot(self) -> float:
        """Bytes per allocated event slot (all columns + per-user counters amortised)."""
        rows, width = self.item.shape
        return self.nbytes() / (rows * width)

    # -- ids -------------------------------------------------------------------------------

    def _item_of(self, item_id: str) -> int:
        i = self.item_index.get(item_id)
        if i is None:
            self._add_items((item_id,))
            i = self.item_index[item_id]
        return i

    def _add_items(self, item_ids: Sequence[str]) -> None:
        """Register the ids not known yet, in order of first appearance (bulk :meth:`_item_of`)."""
        get = self.item_index.get
        fresh = [it for it in dict.fromkeys(item_ids) if get(it) is None]
        if not fresh:
            return
        n0, n1 = len(self.item_ids), len(self.item_ids) + len(fresh)
        if n1 > len(self.item_sid):
            size = len(self.item_sid)
            while size < n1:
                size *= 2
            grown = np.full(size, -1, np.int32)
            grown[:n0] = self.item_sid[:n0]
            self.item_sid = grown
        self.item_index.update(zip(fresh, range(n0, n1)))
        self.item_ids += fresh

    def set_item_sids(self, item_ids: Sequence[str], slots: Sequence[int]) -> int:
        """Record the semantic-ID slot of items (from the item indexer); returns how many are known here.

        Future events of these items carry the slot; reads also fill it in for
        events stored before the slot was known.
        """
        known = 0
        for iid, slot in zip(item_ids, slots):
            i = self.item_index.get(iid)
            if i is None:
                i = self._item_of(iid)
            else:
                known += 1
            self.item_sid[i] = int(slot)
        return known

    # -- writes ----------------------------------------------------------------------------

    def apply(self, events: Sequence[UserEvent], lanes: Sequence[int] | int = 0) -> ApplyResult:
        """Apply a micro-batch in order; ``lanes`` = the partition of each event (or one for all).

        Duplicates (an event_id already in its lane's window) are dropped.
        Consecutive events of one lane form a run for :meth:`apply_runs`.
        """
        n = len(events)
        if isinstance(lanes, int):
            return self.apply_runs([(lanes, events)])
        runs, start = [], 0
        for j in range(1, n + 1):
            if j == n or lanes[j] != lanes[start]:
                runs.append((lanes[start], events[start:j]))
                start = j
        return self.apply_runs(runs)

    def apply_runs(self, runs: Iterable[tuple[int, Sequence[UserEvent]]],
                   lock: AbstractContextManager | None = None) -> ApplyResult:
        """Apply ``(lane, events)`` runs of records in order: :meth:`apply_columns` of their columns."""
        return self.apply_columns([(lane, UserEventColumns.from_records(events)) for lane, events in runs], lock)

    def apply_columns(self, runs: Iterable[tuple[int, UserEventColumns]],
                      lock: AbstractContextManager | None = None) -> ApplyResult:
        """Apply ``(lane, columns)`` runs in order — the shard's hot path, vectorised per batch.

        The columns come straight from the batch decoder
        (:class:`ingest.codec_batch.UserEventColumnsDecoder`), so no per-event
        Python object is touched here: per event only C-level loops run
        (``map`` over dict lookups into ``np.fromiter``). De-duplication takes
        one set operation per run when nothing in it is a duplicate (the
        common case) and falls back to the exact event-by-event window
        otherwise, so the result is always that of applying the events one at
        a time.

        ``lock``: the lock readers (:meth:`histories`, :meth:`set_item_sids`)
        take, when one thread applies while others read. Only the steps that
        change what a reader can see run under it — registering new user/item
        ids (with the row growth they need) and the final scatter into the
        rings — so a read waits for a fraction of a batch, never for its
        de-dup and id lookups. Only one thread may apply.
        """
        lock = lock or nullcontext()
        res = ApplyResult()
        kept = [self._dedup(lane, cols, res) for lane, cols in runs if len(cols)]
        self.duplicates += res.duplicates
        if len(kept) == 1:
            k = kept[0]
            uids, iids, types, tss, watches = k.user_id, k.item_id, k.type, k.ts, k.watch_ms
        else:  # concatenate the runs' columns (C-level list extends)
            uids, iids, types, tss, watches = [], [], [], [], []
            for k in kept:
                uids += k.user_id
                iids += k.item_id
                types += k.type
                tss += k.ts
                watches += k.watch_ms
        n = len(uids)
        if n == 0:
            return res
        rows = np.fromiter(map(self.user_row.get, uids, repeat(-1)), np.int64, n)     # [n]
        missing = np.flatnonzero(rows < 0)
        if len(missing):  # new users, numbered in order of first appearance
            new_uids = _pick(uids, missing.tolist())
            fresh = list(dict.fromkeys(new_uids))
            with lock:  # a reader must never find a user whose row is not allocated yet
                if len(self.user_ids) + len(fresh) > self.item.shape[0]:
                    self._grow(len(self.user_ids) + len(fresh), self.width)
                self.user_row.update(zip(fresh, range(len(self.user_ids), len(self.user_ids) + len(fresh))))
                self.user_ids += fresh
            res.new_users = len(fresh)
            rows[missing] = np.fromiter(map(self.user_row.__getitem__, new_uids), np.int64, len(missing))
        items = np.fromiter(map(self.item_index.get, iids, repeat(-1)), np.int32, n)  # [n]
        missing = np.flatnonzero(items < 0)
        if len(missing):
            new_iids = _pick(iids, missing.tolist())
            with lock:  # set_item_sids() may register items from another thread
                self._add_items(new_iids)
            items[missing] = np.fromiter(map(self.item_index.__getitem__, new_iids), np.int32, len(missing))
        if None in watches:
            watches = [-1 if w is None else w for w in watches]
        cols = (rows, items, np.fromiter(map(_TYPE_CODE.__getitem__, types), np.int8, n),
                np.fromiter(tss, np.int64, n), np.fromiter(watches, np.int32, n))
        with lock:
            self._scatter(*cols)
        res.applied = n
        self.events_applied += n
        return res

    def _dedup(self, lane: int, cols: UserEventColumns, res: ApplyResult) -> UserEventColumns:
        """The events of one lane's run that are not duplicates; updates the lane's window.

        Fast path: no id of the run is in the window and none repeats within
        the run, so every event is kept and the window becomes (old ids + the
        run's ids)[-window:] — exactly what one-at-a-time insertion gives.
        Otherwise the exact event-by-event path decides.
        """
        lo = self.lanes.get(lane)
        window = self.config.dedup_window
        if lo is None:
            lo = self.lanes[lane] = DedupWindow(window)
        if not window:
            return cols
        ids = cols.event_id
        if lo.add_if_all_new(ids):  # the window keeps the list as a chunk (columns are never changed)
            return cols
        keep = [j for j, eid in enumerate(ids) if not lo.seen_or_add(eid)]
        res.duplicates += len(ids) - len(keep)
        return cols.take(keep)

    def _scatter(self, rows, items, types, tss, watches) -> None:
        """Write events (already in order) into their users' rings — vectorised."""
        cap = self.config.capacity
        n = len(rows)
        order = np.argsort(rows, kind="stable")           # [n] events grouped by user, order kept
        srows = rows[order]
        starts = np.flatnonzero(np.r_[True, srows[1:] != srows[:-1]])
        counts = np.diff(np.r_[starts, n])
        uniq = srows[starts]                               # [u] users touched
        k = np.arange(n) - np.repeat(starts, counts)       # rank of each event within its user
        need_rows = int(uniq.max()) + 1
        if need_rows > self.item.shape[0]:
            self._grow(need_rows, self.width)
        need_width = int((self.head[uniq] + counts).max())
        if self.width < cap and need_width > self.width:
            self._grow(need_rows, min(need_width, cap))
        w = self.width
        # Only the newest `cap` events of a user in this batch survive; skip the rest so that
        # no two writes of the batch hit the same slot.
        if n > cap and (counts > cap).any():
            live = k >= np.repeat(counts, counts) - cap
            ev, r, k = order[live], srows[live], k[live]
        else:
            ev, r = order, srows
        flat = r * w + (self.head[r] + k) % w                # [m] slot index into the [U*W] arrays
        it = items[ev]
        self.item.reshape(-1)[flat] = it
        self.etype.reshape(-1)[flat] = types[ev]
        self.ts.reshape(-1)[flat] = tss[ev]
        self.watch.reshape(-1)[flat] = watches[ev]
        self.sid.reshape(-1)[flat] = self.item_sid[it]
        self.head[uniq] += counts
        self._dirty[uniq] = True
        last = starts + counts - 1
        self.last_ts[uniq] = tss[order[last]]

    # -- reads -----------------------------------------------------------------------------

    def _slots(self, rows: np.ndarray, max_len: int | None):
        """Gather coordinates of each row's newest ≤ max_len events, oldest first.

        Returns ``(lengths [B], T, row_idx [B, T], col_idx [B, T], valid [B, T])``.
        """
        w = self.width
        head = np.where(rows >= 0, self.head[np.maximum(rows, 0)], 0)   # [B]
        lengths = np.minimum(head, w)
        if max_len is not None:
            lengths = np.minimum(lengths, max_len)
        t = int(max_len) if max_len is not None else (int(lengths.max()) if len(lengths) else 0)
        ar = np.arange(t)                                                  # [T]
        valid = ar[None, :] < lengths[:, None]                             # [B, T]
        col = (head[:, None] - lengths[:, None] + ar[None, :]) % max(w, 1)  # [B, T]
        row = np.broadcast_to(np.maximum(rows, 0)[:, None], col.shape)
        return lengths.astype(np.int32), t, row, col, valid

    def rows_of(self, user_ids: Sequence[str]) -> np.ndarray:
        get = self.user_row.get
        return np.fromiter((get(u, -1) for u in user_ids), np.int64, len(user_ids))

    def histories(self, user_ids: Sequence[str], max_len: int | None = None) -> dict:
        """Padded, chronological (oldest → newest, left-aligned) histories of a batch of users.

        Returns a dict of arrays, B = len(user_ids), T = ``max_len`` or the longest history::

            items       int32 [B, T]  index into ``item_ids`` below, -1 = padding
            item_ids    list[str]     the distinct item ids of this batch
            event_type  int8  [B, T]  index into ``event_types``, -1 = padding
            ts          int64 [B, T]  event time (ms), 0 = padding
            watch_ms    int32 [B, T]  -1 = absent or padding
            sid_slot    int32 [B, T]  the item's semantic-ID slot, -1 = unknown or padding
            mask        bool  [B, T]  True = real event
            lengths     int32 [B]
            last_ts     int64 [B]     event time of the newest event, -1 = unknown user
            total       int64 [B]     events ever applied to the user (after de-dup)
            event_types tuple[str]    names of the type codes
        """
        rows = self.rows_of(user_ids)                                        # [B]
        lengths, t, r, c, valid = self._slots(rows, max_len)
        local = np.where(valid, self.item[r, c], -1)                        # [B, T]
        vocab, inv = np.unique(local[valid], return_inverse=True)
        items = np.full(local.shape, -1, np.int32)
        items[valid] = inv
        sid = np.where(valid, self.sid[r, c], -1)
        missing = valid & (sid < 0)
        if missing.any():
            sid[missing] = self.item_sid[local[missing]]
        known = rows >= 0
        return {
            "items": items,
            "item_ids": _pick(self.item_ids, vocab.tolist()),
            "event_type": np.where(valid, self.etype[r, c], -1).astype(np.int8),
            "ts": np.where(valid, self.ts[r, c], 0),
            "watch_ms": np.where(valid, self.watch[r, c], -1).astype(np.int32),
            "sid_slot": sid.astype(np.int32),
            "mask": valid,
            "lengths": lengths,
            "last_ts": np.where(known, self.last_ts[np.maximum(rows, 0)], -1),
            "total": np.where(known, self.head[np.maximum(rows, 0)], 0),
            "event_types": EVENT_TYPES,
        }

    def user_events(self, user_id: str) -> list[tuple[str, str, int, int]]:
        """One user's stored events as ``(item_id, type, ts, watch_ms)``, oldest first (tests, tools)."""
        h = self.histories([user_id])
        n = int(h["lengths"][0])
        return [(h["item_ids"][h["items"][0, j]], EVENT_TYPES[h["event_type"][0, j]],
                 int(h["ts"][0, j]), int(h["watch_ms"][0, j])) for j in range(n)]

    # -- checkpoints -----------------------------------------------------------------------

    def to_bytes(self) -> bytes:
        """Compact snapshot: only the stored events (ragged), the id tables and the de-dup windows."""
        return b"".join(self.encode_snapshot(self.snapshot_parts()))

    def snapshot_parts(self, reuse: bool = False) -> dict:
        """A consistent copy of everything a checkpoint holds, cheap enough for the consume loop.

        :meth:`encode_snapshot` (the slow part) can then run on another thread
        while this state keeps changing.

        ``reuse=False``: fresh copies of the ``[n, W]`` columns and id lists.
        ``reuse=True`` (the shard's periodic checkpoints): the columns go into
        buffers kept from the previous reusing snapshot and only the rows
        written since then (``_dirty``, set by every scatter) are copied, into
        memory that is already mapped — no allocation, no page faults, and at
        a million users only the active ones are touched; :meth:`precopy`
        shrinks what is left to copy here to a few rows. The id lists are
        not copied at all: ``user_ids`` and ``item_ids`` only ever grow by
        appending, so their first ``n_users`` / ``n_items`` entries never
        change. The caller must be done with the previous reusing snapshot's
        parts (the shard writes one checkpoint at a time). A growth of the
        arrays reallocates the buffers (one full copy).
        """
        n, n_items = self.num_users, len(self.item_ids)
        if reuse:
            snap = self._snap_buffers()
            dirty = np.flatnonzero(self._dirty[:n])                                           # [d]
            for name in self._COLS:
                if len(dirty) > n // 2:   # most rows: one memcpy beats a gather + scatter
                    np.copyto(snap[name][:n], getattr(self, name)[:n])
                elif len(dirty):
                    snap[name][dirty] = getattr(self, name)[dirty]
            self._dirty[:] = False
            cols = {name: snap[name][:n] for name in self._COLS}
            users, items = self.user_ids, self.item_ids
        else:
            cols = {name: getattr(self, name)[:n].copy() for name in self._COLS}   # [n, W] memcpy
            users, items = list(self.user_ids), list(self.item_ids)
        return {
            "head": self.head[:n].copy(), "last_ts": self.last_ts[:n].copy(), **cols,
            "item_sid": self.item_sid[:n_items].copy(),
            "user_ids": users, "n_users": n, "item_ids": items, "n_items": n_items,
            "lanes": {str(k): v.view() for k, v in self.lanes.items()},   # chunk refs, not ids
            "events_applied": self.events_applied, "duplicates": self.duplicates,
            "capacity": self.config.capacity,
        }

    def precopy(self, max_rows: int) -> int:
        """Copy up to ``max_rows`` rows written since the last reusing snapshot into its buffers, ahead of it.

        Iterative pre-copy (as in live migration of virtual machines, Clark et
        al., NSDI 2005): the shard calls this on a few consecutive loop steps
        before a checkpoint, so the snapshot itself (``snapshot_parts(reuse=True)``)
        only copies the rows written in between — the consume loop never stops
        for a whole-state copy. A row copied here and written again later is
        simply dirty again; so any number of calls leaves the snapshot exact.
        Must not run while a previous reusing snapshot's parts are still being
        read (the shard only calls it with no checkpoint write in flight).
        Returns how many dirty rows are left.
        """
        snap, n = self._snap_buffers(), self.num_users
        dirty = np.flatnonzero(self._dirty[:n])                                               # [d]
        part = dirty[:max_rows]
        if len(part):
            for name in self._COLS:
                snap[name][part] = getattr(self, name)[part]
            self._dirty[part] = False
        return len(dirty) - len(part)

    def _snap_buffers(self) -> dict:
        """The reusing snapshot's column buffers, (re)allocated — every row dirty — when the arrays grew."""
        snap = self._snap
        if snap is None or snap["item"].shape != self.item.shape:
            snap = self._snap = {name: np.empty_like(getattr(self, name)) for name in self._COLS}  # [rows, W]
            self._dirty[:] = True
        return snap

    @staticmethod
    def encode_snapshot(parts: dict) -> list:
        """The checkpoint bytes of :meth:`snapshot_parts`, as a list of buffers to write one after another.

        Layout: ``b"GRSQ" | u32 version | u64 len(meta) | meta (msgpack) | raw arrays``,
        the arrays little-endian, back to back, described (name, dtype, shape)
        in ``meta``. Only stored events are kept (ragged, oldest → newest per
        user). This runs on the shard's checkpoint writer thread while the
        consume loop goes on, so it avoids long GIL-holding calls: no zip
        container or second CRC (the checkpoint file has its own), array
        buffers are handed to the file write as they are (never copied into
        one blob), and id lists are joined in chunks — newline-separated,
        since contract ids never contain whitespace.
        """
        head = parts["head"]                                           # [n]
        n, w = parts["item"].shape
        lengths = np.minimum(head, w)                                  # [n]
        rows = np.repeat(np.arange(n), lengths)                        # [stored events]
        k = np.arange(len(rows)) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        flat = rows * w + (head[rows] - lengths[rows] + k) % max(w, 1)  # oldest → newest per user
        arrays = {"head": head, "last_ts": parts["last_ts"], "lengths": lengths.astype(np.int32),
                  "item_sid": parts["item_sid"],
                  **{c: parts[c].reshape(-1)[flat] for c in SequenceState._COLS}}
        arrays = {name: np.ascontiguousarray(a, a.dtype.newbyteorder("<")) for name, a in arrays.items()}
        meta = {
            "capacity": parts["capacity"],
            "user_ids": _join_ids(parts["user_ids"][:parts["n_users"]]),
            "item_ids": _join_ids(parts["item_ids"][:parts["n_items"]]),
            "lanes": {k: _join_view(*v) for k, v in parts["lanes"].items()},
            "events_applied": parts["events_applied"],
            "duplicates": parts["duplicates"],
            "arrays": [[name, a.dtype.str, list(a.shape)] for name, a in arrays.items()],
        }
        head_blob = msgspec.msgpack.encode(meta)
        return [_FRAME.pack(_FRAME_MAGIC, STATE_VERSION, len(head_blob)), head_blob,
                *(a.data.cast("B") for a in arrays.values() if a.nbytes)]

    @classmethod
    def from_bytes(cls, blob: bytes, config: SequenceConfig = SequenceConfig()) -> "SequenceState":
        """Rebuild a state from :meth:`to_bytes` (the config may raise capacity, never silently lower it)."""
        blob = memoryview(blob)
        if bytes(blob[:4]) == _FRAME_MAGIC:
            _, version, n_meta = _FRAME.unpack_from(blob)
            meta = msgspec.msgpack.decode(blob[_FRAME.size:_FRAME.size + n_meta])
            pos, arr = _FRAME.size + n_meta, {}
            for name, dt, shape in meta["arrays"]:
                dtype = np.dtype(dt)
                size = dtype.itemsize * int(np.prod(shape))
                arr[name] = np.frombuffer(blob[pos:pos + size], dtype).reshape(shape)
                pos += size
        else:  # version 1: one msgpack map
            meta = msgspec.msgpack.decode(blob)
            version = meta.get("version")
        if version not in (1, STATE_VERSION):
            raise ValueError(f"sequence state version {version!r} is not {STATE_VERSION}; "
                             "delete the checkpoint directory to rebuild from the topic")
        if config.capacity < meta["capacity"]:
            raise ValueError(f"SequenceConfig.capacity={config.capacity} is below the checkpoint's "
                             f"{meta['capacity']}; use capacity >= {meta['capacity']} or delete the checkpoints")
        st = cls(config)
        if version == 1:  # .npz arrays and msgpack-chunked id lists
            arr = np.load(io.BytesIO(meta["arrays"]))
            ids = _decode_chunks
        else:
            ids = _split_ids
        st.user_ids = ids(meta["user_ids"])
        st.user_row = {u: i for i, u in enumerate(st.user_ids)}
        st.item_ids = ids(meta["item_ids"])
        st.item_index = {it: i for i, it in enumerate(st.item_ids)}
        st.item_sid = np.full(max(256, len(st.item_ids)), -1, np.int32)
        st.item_sid[: len(st.item_ids)] = arr["item_sid"]
        # DedupWindow keeps the newest dedup_window ids (none at window 0), as the live lane would
        st.lanes = {int(k): DedupWindow(config.dedup_window, ids(v)) for k, v in meta["lanes"].items()}
        st.events_applied = int(meta["events_applied"])
        st.duplicates = int(meta["duplicates"])
        n = len(st.user_ids)
        lengths = arr["lengths"].astype(np.int64)
        head = arr["head"]
        # A row that wrapped needs the full ring; otherwise the longest history is enough.
        width = config.capacity if (head > lengths).any() else (int(lengths.max()) if n else 1)
        st._grow(max(n, 1), min(max(width, 1), config.capacity))
        st.head[:n] = head
        st.last_ts[:n] = arr["last_ts"]
        w = st.width
        rows = np.repeat(np.arange(n), lengths)
        k = np.arange(len(rows)) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        cols = (head[rows] - lengths[rows] + k) % w
        st.item[rows, cols] = arr["item"]
        st.etype[rows, cols] = arr["etype"]
        st.ts[rows, cols] = arr["ts"]
        st.watch[rows, cols] = arr["watch"]
        st.sid[rows, cols] = arr["sid"]
        return st

    def snapshot(self) -> dict[str, list[tuple[str, str, int, int]]]:
        """Every user's stored events (id strings, not internal indices) — for equality checks."""
        out = {}
        if not self.user_ids:
            return out
        h = self.histories(self.user_ids)
        ids = np.array(h["item_ids"] + [""], dtype=object)
        names = np.array(EVENT_TYPES + ("",), dtype=object)
        for b, u in enumerate(self.user_ids):
            n = int(h["lengths"][b])
            out[u] = list(zip(ids[h["items"][b, :n]].tolist(), names[h["event_type"][b, :n]].tolist(),
                              h["ts"][b, :n].tolist(), h["watch_ms"][b, :n].tolist()))
        return out
