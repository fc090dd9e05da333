"""The ``split`` topology against a real local Ray Serve: a FastAPI ingress deployment calling a separate
batching recommender deployment through a Serve handle (gRPC transport)."""

from __future__ import annotations

import httpx

from tests.serving.conftest import kill_replica_under_load

TOPOLOGY = "split"


def test_split_recommend_answers_through_the_recommender_deployment(serve_app):
    import ray

    names = [a["name"] for a in ray.util.list_named_actors(all_namespaces=True)]
    assert any("#Recommender#" in n for n in names), f"no recommender deployment in the split topology: {names}"
    with httpx.Client(base_url=serve_app.url, timeout=60) as c:
        r = c.post("/v1/recommend", json={"user_id": "split-u1", "k": 4})
    assert r.status_code == 200, r.text
    body = r.json()
    assert len(body["items"]) == 4 and set(i["item_id"] for i in body["items"]) <= set(serve_app.item_ids)
    assert body["timings"]["recommender_ms"] >= body["timings"]["decode_ms"]


def test_killed_recommender_is_replaced_and_served_log_matches_answers(serve_app):
    """Kill the recommender replica under load: Serve replaces it; answered ⇔ served record (the ingress,
    which logs and answers, survives, so no record can exist for an unanswered request)."""
    results, logged = kill_replica_under_load(serve_app, "Recommender", serve_app.url)
    assert {c for _, c in results} <= {200, 503}, {c for _, c in results}
    answered = {u for u, c in results if c == 200}
    assert len(logged) == len(set(logged)), "a request was logged twice"
    assert set(logged) == answered, (f"answered without record: {sorted(answered - set(logged))[:5]}; "
                                     f"record without answer: {sorted(set(logged) - answered)[:5]}")
