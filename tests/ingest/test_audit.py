"""The auditor: each invariant fails on a planted fault (pure checks), and `genrec audit` reads a real broker
and a real archive, passes a clean pipeline and exits 1 with counts on a faulty one."""

from __future__ import annotations

import json

import pytest

from ingest.audit import TopicMessage, audit, check_acked, check_archive, check_rewards, check_served, watermark
from ingest.contract import DEAD_LETTERS, REWARDS, SERVED, USER_EVENTS, Reward, Served, UserEvent

T0 = 1_767_225_600_000
WINDOW = 60_000


def _served(rid, ts=T0, user="u1"):
    return Served(rid, user, ts, "v1", "exp", "a", ["i1"], [[0, 1]], [0.5])


def _reward(rid, user="u1"):
    return Reward(rid, user, "exp", "a", "v1", {"clicks": 1.0}, 1.0, T0 + WINDOW, T0 + WINDOW)


def _event(eid, ts, user="u1"):
    return UserEvent(eid, user, "i1", "click", ts)


def test_archive_check_finds_missing_doubled_and_foreign_offsets():
    msgs = [TopicMessage(0, o, object()) for o in range(5)] + [TopicMessage(0, 5, None)]   # offset 5: bad record
    ok = check_archive("t", msgs, [(0, 0), (0, 1), (0, 2)], {0: 3})
    assert ok.ok and ok.checked == 3 and ok.notes["not_yet_archived"] == 2
    bad = check_archive("t", msgs, [(0, 0), (0, 0), (0, 2), (0, 9)], {0: 4})
    assert dict(bad.violations) == {"archived_twice": 1, "missing": 2, "not_in_topic": 1}
    assert bad.examples["missing"] == ["0@1", "0@3"]


def test_acked_served_and_reward_checks():
    acked = check_acked([_event("e1", T0), _event("e2", T0), _event("e2", T0)], ["e1", "e2", "e3"])
    assert dict(acked.violations) == {"doubled": 1, "lost": 1} and acked.checked == 3
    served = [_served("r1"), _served("r2"), _served("r2")]
    assert dict(check_served(served, None).violations) == {"doubled": 1}
    both = check_served(served[:2], ["r1", "r3"])
    assert dict(both.violations) == {"answered_without_served": 1, "served_without_answer": 1}
    rewards = check_rewards([_served("r1"), _served("r2"), _served("r3", ts=T0 + 10 * WINDOW)],
                            [_reward("r1"), _reward("r1"), _reward("r9")], wm=T0 + 2 * WINDOW, window_ms=WINDOW)
    assert dict(rewards.violations) == {"missing": 1, "doubled": 1, "without_served": 1}
    assert rewards.checked == 2 and rewards.notes["pending_windows"] == 1


def test_watermark_is_the_slowest_source_minus_lateness():
    # each partition of each topic is a source of its own (as the joiner tracks them): served p1 is the slowest
    assert watermark([(0, 100), (1, 50)], [(0, 300), (1, 70)], lateness_ms=10) == 40
    assert watermark([(0, 100)], [(0, 300), (1, 70)], lateness_ms=0) == 70
    assert watermark([], [], 10) is None


def test_a_clean_run_has_no_violations():
    msgs = lambda recs: [TopicMessage(0, o, r) for o, r in enumerate(recs)]  # noqa: E731
    rep = audit(served=msgs([_served("r1")]), events=msgs([_event("e1", T0 + 5 * WINDOW)]),
                rewards=msgs([_reward("r1")]), window_ms=WINDOW, lateness_ms=0, acked=["e1"], answered=["r1"])
    assert rep.violations == 0 and rep.lines()[-1] == "audit: no violations"


@pytest.fixture
def kafka(broker, topic_name):
    from ingest.kafka_client import KafkaConfig
    from ingest.topics import TopicsConfig, ensure_topics

    cfg = KafkaConfig(bootstrap=broker, namespace=topic_name + ".")
    ensure_topics(cfg, TopicsConfig(partitions={USER_EVENTS: 2, SERVED: 2, REWARDS: 1, DEAD_LETTERS: 1}))
    return cfg


