"""The closed-loop simulator: arrivals, user draws and the summary alone; then over a real socket against the
real Serve app (tests/serving/conftest.py ``serve_app``, its catalog the world's items), with every answered
session's events read back from the broker and joined by the reward joiner's own engine."""

from __future__ import annotations

import asyncio
import json
import math
import time

import numpy as np
import pytest
from scipy import stats

from actors.reward_spec import RewardSpec
from ingest.synthetic import SyntheticWorld, WorldConfig
from serving.sim_summary import SessionOutcome, SimulationSummary
from serving.simulator import SimulatorConfig, UserDraw, poisson_arrivals, run_simulation, session_reward

#: A tiny world whose items are the app's catalog (the serve_app fixture reads CATALOG).
WORLD = SyntheticWorld(WorldConfig(seed=3, n_users=60, n_items=120, n_topics=4, sessions_per_user=2.0, days=7.0))
CATALOG = WORLD.item_ids


# ---- pure parts -----------------------------------------------------------------------------------

def test_poisson_arrivals_have_the_rate_and_exponential_gaps():
    rate, duration = 50.0, 200.0
    t = np.fromiter(poisson_arrivals(rate, duration, np.random.default_rng(1)), dtype=np.float64)
    assert np.all(np.diff(t) > 0) and t[0] > 0 and t[-1] < duration
    assert abs(t.size - rate * duration) < 4 * math.sqrt(rate * duration)   # Poisson: sd = sqrt(mean)
    gaps = np.diff(np.r_[0.0, t])
    assert stats.kstest(gaps, "expon", args=(0, 1 / rate)).pvalue > 1e-3
    # the same seed, the same arrivals; a different one, others
    again = list(poisson_arrivals(rate, 5.0, np.random.default_rng(1)))
    assert again == list(poisson_arrivals(rate, 5.0, np.random.default_rng(1)))
    assert again != list(poisson_arrivals(rate, 5.0, np.random.default_rng(2)))


def test_users_are_drawn_by_the_worlds_activity():
    draw = UserDraw(WORLD, 20, np.random.default_rng(0))
    assert len(set(draw.user_ids)) == 20 and set(draw.user_ids) <= set(WORLD.user_ids)
    n = 40_000
    counts = np.array([0] * 20)
    pos = {u: j for j, u in enumerate(draw.user_ids)}
    for _ in range(n):
        counts[pos[draw.draw()]] += 1
    act = WORLD.user_activity[[WORLD.user_index(u) for u in draw.user_ids]]
    assert stats.chisquare(counts, n * act / act.sum()).pvalue > 1e-3
    with pytest.raises(ValueError, match="more than the world's 60 users"):
        UserDraw(WORLD, 61, np.random.default_rng(0))


def _outcome(rid, arm, items, clicks, reward, events=3):
    return SessionOutcome(request_id=rid, user_id="u1", arm=arm, model_version="v1", items=items, unknown_items=0,
                          events=events, clicks=clicks, reward=reward, ts=0, acked_event_ids=[f"{rid}-e"])


def test_summary_counts_statuses_latency_and_per_arm_click_rate_and_reward():
    s = SimulationSummary()
    s.arrivals, s.sent, s.skipped = 10, 8, 2
    for code, ms in [(200, 10.0), (200, 30.0), (200, 20.0), (429, 1.0), (503, 2.0), (500, 3.0)]:
        s.answered(code, ms)
    s.no_answer("timeout")
    s.no_answer("ConnectError")
    s.session(_outcome("r1", "e/a", 4, 1, 2.0))
    s.session(_outcome("r2", "e/a", 4, 0, 0.0))
    s.session(_outcome("r3", "e/b", 5, 2, 5.0))
    s.events_sent(6, 1, 4.0)
    s.events_failed(3, "RuntimeError")
    s.wall_s = 2.0
    d = s.to_dict()
    assert d["status"] == {"200": 3, "429": 1, "503": 1, "other": 1}
    assert d["answered"] + sum(d["no_answer"].values()) == d["sent"] == d["arrivals"] - d["skipped"]
    assert d["latency_ms"]["p50"] == 20.0 and 29.0 < d["latency_ms"]["p99"] <= 30.0
    a, b = d["arms"]["e/a"], d["arms"]["e/b"]
    assert (a["sessions"], a["click_rate"], a["mean_reward"]) == (2, 1 / 8, 1.0)
    assert a["mean_reward_ci95"] == pytest.approx(1.96 * math.sqrt(2.0 / 2))   # sd of {2, 0} = sqrt(2)
    assert (b["sessions"], b["click_rate"], b["mean_reward"]) == (1, 2 / 5, 5.0) and math.isnan(b["mean_reward_ci95"])
    assert d["click_rate"] == 3 / 13
    assert d["events"] == {"generated": 9, "acked": 6, "rejected": 1, "lost": 3, "errors": {"RuntimeError": 1},
                           "post_ms": {"p50": 4.0, "p99": 4.0}}
    assert s.answered_request_ids() == ["r1", "r2", "r3"] and s.acked_event_ids() == ["r1-e", "r2-e", "r3-e"]
    strict = json.loads(s.to_json())                       # NaN → null, valid JSON
    assert strict["arms"]["e/b"]["mean_reward_ci95"] is None
    text = "\n".join(s.lines())
    assert "200: 3, 429: 1, 503: 1, other: 1" in text and "e/b" in text and "0.4000" in text


