"""Data set loading: MovieLens-100K, interaction files, and the dispatch by name or path."""

from __future__ import annotations

import pytest

from ingest.codec import decode, encode
from ingest.contract import ITEM_EVENTS, USER_EVENTS
from ingest.datasets import load_dataset


def test_ml100k_ratings_become_time_ordered_rating_events(ml100k_path):
    d = load_dataset("ml100k", path=ml100k_path)
    assert len(d.user_events) >= 99_000 and len(d.item_events) == 1682
    ev = d.user_events
    assert all(a.ts <= b.ts for a, b in zip(ev, ev[1:]))
    assert {e.type for e in ev} == {"rating"}
    assert {e.value for e in ev} <= {1.0, 2.0, 3.0, 4.0, 5.0}
    assert len({e.event_id for e in ev}) == len(ev)
    assert ev[0].ts > 8e11  # milliseconds (1997)
    toy = next(e for e in d.item_events if e.item_id == "1")
    assert toy.title == "Toy Story (1995)" and toy.tags == ["Animation", "Children's", "Comedy"]
    # latin-1 titles decode (e.g. accented characters) and every record passes the contract
    assert any(any(ord(c) > 127 for c in e.title) for e in d.item_events)
    for e in d.item_events:
        assert decode(ITEM_EVENTS, encode(e)) == e
    for e in ev[::101]:
        assert decode(USER_EVENTS, encode(e)) == e
    assert all(e.ts <= ev[0].ts for e in d.item_events)


def test_missing_movielens_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="u.data"):
        load_dataset("ml100k", path=tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="neither"):
        load_dataset(str(tmp_path / "missing.csv"))


def test_csv_with_header_seconds_and_titles(tmp_path):
    p = tmp_path / "log.csv"
    p.write_text("user,item,timestamp,title\nA,x,5,Film X\nB,y,3,\nA,y,7,Y film\n")
    d = load_dataset(str(p))
    assert [(e.user_id, e.item_id, e.ts) for e in d.user_events] == [("B", "y", 3000), ("A", "x", 5000),
                                                                      ("A", "y", 7000)]
    assert [(e.item_id, e.title, e.ts) for e in d.item_events] == [("y", "Y film", 3000), ("x", "Film X", 5000)]


def test_tsv_without_header_in_ms(tmp_path):
    p = tmp_path / "log.tsv"
    p.write_text("1\t10\t1700000000001\n2\t11\t1700000000000\n")
    d = load_dataset(str(p))
    assert [e.ts for e in d.user_events] == [1700000000000, 1700000000001]
    assert d.user_events[0].user_id == "2"


def test_sasrec_text_keeps_each_users_order(tmp_path):
    p = tmp_path / "seq.txt"
    p.write_text("1 5\n1 6\n2 5 9\n1 7\n")
    d = load_dataset(str(p))
    per_user = {}
    for e in d.user_events:
        per_user.setdefault(e.user_id, []).append(e.item_id)
    assert per_user == {"1": ["5", "6", "7"], "2": ["5", "9"]}
    assert all(a.ts <= b.ts for a, b in zip(d.user_events, d.user_events[1:]))


def test_synthetic_by_name_and_stream_merge():
    d = load_dataset("synthetic", n_users=50, n_items=60, n_topics=4)
    s = list(d.stream())
    assert len(s) == d.n_events + len(d.item_events)
    assert all(a.ts <= b.ts for a, b in zip(s, s[1:]))
    h = d.head(100)
    assert h.n_events == 100 and all(e.ts <= h.user_events[-1].ts for e in h.item_events)


def test_amazon_toys_by_name_is_the_published_5_core_split():
    from ingest.datasets import DEFAULT_TOYS, load_dataset

    if not DEFAULT_TOYS.is_file():
        pytest.skip(f"Amazon Toys not found at {DEFAULT_TOYS} (it is not committed: licence); put "
                    "amazon-toys/Toys.txt under ../shared/data to run this test")
    ds = load_dataset("toys")
    users = {e.user_id for e in ds.user_events}
    # the data set's README: 19,412 users, 11,924 items, 167,597 interactions
    assert (len(users), len(ds.item_events), len(ds.user_events)) == (19_412, 11_924, 167_597)
    by_user: dict[str, list] = {}
    for e in ds.user_events:
        by_user.setdefault(e.user_id, []).append(e)
    first = DEFAULT_TOYS.read_text().split("\n", 1)[0].split()
    assert [e.item_id for e in by_user[first[0]]] == first[1:]          # each user's order is kept


def test_missing_toys_is_a_clear_error(tmp_path):
    from ingest.datasets import load_dataset

    with pytest.raises(FileNotFoundError, match="Amazon Toys not found"):
        load_dataset("toys", path=str(tmp_path / "nope.txt"))