def test_genrec_audit_on_a_real_broker_and_archive(kafka, tmp_path, capsys):
    from infra.cli import main
    from ingest.archive import ArchiveConfig, Archiver
    from ingest.producer import EventProducer

    users = ["u1", "u2", "u3", "u4"]          # keyed by user: both partitions get records
    with EventProducer(kafka) as p:
        for k, u in enumerate(users):
            p.send(_served(f"r{k}", user=u))
            p.send(_event(f"e{k}", T0 + 1000, user=u))
            p.send(_event(f"late{k}", T0 + 3 * WINDOW, user=u))     # moves event time past every window
            p.send(_served(f"later{k}", ts=T0 + 3 * WINDOW, user=u))  # ... on served's partitions too
        for k, u in enumerate(users[:3]):
            p.send(_reward(f"r{k}", user=u))
        p.send(_reward("r0", user="u1"))                             # doubled
        p.send_raw(USER_EVENTS, b"u1", b'{"event_id": "broken"')     # a bad record: not archived, not a fault
    root = tmp_path / "archive"
    with Archiver(kafka, ArchiveConfig(root=str(root), topics=(USER_EVENTS, SERVED), flush_interval_s=60)) as a:
        a.run(until_idle=True, timeout_s=60)
    acked = tmp_path / "acked.txt"
    acked.write_text("".join(f"e{k}\nlate{k}\n" for k in range(4)) + "never-archived\n")
    answered = tmp_path / "answered.txt"
    answered.write_text("r0\nr1\nr2\nr3\n" + "".join(f"later{k}\n" for k in range(4)))
    base = ["audit", "--bootstrap", kafka.bootstrap, "--namespace", kafka.namespace, "--window-s", "60",
            "--lateness-s", "0", "--archive", str(root), "--answered", str(answered), "--json"]
    assert main(base + ["--acked", str(acked)]) == 1
    rep = json.loads(capsys.readouterr().out)
    checks = rep["checks"]
    assert checks[f"archive:{USER_EVENTS}"] == {"checked": 8, "violations": {}, "examples": {},
                                                 "notes": {"not_yet_archived": 0}}
    assert checks[f"archive:{SERVED}"]["checked"] == 8 and not checks[f"archive:{SERVED}"]["violations"]
    assert checks["acked_events"]["violations"] == {"lost": 1}
    assert checks["acked_events"]["examples"] == {"lost": ["never-archived"]}
    assert checks["served"] == {"checked": 8, "violations": {}, "examples": {}}
    assert checks["rewards"]["violations"] == {"missing": 1, "doubled": 1}
    assert checks["rewards"]["examples"] == {"missing": ["r3"], "doubled": ["r0"]}
    assert rep["violations"] == 3
    # the same deployment without the planted faults' inputs: a plain text report, exit 0 only when clean
    acked.write_text("".join(f"e{k}\n" for k in range(4)))
    assert main(base[:-1] + ["--acked", str(acked)]) == 1
    out = capsys.readouterr().out
    assert "rewards        checked         4  VIOLATED doubled 1, missing 1" in out and out.strip().endswith(
        "audit: 2 violations")


