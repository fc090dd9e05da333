"""Data sets as contract records: one shape for the synthetic world, MovieLens and user files.

Everything downstream (replay into Kafka, offline training, evaluation) sees a
:class:`Dataset`: the user events in event-time order and the catalog upserts
(``item-events``) in time order, possibly with items arriving after the first
user events. :func:`load_dataset` picks the source by name or path:

* ``"synthetic"`` — :class:`ingest.synthetic.SyntheticWorld` (keyword arguments
  go to :class:`ingest.synthetic.WorldConfig`);
* ``"ml100k"`` — MovieLens-100K (``path=`` or ``../shared/data/ml-100k``);
* ``"toys"`` — Amazon Toys and Games, 5-core, SASRec text (``path=``, ``GENREC_TOYS`` or
  ``../shared/data/amazon-toys/Toys.txt``);
* a file path — an interactions CSV/TSV ``user,item,timestamp[,title]`` (with or
  without a header; seconds or milliseconds), or SASRec-style text where each
  line is ``user item [item …]`` in the user's order (no timestamps: one
  minute per step is synthesised so event-time order keeps each user's order).
"""

from __future__ import annotations

import csv
import heapq
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from ingest.contract import ItemEvent, UserEvent

#: Default location of MovieLens-100K: beside the repository, never committed (licence).
DEFAULT_ML100K = Path(__file__).resolve().parents[2] / "shared" / "data" / "ml-100k"
#: Default location of Amazon Toys (SASRec text, one line per user): beside the repository, never committed.
DEFAULT_TOYS = Path(__file__).resolve().parents[2] / "shared" / "data" / "amazon-toys" / "Toys.txt"


@dataclass
class Dataset:
    """A data set as contract records.

    ``user_events`` are in event-time order (ties keep generation order);
    ``item_events`` are catalog upserts/retires in time order.
    """

    name: str
    user_events: list[UserEvent]
    item_events: list[ItemEvent]
    meta: dict = field(default_factory=dict)

    @property
    def n_events(self) -> int:
        return len(self.user_events)

    def user_ids(self) -> list[str]:
        """Distinct user ids in order of first appearance."""
        return list(dict.fromkeys(e.user_id for e in self.user_events))

    def item_ids(self) -> list[str]:
        """Distinct item ids: the catalog first, then items only seen in events."""
        ids = dict.fromkeys(e.item_id for e in self.item_events)
        ids.update(dict.fromkeys(e.item_id for e in self.user_events))
        return list(ids)

    def stream(self) -> Iterator[UserEvent | ItemEvent]:
        """User and item events merged in event-time order (an item event before user events at the same ts)."""
        return merge_by_time(self.item_events, self.user_events)

    def head(self, n: int) -> "Dataset":
        """The first ``n`` user events and the catalog up to the last of them (for quick runs)."""
        ue = self.user_events[:n]
        last = ue[-1].ts if ue else -1
        return Dataset(self.name, ue, [e for e in self.item_events if e.ts <= last or not ue], dict(self.meta))

    def __repr__(self) -> str:
        return (f"Dataset({self.name!r}, user_events={len(self.user_events)}, "
                f"item_events={len(self.item_events)})")


def merge_by_time(item_events: list[ItemEvent], user_events: list[UserEvent]) -> Iterator[UserEvent | ItemEvent]:
    """Merge two ts-ordered lists; on equal ts item events come first (an item exists before it is seen)."""
    a = ((e.ts, 0, i, e) for i, e in enumerate(item_events))
    b = ((e.ts, 1, i, e) for i, e in enumerate(user_events))
    for *_, e in heapq.merge(a, b, key=lambda t: (t[0], t[1], t[2])):
        yield e


