"""MovieLens-100K adapter: ratings → ``user-events``, movies → ``item-events``.

Reads the GroupLens files as they are distributed (F. M. Harper, J. A. Konstan,
"The MovieLens Datasets: History and Context", ACM TiiS 2015); the data is not
committed (licence), so the path is given or defaults to ``../shared/data/ml-100k``.

* ``u.data`` (tab-separated ``user item rating unix_seconds``) → one
  ``UserEvent`` per rating: ``type="rating"``, ``value`` = the rating,
  ``ts`` in milliseconds, ids as strings, in event-time order (ties keep file
  order); ``event_id`` is ``ml100k-{line}``, unique and deterministic.
* ``u.item`` (pipe-separated, **latin-1**) → one ``ItemEvent`` upsert per movie
  with its title, its genres as tags and a short text; every movie is in the
  catalog at the time of the first rating (the catalog predates the log).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ingest.contract import ItemEvent, UserEvent
from ingest.datasets import Dataset

GENRES = ["unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary",
          "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller",
          "War", "Western"]


def _require(path: Path, name: str) -> Path:
    f = path / name
    if not f.is_file():
        raise FileNotFoundError(
            f"MovieLens-100K file {f} not found: pass the folder that holds u.data and u.item "
            "(download ml-100k from grouplens.org; it is not committed for licence reasons)")
    return f


def read_items(path: str | Path, ts_ms: int = 0) -> list[ItemEvent]:
    """``u.item`` as catalog upserts (title, genres as tags, a short text)."""
    path = Path(path)
    genres = GENRES
    gfile = path / "u.genre"
    if gfile.is_file():
        pairs = [ln.split("|") for ln in gfile.read_text(encoding="latin-1").splitlines() if "|" in ln]
        genres = [g for g, _ in sorted(pairs, key=lambda p: int(p[1]))]
    out = []
    for line in _require(path, "u.item").read_text(encoding="latin-1").splitlines():
        f = line.split("|")
        if len(f) < 5:
            continue
        flags = f[5:5 + len(genres)]
        tags = [g for g, x in zip(genres, flags) if x.strip() == "1" and g != "unknown"]
        title = f[1].strip() or f"movie {f[0]}"
        # title and tags are fields of their own: ItemEvent.content_text() joins title, tags and
        # text for the encoder, so the text holds only what they do not (repeating them doubled
        # the encoder's work per item)
        text = f"Released {f[2].strip()}." if f[2].strip() else None
        out.append(ItemEvent(item_id=f[0].strip(), ts=ts_ms, op="upsert", title=title, text=text,
                             tags=tags or None))
    return out


def read_ratings(path: str | Path) -> list[UserEvent]:
    """``u.data`` as rating events in event-time order."""
    arr = np.loadtxt(_require(Path(path), "u.data"), dtype=np.int64, ndmin=2)  # [N, 4]
    if arr.shape[1] < 4:
        raise ValueError(f"{Path(path) / 'u.data'} must have 4 tab-separated columns user item rating ts")
    order = np.argsort(arr[:, 3], kind="stable")
    users, items, ratings, ts = (arr[order, k].tolist() for k in range(4))
    lines = order.tolist()
    return [UserEvent(event_id=f"ml100k-{n}", user_id=str(u), item_id=str(i), type="rating", ts=t * 1000,
                      value=float(r))
            for n, u, i, r, t in zip(lines, users, items, ratings, ts)]


def load_ml100k(path: str | Path, limit: int | None = None) -> Dataset:
    """MovieLens-100K at ``path`` as a :class:`Dataset` (``limit``: first N ratings in time order)."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(
            f"MovieLens-100K folder {path} not found: pass --path to the folder that holds u.data and u.item "
            "(it is not committed for licence reasons; the default is ../shared/data/ml-100k)")
    events = read_ratings(path)
    if limit is not None:
        events = events[:limit]
    items = read_items(path, ts_ms=events[0].ts if events else 0)
    return Dataset("ml100k", events, items, {"source": str(path)})