@pytest.mark.parametrize("kw,needle", [
    ({"url": "localhost:8000"}, "http:// or https://"),
    ({"url": "ftp://h"}, "http:// or https://"),
    ({"rate": 0}, "rate=0"),
    ({"duration_s": -1}, "duration_s=-1"),
    ({"users": 0}, "users=0"),
    ({"concurrency": 0}, "concurrency=0"),
    ({"events": "smoke"}, "events='smoke'"),
    ({"events": "kafka"}, "needs kafka"),
])
def test_config_errors_name_the_value_and_the_fix(kw, needle):
    with pytest.raises(ValueError, match=needle):
        SimulatorConfig(**{"url": "http://127.0.0.1:1", **kw})


def test_open_loop_skips_arrivals_beyond_the_concurrency_bound():
    """An in-process recommend that answers slowly: arrivals keep their schedule, at most ``concurrency``
    are in flight, the rest are skipped; every sent request is accounted for once."""
    inflight, peak, sent_events = [0], [0], []

    async def recommend(user):
        inflight[0] += 1
        peak[0] = max(peak[0], inflight[0])
        await asyncio.sleep(0.3)
        inflight[0] -= 1
        rid = f"r{len(sent_events)}-{user}-{time.perf_counter_ns()}"
        return 200, {"request_id": rid, "experiment": "x", "arm": "a", "model_version": "v",
                     "items": [{"item_id": i} for i in WORLD.best_items(user, 3)]}, {}

    async def send(events):
        sent_events.append(events)
        return [e.event_id for e in events], 0

    cfg = SimulatorConfig(url="http://127.0.0.1:1", users=10, rate=40, duration_s=1.0, concurrency=2, k=3,
                          preflight=False)
    s = run_simulation(cfg, WORLD, recommend=recommend, send_events=send, progress=True)
    assert peak[0] <= 2 and s.skipped > 0 and s.arrivals == s.sent + s.skipped
    assert s.ok == s.sent == len(s.sessions) and not s.errors
    assert s.events_acked == s.events_generated == sum(len(b) for b in sent_events) > 0
    # the events carry the answer's request id and the item's position, on the wall clock of the answer
    # (never before it; within the default reward window of 30 min), and the session's reward is theirs
    by_rid = {o.request_id: o for o in s.sessions}
    for batch in sent_events:
        o = by_rid[batch[0].request_id]
        assert all(e.request_id == o.request_id and 0 <= e.position < 3 for e in batch)
        assert all(o.ts <= e.ts < o.ts + 1_800_000 for e in batch)
        assert session_reward(3, batch, RewardSpec())[0] == o.reward


def test_stop_ends_the_arrivals_early_and_unanswered_requests_are_counted():
    """``stop`` from another thread ends the run; a request still waiting at the end is cancelled once its
    bound passed and counted as not answered (never as an answer)."""
    import threading

    stop = threading.Event()

    async def never(user):
        await asyncio.sleep(3600)

    threading.Timer(0.5, stop.set).start()
    cfg = SimulatorConfig(url="http://127.0.0.1:1", users=5, rate=20, duration_s=60, timeout_s=0.2,
                          event_retries=0, preflight=False)
    t = time.perf_counter()
    s = run_simulation(cfg, WORLD, recommend=never, stop=stop)
    assert time.perf_counter() - t < 10 and s.wall_s < 10
    assert s.sent > 0 and s.ok == 0 and s.errors == {"cancelled at the end": s.sent}


def test_an_unusable_200_answer_is_counted_as_answered_and_as_a_client_error():
    async def bad(user):
        return 200, {"request_id": "r"}, {}      # no items

    cfg = SimulatorConfig(url="http://127.0.0.1:1", users=5, rate=20, duration_s=0.3, preflight=False)
    s = run_simulation(cfg, WORLD, recommend=bad)
    assert s.sent > 0 and s.ok == s.sent and not s.sessions and not s.errors
    assert sum(s.client_errors.values()) == s.sent and "bad 200 body (KeyError" in next(iter(s.client_errors))


# ---- over a real socket: the real Serve app, the real broker ---------------------------------------

def _read(kafka, topic):
    from ingest.consumer_loop import ConsumerConfig, ContractConsumer

    with ContractConsumer(kafka, topic, config=ConsumerConfig(poll_timeout_ms=100)) as c:
        return [r for b in c.drain(until_empty_polls=2, timeout_s=30) for r in b.records()]


