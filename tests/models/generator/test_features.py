"""History features and training sessions built from raw arrays."""

from __future__ import annotations

import numpy as np

from models.generator.features import FlatEvents, gap_buckets, history_batch
from models.generator.sessions import SessionConfig, build_sessions, split_last

SIDS = np.stack([np.arange(20), np.arange(20) % 3], 1)   # item i -> SID (i, i % 3)
CLICK, SKIP = 1, 7   # EVENT_TYPES indices of "click" and "skip"


def test_history_batch_left_pads_truncates_and_drops_unknown():
    h = history_batch([np.array([1, 2, 3]), np.array([], dtype=np.int64), np.array([4, 99, 5, 6, 7, 8])],
                      SIDS, max_history=4, n_time_buckets=8)
    assert h.sids.shape == (3, 4, 2)
    assert h.mask.tolist() == [[False, True, True, True], [False] * 4, [True] * 4]
    assert h.sids[0, 1:, 0].tolist() == [1, 2, 3]
    assert h.sids[2, :, 0].tolist() == [5, 6, 7, 8]          # 99 unknown: dropped; most recent 4 kept
    assert (h.event_type[~h.mask] == 0).all() and (h.event_type[h.mask] > 0).all()


def test_time_gap_buckets():
    assert gap_buckets(np.array([0, 1000, 3000, 10**9]), np.array([False, True, True, True]), 16).tolist() == \
        [1, 3, 4, 15]
    h = history_batch([np.array([1, 2, 3])], SIDS, 4, 16, ts=[np.array([0, 1000, 3000])])
    assert h.time_bucket[0].tolist() == [0, 1, 3, 3]   # gaps 1 s, 2 s


def test_sessions_targets_are_next_engaged_items():
    types = [np.array([CLICK, SKIP, CLICK, CLICK]), np.array([CLICK, CLICK])]
    ev = FlatEvents.from_sequences([np.array([1, 2, 3, 4]), np.array([5, 6])], types, n_items=20)
    ex = build_sessions(ev, SessionConfig(session_len=2))
    # anchors are engaged events; the skipped item 2 is never a target, sessions stop at the user's end
    assert ex.targets.tolist() == [[1, 3], [3, 4], [4, -1], [5, 6], [6, -1]]
    hist, tgt, tmask = ex.batch(np.arange(len(ex)), SIDS, 4, 16)
    assert hist.mask.sum(1).tolist() == [0, 2, 3, 0, 1]       # the skip stays in the history
    assert tgt[:, :, 0].tolist() == [[1, 3], [3, 4], [4, 0], [5, 6], [6, 0]]
    assert tmask.tolist() == [[True, True], [True, True], [True, False], [True, True], [True, False]]


def test_split_last_holds_out_each_users_last_item():
    ev = FlatEvents.from_sequences([np.array([1, 2, 3]), np.array([4]), np.array([5, 6])], n_items=20,
                                   default_type=CLICK)
    train, valid = split_last(ev, SessionConfig(session_len=3))
    assert valid.targets[:, 0].tolist() == [3, 6]
    assert 3 not in train.targets and 6 not in train.targets
    assert 4 in train.targets                                   # single-event user stays in training
    hist, _, _ = valid.batch(np.arange(len(valid)), SIDS, 4, 16)
    assert hist.mask.sum(1).tolist() == [2, 1]
