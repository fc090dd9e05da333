"""Benchmark suite ``chaos``: the whole pipeline under kill -9, a Ray node loss and a broker pause; the audit; a soak.

One :func:`infra.chaos.run_chaos` (docs/decisions/032-chaos-run.md): an embedded broker, a local Ray of a
head and two worker nodes, sequence shards, item indexer, reward joiners, the Serve app (ingress replica +
recommender process) and the archiver, under closed-loop simulator traffic and new items, with a seeded
fault schedule (every component kind killed ``GENREC_CHAOS_KILLS`` times [3; quick 1], one node loss, one
broker pause longer than the clients' timeouts). After the drain the auditor checks every invariant; the
figures are the faults survived, what was audited, ``audit_violations`` (must be 0) and
``node_loss_recovery_s`` (node removed → a request answered 200 again and the shards caught up with what the
topic held at the loss). Then a fault-free soak of ``GENREC_CHAOS_SOAK_S`` seconds [300; quick 60] samples
each component's resident memory (/proc) and reports the least-squares slope ``rss_slope_mb_per_h_<kind>``
(scipy.stats.linregress) over the whole soak, ``rss_late_slope_mb_per_h_<kind>`` over its second half (caches
and ring buffers fill early; a leak still grows late) and ``rss_mb_end_<kind>``; the suite fails when a
second-half slope exceeds ``GENREC_CHAOS_MAX_SLOPE`` MB/h [500], or on any violation. Traffic seconds: ``GENREC_CHAOS_DURATION_S`` [180; quick 45].

``genrec bench chaos [--quick]``; for hours of soak: ``GENREC_CHAOS_SOAK_S=14400 genrec bench chaos``.
"""

from __future__ import annotations

import os
import tempfile

SUITE = "chaos"


def run(quick: bool = False, dataset: str | None = None) -> dict:
    from infra.chaos import ChaosConfig, metrics_of, run_chaos

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")      # a purely local cluster of this process
    env = lambda k, d: float(os.environ.get(k, d))          # noqa: E731
    with tempfile.TemporaryDirectory(prefix="genrec-chaos-") as work:
        cfg = ChaosConfig(workdir=work, duration_s=env("GENREC_CHAOS_DURATION_S", 45 if quick else 180),
                          kills_per_kind=int(env("GENREC_CHAOS_KILLS", 1 if quick else 3)),
                          soak_s=env("GENREC_CHAOS_SOAK_S", 60 if quick else 300), sample_s=2.0,
                          max_rss_slope_mb_per_h=env("GENREC_CHAOS_MAX_SLOPE", 500), seed=0)
        result = run_chaos(cfg, log=lambda *a: print(*a, flush=True))
    print("\n".join(result.audit_lines))
    metrics = metrics_of(cfg, result)
    if result.violations != 0:
        raise AssertionError(f"chaos audit found {result.violations} violations:\n" + "\n".join(result.audit_lines))
    growing = {k: v for k, v in result.rss_late_slope_mb_per_h.items() if v > cfg.max_rss_slope_mb_per_h}
    if growing:
        raise AssertionError(f"resident memory still grows faster than {cfg.max_rss_slope_mb_per_h:g} MB/h in the "
                             f"soak's second half: {growing} "
                             f"(soak of {cfg.soak_s:g} s; raise GENREC_CHAOS_MAX_SLOPE only with a reason)")
    return {"config": {"duration_s": cfg.duration_s, "kills_per_kind": cfg.kills_per_kind, "soak_s": cfg.soak_s,
                       "rate": cfg.rate, "broker_pause_s": cfg.broker_pause_s, "partitions": cfg.partitions,
                       "ray_nodes": "head + 2 workers", "timings": result.timings, **result.simulation},
            "metrics": metrics}


if __name__ == "__main__":
    import json
    import sys

    print(json.dumps(run(quick="--quick" in sys.argv[1:]), indent=1))
