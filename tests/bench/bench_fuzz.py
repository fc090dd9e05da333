"""Benchmark suite ``fuzz``: the Kafka boundary fuzz at a larger size — every consumer, bad inputs in,
dead letters out, crashes counted, counts reconciled.

Hypothesis draws the inputs (tests/ingest/boundary_fuzz.py: random bytes, truncated and oversized
messages, fields of the wrong type, valid JSON of another record kind, null values, a flood of one key,
mixed with valid records); each example runs the real consumer on one embedded tansu broker, in a
fresh namespace: the sequence shard (ShardRuntime), the item indexer, the reward joiner (JoinerRuntime)
and the archive (all four data topics). Per consumer: ``<consumer>_inputs`` (messages tried),
``<consumer>_bad_inputs`` (rejected by the contract, or by the consumer's own checks),
``<consumer>_dead_letters`` (records in ``dead-letters`` for them: must equal the bad inputs),
``<consumer>_applied`` (valid records taken into the state), ``<consumer>_crashes`` (must be 0) and
``<consumer>_violations`` (broken invariants, must be 0: see ``FuzzResult.problems``).
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

SUITE = "fuzz"
_HERE = Path(__file__).resolve().parent
EXAMPLES = os.environ.get("GENREC_BENCH_FUZZ_EXAMPLES")


def run(quick: bool = False, dataset: str | None = None) -> dict:
    sys.path.insert(0, str(_HERE.parent / "ingest"))  # boundary_fuzz and contract_strategies
    import numpy as np
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import strategies as st

    from boundary_fuzz import CONSUMERS, DATA_TOPICS, DIM, boundary_inputs, run_archive, run_consumer
    from infra.broker import EmbeddedBroker
    from ingest.contract import ITEM_EVENTS, SERVED, USER_EVENTS
    from models.sid.rq_kmeans import RQKMeans, RQKMeansConfig

    examples = int(EXAMPLES) if EXAMPLES else (3 if quick else 10)
    size = (40, 80) if quick else (100, 200)
    fuzz = settings(max_examples=examples, deadline=None, database=None, derandomize=True,
                    phases=[Phase.generate], suppress_health_check=list(HealthCheck))
    rng = np.random.default_rng(0)
    centers = np.random.default_rng(99).normal(size=(12, DIM))
    tokenizer = RQKMeans(RQKMeansConfig(codebook_size=16, n_iter=8)).fit(
        (centers[rng.integers(0, 12, 600)] + 0.4 * rng.normal(size=(600, DIM))).astype(np.float32))
    totals = {c: {"inputs": 0, "bad_inputs": 0, "dead_letters": 0, "applied": 0, "crashes": 0, "violations": 0,
                  "seconds": 0.0} for c in CONSUMERS}
    problems: list[str] = []

    def add(res) -> None:
        t = totals[res.consumer]
        t["inputs"] += res.inputs
        t["bad_inputs"] += res.contract_invalid + res.rejected_by_consumer
        t["dead_letters"] += res.dead_letters
        t["applied"] += res.applied
        t["crashes"] += res.crashes
        found = res.problems()
        t["violations"] += len(found)
        t["seconds"] += res.seconds
        problems.extend(found)

    tmp = Path(tempfile.mkdtemp(prefix="bench-fuzz-"))
    with EmbeddedBroker() as broker:
        def fuzz_one(consumer: str, topic: str) -> None:
            @fuzz
            @given(boundary_inputs(topic, min_size=size[0], max_size=size[1], flood=size[0]))
            def one(msgs):
                add(run_consumer(consumer, broker.bootstrap, msgs, tmp / consumer, tokenizer=tokenizer))

            one()

        for consumer, topic in (("sequence_shard", USER_EVENTS), ("item_indexer", ITEM_EVENTS),
                                ("reward_joiner", SERVED)):
            fuzz_one(consumer, topic)

        @fuzz
        @given(st.fixed_dictionaries({t: boundary_inputs(t, min_size=size[0] // 2, max_size=size[1] // 2,
                                                         flood=size[0] // 2) for t in DATA_TOPICS}))
        def archive(per_topic):
            for res in run_archive(broker.bootstrap, per_topic, tmp / "archive"):
                add(res)

        archive()
    metrics: dict[str, float] = {}
    for c, t in totals.items():
        for k, v in t.items():
            metrics[f"{c}_{k}"] = v
    metrics["crashes"] = sum(t["crashes"] for t in totals.values())
    metrics["violations"] = sum(t["violations"] for t in totals.values())
    table = "| consumer | inputs | bad inputs | dead letters | applied | crashes | violations |\n|---|---|---|---|---|---|---|\n"
    table += "\n".join(f"| {c} | {t['inputs']:,} | {t['bad_inputs']:,} | {t['dead_letters']:,} | {t['applied']:,} | "
                       f"{t['crashes']} | {t['violations']} |" for c, t in totals.items())
    if problems:
        table += "\n\nViolations: " + "; ".join(problems[:10])
    return {"config": {"examples_per_consumer": examples, "messages_per_example": list(size),
                       "flood_of_one_key": size[0]}, "metrics": metrics, "tables": [table]}