def test_genrec_audit_passes_a_clean_pipeline(kafka, capsys):
    from infra.cli import main
    from ingest.producer import EventProducer

    with EventProducer(kafka) as p:
        for k, u in enumerate(["u1", "u2", "u3"]):
            p.send(_served(f"r{k}", user=u))
            p.send(_event(f"late{k}", T0 + 3 * WINDOW, user=u))
            p.send(_reward(f"r{k}", user=u))
        for k, u in enumerate(["u1", "u2", "u3"]):                  # their windows are still open: pending
            p.send(_served(f"fresh{k}", ts=T0 + 3 * WINDOW, user=u))
    rc = main(["audit", "--bootstrap", kafka.bootstrap, "--namespace", kafka.namespace, "--window-s", "60",
               "--lateness-s", "0"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "rewards        checked         3  ok; pending_windows 3" in out and out.strip().endswith("no violations")


def test_served_allows_records_of_requests_whose_outcome_the_client_never_learnt():
    served = [_served("r1"), _served("lost1"), _served("lost2")]
    ok = check_served(served, ["r1"], unknown=2)
    assert ok.ok and ok.notes == {"unknown_outcome_requests": 2, "served_of_unknown_outcome": 2}
    bad = check_served(served, ["r1"], unknown=1)
    assert dict(bad.violations) == {"served_without_answer": 1}


def _user_events(n_users=5, n=60, seed=0):
    import random

    rng = random.Random(seed)
    return [_event(f"e{i}", T0 + i, user=f"u{rng.randrange(n_users)}") for i in range(n)]


def test_sequences_replay_check_finds_a_lost_and_a_doubled_event():
    from actors.sequence_state import SequenceConfig, SequenceState
    from ingest.audit import check_sequences, replay_sequences

    cfg = SequenceConfig(capacity=8)
    evs = _user_events()
    msgs = [TopicMessage(i % 2, i // 2, e) for i, e in enumerate(evs)] + [TopicMessage(0, 30, None)]
    replayed = replay_sequences(msgs, cfg)

    def live(events_by_part):
        st = SequenceState(cfg)
        for p, es in sorted(events_by_part.items()):
            st.apply(es, p)
        return st.snapshot()

    parts = {p: [e for i, e in enumerate(evs) if i % 2 == p] for p in (0, 1)}
    assert check_sequences(replayed, live(parts)).ok                       # the same engine, the same input
    lost = {0: parts[0][:-1], 1: parts[1]}                                  # a shard skipped its last event
    rep = check_sequences(replayed, live(lost))
    assert dict(rep.violations) == {"differs": 1} and rep.examples["differs"] == [parts[0][-1].user_id]
    dup = _event("x", T0 + 999, user="u0")
    doubled = {0: parts[0] + [dup], 1: parts[1] + [msgspec_replace(dup, event_id="x2")]}   # applied twice
    assert check_sequences(replayed, live(doubled)).violations["differs"] == 1
    assert dict(check_sequences(replayed, {**live(parts), "ghost": []}).violations) == {"extra_user": 1}
    # stopping at a checkpoint's offsets leaves later events out
    early = replay_sequences(msgs, cfg, upto={0: 3, 1: 0})
    assert sum(len(v) for v in early.values()) == 3


def msgspec_replace(rec, **kw):
    import msgspec

    return msgspec.structs.replace(rec, **kw)


def test_catalog_replay_check_finds_missing_retired_and_moved_items():
    from ingest.audit import check_catalog

    want = {"a": ("live", (1, 2, 0)), "b": ("live", (1, 2, 1)), "c": ("retired", (3, 0, 0))}
    assert check_catalog(want, dict(want)).ok
    got = {"a": ("live", (1, 2, 1)), "c": ("live", (3, 0, 0)), "z": ("live", (0, 0, 0))}
    rep = check_catalog(want, got)
    assert dict(rep.violations) == {"missing_item": 1, "extra_item": 1, "state_differs": 1, "sid_differs": 1}
    assert rep.checked == 3


def test_catalog_items_and_replay_match_a_live_indexer(kafka):
    """A real indexer and the auditor's replay of the same item-events end with the same catalog."""
    import numpy as np

    from actors.item_indexer import ItemIndexer, ItemIndexerConfig
    from ingest.audit import catalog_items, replay_catalog
    from ingest.contract import ITEM_EVENTS, ItemEvent
    from ingest.producer import EventProducer
    from ingest.topics import TopicsConfig, ensure_topics
    from models.sid.rq_kmeans import RQKMeans, RQKMeansConfig

    ensure_topics(kafka, TopicsConfig(partitions={ITEM_EVENTS: 1, DEAD_LETTERS: 1}))
    emb = np.random.default_rng(0).normal(size=(80, 8)).astype(np.float32)
    tok = RQKMeans(RQKMeansConfig(codebook_size=4, n_iter=3)).fit(emb)
    with EventProducer(kafka) as p:
        for i in range(60):
            p.send(ItemEvent(item_id=f"a{i}", ts=i, embedding=emb[i].tolist()))
        p.send(ItemEvent(item_id="a3", ts=99, op="retire"))
    live = ItemIndexer(kafka, tok, ItemIndexerConfig(name="live"))
    try:
        live.run_until_caught_up(60)
        items = catalog_items(live.catalog)
    finally:
        live.close(checkpoint=False)
    assert len(items) == 60 and items["a3"][0] == "retired"
    replayed = catalog_items(replay_catalog(kafka, tok, timeout_s=60))
    assert replayed == items


def test_genrec_audit_checks_shard_checkpoints_against_a_replay(kafka, tmp_path, capsys):
    """`--sequences-checkpoint`: checkpoints equal to the topic up to their offsets pass; one that claims an
    offset whose event its state lacks (an event lost by a shard) fails with exit 1."""
    from actors.checkpoint import CheckpointStore
    from actors.sequence_state import SequenceConfig, SequenceState
    from infra.cli import main
    from ingest.producer import EventProducer
    from ingest.topic_snapshot import read_topic_messages

    with EventProducer(kafka) as p:
        for e in _user_events(n_users=6, n=40, seed=2):
            p.send(e)
    msgs = read_topic_messages(kafka, USER_EVENTS, 30)
    by_part: dict[int, list] = {}
    for m in sorted(msgs, key=lambda m: (m.partition, m.offset)):
        by_part.setdefault(m.partition, []).append(m)
    assert len(by_part) == 2

    def save(drop_last_of: int | None):
        store = CheckpointStore(str(tmp_path / "ck"))
        for i, (part, ms) in enumerate(sorted(by_part.items())):
            st = SequenceState(SequenceConfig(capacity=16))
            kept = ms[:-1] if part == drop_last_of else ms
            st.apply([m.record for m in kept], part)
            store.save(f"genrec-sequences.{kafka.topic(USER_EVENTS)}.shard-{i}-of-2", st.to_bytes(),
                       {part: ms[-1].offset + 1})

    base = ["audit", "--bootstrap", kafka.bootstrap, "--namespace", kafka.namespace, "--window-s", "60",
            "--lateness-s", "0", "--sequences-checkpoint", str(tmp_path / "ck"), "--sequence-capacity", "16", "--json"]
    save(None)
    assert main(base) == 0
    rep = json.loads(capsys.readouterr().out)["checks"]["sequences"]
    assert rep["checked"] == 6 and rep["notes"]["events"] == 40 and not rep["violations"]
    save(drop_last_of=1)
    assert main(base) == 1
    assert json.loads(capsys.readouterr().out)["checks"]["sequences"]["violations"] == {"differs": 1}