def load_dataset(name_or_path: str, **kw) -> Dataset:
    """Load ``"synthetic"``, ``"ml100k"``, ``"toys"`` or an interactions file as a :class:`Dataset`."""
    if name_or_path == "synthetic":
        from ingest.synthetic import SyntheticWorld, WorldConfig

        return SyntheticWorld(WorldConfig(**kw)).dataset()
    if name_or_path in ("ml100k", "ml-100k", "movielens"):
        from ingest.movielens import load_ml100k

        return load_ml100k(kw.pop("path", None) or os.environ.get("GENREC_ML100K") or DEFAULT_ML100K, **kw)
    if name_or_path in ("toys", "amazon-toys"):
        path = Path(kw.pop("path", None) or os.environ.get("GENREC_TOYS") or DEFAULT_TOYS)
        if not path.is_file():
            raise FileNotFoundError(f"Amazon Toys not found at {path} (it is not committed: licence); put "
                                    "amazon-toys/Toys.txt under ../shared/data or set GENREC_TOYS=FILE")
        return load_interactions_file(path, **kw)
    path = Path(name_or_path)
    if path.is_dir() and (path / "u.data").is_file():
        from ingest.movielens import load_ml100k

        return load_ml100k(path, **kw)
    if not path.is_file():
        raise FileNotFoundError(
            f"data set {name_or_path!r} is neither 'synthetic', 'ml100k', 'toys' nor an existing file "
            "(interactions CSV/TSV user,item,timestamp[,title] or SASRec text 'user item item ...')")
    return load_interactions_file(path, **kw)


# ---- interaction files -----------------------------------------------------------------------

def _is_sasrec(first_line: str, path: Path) -> bool:
    return "," not in first_line and "\t" not in first_line and path.suffix not in (".csv", ".tsv")


def load_interactions_file(path: str | Path, event_type: str = "click", base_ts_ms: int = 1_600_000_000_000,
                           step_ms: int = 60_000) -> Dataset:
    """Read an interactions CSV/TSV or SASRec text file (see the module docstring)."""
    path = Path(path)
    with open(path, encoding="utf-8", errors="replace") as f:
        first = f.readline()
    if not first.strip():
        raise ValueError(f"{path} is empty; expected lines 'user,item,timestamp[,title]' or 'user item item ...'")
    rows: list[tuple[int, int, str, str]] = []  # (ts, line order, user, item)
    titles: dict[str, str] = {}
    if _is_sasrec(first, path):
        pos: dict[str, int] = {}
        n = 0
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                tok = line.split()
                if len(tok) < 2:
                    continue
                user = tok[0]
                for item in tok[1:]:
                    k = pos.get(user, 0)
                    pos[user] = k + 1
                    rows.append((base_ts_ms + k * step_ms, n, user, item))
                    n += 1
        kind = "sasrec"
    else:
        delim = "\t" if "\t" in first else ","
        with open(path, encoding="utf-8", errors="replace", newline="") as f:
            reader = csv.reader(f, delimiter=delim)
            raw = []
            for i, rec in enumerate(reader):
                if len(rec) < 3 or not rec[0].strip():
                    continue
                try:
                    ts = float(rec[2])
                except ValueError:
                    if i == 0:
                        continue  # header
                    raise ValueError(f"{path}:{i + 1}: timestamp {rec[2]!r} is not a number "
                                     "(expected user,item,timestamp[,title])") from None
                raw.append((ts, rec[0].strip(), rec[1].strip(), rec[3].strip() if len(rec) > 3 else ""))
        if not raw:
            raise ValueError(f"{path} has no rows 'user,item,timestamp[,title]'")
        scale = 1000 if max(r[0] for r in raw) < 1e11 else 1  # seconds -> ms
        for n, (ts, user, item, title) in enumerate(raw):
            rows.append((int(ts * scale), n, user, item))
            if title:
                titles.setdefault(item, title)
        kind = "csv"
    rows.sort()
    prefix = path.stem.replace(" ", "_")
    user_events = [UserEvent(event_id=f"{prefix}-{n}", user_id=u, item_id=i, type=event_type, ts=ts)
                   for ts, n, u, i in rows]
    first_seen: dict[str, int] = {}
    for e in user_events:
        first_seen.setdefault(e.item_id, e.ts)
    item_events = sorted((ItemEvent(item_id=i, ts=ts, title=titles.get(i)) for i, ts in first_seen.items()),
                         key=lambda e: e.ts)
    return Dataset(prefix, user_events, item_events, {"source": str(path), "format": kind})
