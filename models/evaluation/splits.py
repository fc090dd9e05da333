"""Leave-one-out split of interaction logs (the standard sequential-recommendation protocol).

As in SASRec (Kang & McAuley 2018) and most work after it: each user's
interactions are ordered by time; the last one is the test target, the
second-to-last the validation target, and the rest is training data. At test
time the history is everything before the test item (training + validation
item); at validation time, the training part only. Users with fewer than
``min_events`` interactions stay entirely in training and are not evaluated.

Input is plain arrays (user, item, timestamp and optional event type), so the
split is the same whatever the source (interactions file, SASRec text file,
MovieLens, the synthetic world, the Parquet archive). Raw ids are mapped to
contiguous indices: items by first appearance in time order — the catalog is
every item seen anywhere in the log (full ranking ranks all of them).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from models.evaluation.ranker import Histories


@dataclass(frozen=True)
class SplitConfig:
    """How the log is split.

    min_events: users with fewer interactions are training-only (≥ 3 so that
        train, validation and test each get one).
    max_users: keep only the first ``max_users`` users (by raw-id order) — for
        quick runs; 0 = all.
    dedupe: keep only a user's first interaction with each item. Logs with
        several engaged events per item (click, then watch, then like) would
        otherwise make the test target an item already in the history, which
        the exclude-seen rule (:mod:`models.evaluation.ranker`) can never recommend.
    """

    min_events: int = 3
    max_users: int = 0
    dedupe: bool = True

    def __post_init__(self) -> None:
        if self.min_events < 3:
            raise ValueError(f"SplitConfig.min_events must be >= 3 (train, valid, test), got {self.min_events}")
        if self.max_users < 0:
            raise ValueError(f"SplitConfig.max_users must be >= 0 (0 = all users), got {self.max_users}")


@dataclass(frozen=True)
class Cases:
    """Evaluation cases: each user's history and the one item to be found."""

    users: np.ndarray       # [B] user indices
    histories: Histories    # B histories
    targets: np.ndarray     # [B] item indices

    def __len__(self) -> int:
        return len(self.targets)

    def subset(self, idx) -> "Cases":
        idx = np.asarray(idx, dtype=np.int64)
        return Cases(self.users[idx], self.histories.subset(idx.tolist()), self.targets[idx])


@dataclass(frozen=True)
class LeaveOneOut:
    """A leave-one-out split: per-user time-ordered sequences and their three parts.

    ``item_ids[i]`` is the raw id of item index ``i``; ``user_ids[u]`` that of
    user index ``u``. ``items[u]``, ``ts[u]``, ``types[u]`` are user ``u``'s
    whole time-ordered sequence.
    """

    user_ids: np.ndarray
    item_ids: np.ndarray
    items: list[np.ndarray]
    ts: list[np.ndarray]
    types: list[np.ndarray]
    min_events: int

    @property
    def n_users(self) -> int:
        return len(self.user_ids)

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    def _evaluated(self) -> np.ndarray:
        return np.array([u for u, s in enumerate(self.items) if len(s) >= self.min_events], dtype=np.int64)

    def _cut(self, u: int, drop: int) -> int:
        """Length of user ``u``'s sequence with its last ``drop`` events removed (if evaluated)."""
        n = len(self.items[u])
        return n - drop if n >= self.min_events else n

    def train(self) -> Histories:
        """Training sequences: all but the last two events of evaluated users, all of the others."""
        cut = [self._cut(u, 2) for u in range(self.n_users)]
        return Histories([s[:c] for s, c in zip(self.items, cut)],
                         [s[:c] for s, c in zip(self.ts, cut)],
                         [s[:c] for s, c in zip(self.types, cut)])

    def train_valid(self) -> Histories:
        """Training plus validation item (what a final model may be refit on before testing)."""
        cut = [self._cut(u, 1) for u in range(self.n_users)]
        return Histories([s[:c] for s, c in zip(self.items, cut)],
                         [s[:c] for s, c in zip(self.ts, cut)],
                         [s[:c] for s, c in zip(self.types, cut)])

    def _cases(self, drop: int) -> Cases:
        users = self._evaluated()
        hist = Histories([self.items[u][:len(self.items[u]) - drop] for u in users],
                         [self.ts[u][:len(self.ts[u]) - drop] for u in users],
                         [self.types[u][:len(self.types[u]) - drop] for u in users])
        targets = np.array([self.items[u][len(self.items[u]) - drop] for u in users], dtype=np.int64)
        return Cases(users, hist, targets)

    def valid(self) -> Cases:
        """Validation: history = training part, target = second-to-last item."""
        return self._cases(2)

    def test(self) -> Cases:
        """Test: history = everything but the last item, target = the last item."""
        return self._cases(1)

    def item_counts(self, part: str = "train") -> np.ndarray:
        """[n_items] interaction counts of one part ('train' or 'train_valid')."""
        h = self.train() if part == "train" else self.train_valid()
        flat = np.concatenate(h.items) if h.items else np.zeros(0, np.int64)
        return np.bincount(flat, minlength=self.n_items)


