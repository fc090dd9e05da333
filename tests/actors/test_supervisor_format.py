"""Supervisor status rendering and metric samples (pure functions), and the CLI's parser."""

from __future__ import annotations

from actors.supervisor import format_status, metric_samples
from infra.cli import build_parser
from infra.commands.sequences import describe_user


def _status():
    row = {"shard": 0, "partitions": [0, 2], "state": "running", "users": 12, "events_applied": 3400,
           "duplicates_dropped": 5, "dead_lettered": 1, "lag": 17, "events_per_s": 950.0,
           "freshness_p50_ms": 40.0, "freshness_p99_ms": 180.0, "ingest_p99_ms": 120.0, "apply_p99_ms": 2.5,
           "freshness_samples": 9,
           "checkpoint_age_s": 1.5, "restarts_seen": 2}
    dead = {"shard": 1, "partitions": [1, 3], "state": "unavailable (RayActorError)", "restarts_seen": 0}
    total = {"shards": 2, "running": 1, "partitions": 4, "users": 12, "events_applied": 3400,
             "duplicates_dropped": 5, "dead_lettered": 1, "lag": 17, "events_per_s": 950.0}
    return {"shards": [row, dead], "total": total}


def test_format_status_shows_each_shard_and_totals():
    text = format_status(_status())
    lines = text.splitlines()
    assert "lag" in lines[0] and "fresh p99" in lines[0] and "ckpt age" in lines[0]
    assert any(l.split()[:3] == ["0", "0,2", "running"] and "180ms" in l and "17" in l and "2.5ms" in l
               for l in lines)
    assert "apply p99" in lines[0]
    assert any(l.split()[:3] == ["1", "1,3", "unavailable"] for l in lines)
    assert "1/2 shards over 4 partitions" in lines[-1]


def test_metric_samples_label_shards_and_mark_down_ones():
    samples = metric_samples(_status())
    up = {s[1]["shard"]: s[2] for s in samples if s[0] == "genrec_sequences_shard_up"}
    assert up == {"0": 1.0, "1": 0.0}
    lag = [s for s in samples if s[0] == "genrec_sequences_lag_messages"]
    assert lag == [("genrec_sequences_lag_messages", {"shard": "0", "partitions": "0,2"}, 17.0)]


def test_cli_parses_sequences_command_and_describe_user():
    args = build_parser().parse_args(["sequences", "--bootstrap", "127.0.0.1:9092", "--shards", "2",
                                      "--users", "u1,u2", "--duration", "3"])
    assert (args.shards, args.users, args.duration, args.capacity) == (2, "u1,u2", 3.0, 256)
    import numpy as np

    h = {"lengths": np.array([2, 0]), "event_types": ("impression", "click"), "item_ids": ["a", "b"],
         "event_type": np.array([[0, 1], [-1, -1]]), "items": np.array([[1, 0], [-1, -1]]),
         "total": np.array([7, 0]), "last_ts": np.array([1000, -1])}
    assert describe_user(h, 0, "u1", now_ms=1250.0) == "        u1: [7 events] … impression:b → click:a  newest 250 ms ago"
    assert "no events yet" in describe_user(h, 1, "u2")
