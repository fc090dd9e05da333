"""Prometheus metrics of the serving app (exposed by the ingress at ``/metrics``).

One private registry per ingress replica (no global state, so tests can run
several apps in one process). What it records:

* ``genrec_http_request_seconds{route, arm, status}`` — latency histogram per route and arm;
* ``genrec_batch_size`` — histogram of the recommender's batch sizes (reported with each answer);
* ``genrec_decode_requests_total{mode}`` — requests per decode mode;
* ``genrec_served_total{experiment, arm, model_version}`` — answered /recommend (= served records);
* ``genrec_errors_total{route, reason}`` and ``genrec_rejected_total{route}`` (503 on overload);
* ``genrec_records_written_total{topic}`` / ``genrec_records_invalid_total{topic}`` — /events, /items;
* ``genrec_consumer_lag{component}`` and ``genrec_catalog_items`` — refreshed on each scrape
  from the recommender (its item / history feeds and the sequence shards' lag).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0,
                   2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)

CONTENT_TYPE = CONTENT_TYPE_LATEST


class ServingMetrics:
    """The metric families of one ingress replica."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.latency = Histogram("genrec_http_request_seconds", "HTTP request latency per route and arm",
                                 ["route", "arm", "status"], buckets=LATENCY_BUCKETS, registry=r)
        self.batch_size = Histogram("genrec_batch_size", "recommender batch size per answered request",
                                    buckets=BATCH_BUCKETS, registry=r)
        self.decode_mode = Counter("genrec_decode_requests_total", "recommend requests per decode mode",
                                   ["mode"], registry=r)
        self.served = Counter("genrec_served_total", "answered recommend requests (served records)",
                              ["experiment", "arm", "model_version"], registry=r)
        self.errors = Counter("genrec_errors_total", "errors per route and reason", ["route", "reason"], registry=r)
        self.rejected = Counter("genrec_rejected_total", "requests rejected with 503 (overload)", ["route"],
                                registry=r)
        self.written = Counter("genrec_records_written_total", "records accepted and written to Kafka", ["topic"],
                               registry=r)
        self.invalid = Counter("genrec_records_invalid_total", "records rejected by validation", ["topic"],
                               registry=r)
        self.lag = Gauge("genrec_consumer_lag", "consumer lag (messages) per component", ["component"], registry=r)
        self.catalog_items = Gauge("genrec_catalog_items", "live items in the recommender's catalog", registry=r)
        self.admission_limit = Gauge("genrec_admission_limit", "current admission limit of /recommend",
                                     registry=r)
        self.loop_lag = Gauge("genrec_ingress_loop_lag_seconds", "how late the ingress event loop wakes a timer "
                              "(decaying max; serving.loop_lag)", registry=r)
        self.inflight = Gauge("genrec_inflight_requests", "recommend requests admitted and not yet answered",
                              registry=r)

    def observe_status(self, status: dict) -> None:
        """Refresh the gauges from a recommender ``status()`` answer."""
        if "catalog_items" in status:
            self.catalog_items.set(status["catalog_items"])
        for f in status.get("feeds", []):
            self.lag.labels(component=f["type"]).set(f.get("lag") or 0)
        h = status.get("history") or {}
        if h.get("source") == "shards" and "lag" in h:
            self.lag.labels(component="sequence_shards").set(h["lag"])

    def render(self) -> bytes:
        return generate_latest(self.registry)