def leave_one_out(users: np.ndarray, items: np.ndarray, ts: np.ndarray,
                  types: np.ndarray | None = None, cfg: SplitConfig = SplitConfig()) -> LeaveOneOut:
    """Split an interaction log given as parallel arrays [N] (raw ids may be any hashable type).

    Ties in time keep the input order (stable sort), so a log that is already
    in event order splits the way it reads.
    """
    users, items, ts = np.asarray(users), np.asarray(items), np.asarray(ts, dtype=np.int64)
    n = len(users)
    if not (len(items) == len(ts) == n) or (types is not None and len(types) != n):
        raise ValueError(f"users, items, ts (and types) must have equal lengths, got "
                         f"{len(users)}, {len(items)}, {len(ts)}" + ("" if types is None else f", {len(types)}"))
    if n == 0:
        raise ValueError("the interaction log is empty; nothing to split")
    types = np.zeros(n, np.int64) if types is None else np.asarray(types, dtype=np.int64)

    user_ids, uidx = np.unique(users, return_inverse=True)
    if cfg.max_users and cfg.max_users < len(user_ids):
        keep = uidx < cfg.max_users
        users, items, ts, types = users[keep], items[keep], ts[keep], types[keep]
        user_ids, uidx = np.unique(users, return_inverse=True)

    order = np.lexsort((np.arange(len(ts)), ts))  # by time, stable
    if cfg.dedupe:
        pair = np.stack([uidx[order], np.unique(items, return_inverse=True)[1].reshape(-1)[order]], 1)
        _, first = np.unique(pair, axis=0, return_index=True)
        order = order[np.sort(first)]
        if len(np.unique(uidx[order])) < len(user_ids):  # cannot happen: every user keeps >= 1 event
            raise AssertionError("dedupe dropped a user")
    # item index by first appearance in time order
    seen: dict = {}
    item_of = np.empty(len(items), dtype=np.int64)
    for pos in order:
        it = items[pos]
        j = seen.get(it)
        if j is None:
            j = seen[it] = len(seen)
        item_of[pos] = j
    item_ids = np.empty(len(seen), dtype=object)
    for it, j in seen.items():
        item_ids[j] = it
    try:
        item_ids = item_ids.astype(np.asarray(items).dtype)
    except (TypeError, ValueError):
        pass

    by_user = order[np.argsort(uidx[order], kind="stable")]  # grouped by user, time order inside
    bounds = np.searchsorted(uidx[by_user], np.arange(len(user_ids) + 1))
    seq_items = [item_of[by_user[a:b]] for a, b in zip(bounds[:-1], bounds[1:])]
    seq_ts = [ts[by_user[a:b]] for a, b in zip(bounds[:-1], bounds[1:])]
    seq_types = [types[by_user[a:b]] for a, b in zip(bounds[:-1], bounds[1:])]
    return LeaveOneOut(user_ids, item_ids, seq_items, seq_ts, seq_types, cfg.min_events)