def test_closed_loop_over_http_every_answer_has_its_events_and_the_joiner_agrees(serve_app):
    from actors.reward_window import RewardWindows, source_key
    from ingest.contract import SERVED, USER_EVENTS, Served, UserEvent
    from tests.serving.conftest import MAX_BATCH

    earlier = {e.event_id for e in _read(serve_app.kafka, USER_EVENTS)}   # other tests' runs on this app
    cfg = SimulatorConfig(url=serve_app.url, users=30, rate=5.0, duration_s=3.0, k=4, timeout_s=60, seed=1,
                          max_event_batch=MAX_BATCH)
    s = run_simulation(cfg, WORLD)
    print("\n".join(s.lines()))
    assert s.ok > 0 and s.arrivals == s.sent + s.skipped
    assert s.sent == sum(s.status.values()) + sum(s.errors.values())
    assert s.ok == len(s.sessions) == sum(a["sessions"] for a in s.to_dict()["arms"].values())
    assert s.unknown_items == 0 and s.events_lost == 0 and s.events_rejected == 0 and not s.client_errors
    assert s.events_acked == s.events_generated > 0

    answered = {o.request_id: o for o in s.sessions}
    served = {r.request_id: r for r in _read(serve_app.kafka, SERVED)}
    events = [e for e in _read(serve_app.kafka, USER_EVENTS) if e.event_id not in earlier]
    assert set(answered) <= set(served)                      # every 200 answer has its served record
    by_rid: dict[str, list] = {}
    for e in events:
        by_rid.setdefault(e.request_id, []).append(e)
    assert set(by_rid) <= set(answered)                      # no event names a session nobody was answered
    for rid, o in answered.items():
        got = by_rid.get(rid, [])
        assert sorted(e.event_id for e in got) == sorted(o.acked_event_ids) and len(got) == o.events
        sv = served[rid]
        assert (sv.user_id, len(sv.items), f"{sv.experiment}/{sv.arm}", sv.model_version) == \
            (o.user_id, o.items, o.arm, o.model_version)
        assert all(sv.ts <= e.ts for e in got)                # one clock: no event before its session
        assert all(e.position is not None and sv.items[e.position] == e.item_id for e in got)

    # The reward joiner's engine over what the broker holds: every answered session joined in its window,
    # nothing late or orphaned, and each reward is the one the simulator reported.
    src = [source_key(SERVED, 0), source_key(USER_EVENTS, 0)]
    w = RewardWindows(src, window_ms=1_800_000, lateness_ms=10_000)
    w.add_served(0, sorted(served.values(), key=lambda r: r.ts), topic=SERVED)
    w.add_events(0, sorted(events, key=lambda e: e.ts), topic=USER_EVENTS)
    far = max(r.ts for r in served.values()) + 2 * 1_800_000 + 20_000
    w.add_served(0, [Served(request_id="hb", user_id="hb", ts=far, model_version="v", experiment="", arm="",
                            items=[], sids=[], scores=[])], topic=SERVED)
    w.add_events(0, [UserEvent(event_id="hb", user_id="hb", item_id="i0", type="impression", ts=far)],
                 topic=USER_EVENTS)
    rewards = {r.request_id: r for r in w.advance()}
    assert set(answered) <= set(rewards)
    for rid, o in answered.items():
        assert rewards[rid].reward == pytest.approx(o.reward, abs=1e-9)
        assert rewards[rid].components["clicks"] == o.clicks
    counters = w.counter_dict()
    assert not counters["late"] and not counters.get("orphans")


def test_the_command_runs_against_the_app_and_writes_the_audit_logs(serve_app, monkeypatch, capsys, tmp_path):
    """``genrec simulate`` itself, its world from genrec.yaml's ``world`` section + environment overrides."""
    from infra.cli import main

    for k, v in {"SEED": 3, "N_USERS": 60, "N_ITEMS": 120, "N_TOPICS": 4, "SESSIONS_PER_USER": 2.0, "DAYS": 7.0}.items():
        monkeypatch.setenv(f"GENREC_WORLD__{k}", str(v))
    answered, acked = tmp_path / "answered.txt", tmp_path / "acked.txt"
    rc = main(["simulate", "--url", serve_app.url, "--users", "20", "--rate", "5", "--duration", "2", "--k", "3",
               "--timeout", "60", "--seed", "2", "--json", "--answered", str(answered), "--acked", str(acked)])
    out = json.loads(capsys.readouterr().out)
    assert rc == 0 and out["status"]["200"] > 0 and out["unknown_items"] == 0
    assert out["sent"] == out["answered"] + sum(out["no_answer"].values())
    ids = answered.read_text().split()
    assert len(ids) == len(set(ids)) == out["status"]["200"]
    assert len(acked.read_text().split()) == out["events"]["acked"] == out["events"]["generated"]
    assert set(out["arms"]) and all(a["sessions"] > 0 for a in out["arms"].values())
