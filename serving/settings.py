"""The HTTP app's settings: the ``serving`` section of ``genrec.yaml`` (:class:`AppSettings`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ingest.kafka_client import KafkaConfig
from models.decoding.settings import DecodeSettings
from serving.schemas import MAX_BATCH_RECORDS

#: ``colocated``: every ingress replica holds its own recommender (in a child process), so a
#: /recommend never leaves the replica that parsed it. ``split``: the ingress calls a separate
#: recommender deployment over Serve's gRPC transport, so CPU ingress replicas and (GPU)
#: recommender replicas scale apart, at the cost of one hop per request.
TOPOLOGIES = ("colocated", "split")
MIN_ADMIN_TOKEN = 16


@dataclass(frozen=True)
class AppSettings:
    """Ingress settings (frozen, validated); ``kafka`` and ``decode`` come from their own sections.

    ``experiments``: YAML text or a path to the experiments file (relative paths resolve against the
    repository). ``admin_token``: bearer token of the admin routes (set it through the environment,
    ``GENREC_SERVING__ADMIN_TOKEN``), or ``admin_token_file``: a file holding it, read where the ingress
    runs (:meth:`admin_secret`); neither disables the admin routes. Never on the command line.
    Request limits (SECURITY.md): ``max_body_bytes`` (413 beyond it, before the body is read),
    ``max_batch_records`` per ``/v1/events`` / ``/v1/items`` request and ``max_k`` items per session (422),
    and, off unless ``rate_limit_per_s`` is set, a token bucket per client on ``/v1/recommend``
    (``rate_limit_burst`` at once; 429 + Retry-After), the client being its address or the value of
    the header ``rate_limit_key_header`` when set and sent (:mod:`serving.limits`).
    ``max_inflight``: admitted concurrent /recommend per ingress replica before 503; ``None``: as many
    as the recommender decodes at once (:func:`serving.recommender_config.default_max_inflight`).
    ``latency_target_ms``: when set, the admission limit adapts (AIMD) to keep admitted requests near it.
    ``ingress_slack`` / ``ingress_queue``: the ingress takes ``max_inflight + ingress_slack`` concurrent
    requests (other routes, fast 503s) and Serve queues ``ingress_queue`` more; beyond that Serve itself
    answers 503 + ``Retry-After: shed_retry_after_s``. The ingress's own 503s carry a jittered
    Retry-After in ``[retry_after_s, max_retry_after_s]`` (:mod:`serving.admission`) and are answered
    after a random delay in ``[0, reject_spread_s)``. ``num_replicas``: ingress replicas.
    ``decode``: the decode settings a request starts from (experiment arms override them).
    """

    kafka: KafkaConfig
    decode: DecodeSettings = field(default_factory=DecodeSettings)
    experiments: str = ""
    admin_token: str | None = field(default=None, repr=False)
    admin_token_file: str | None = None
    max_inflight: int | None = None
    latency_target_ms: float | None = None
    retry_after_s: int = 1
    produce_timeout_s: float = 10.0
    recommend_timeout_s: float = 30.0
    report_cache_s: float = 5.0
    max_k: int = 100
    num_replicas: int = 1
    ingress_slack: int = 1024
    shed_retry_after_s: int = 5
    ingress_queue: int = 64
    max_retry_after_s: int = 30
    reject_spread_s: float = 1.0
    topology: str = "colocated"
    max_body_bytes: int = 4 * 1024 * 1024
    max_batch_records: int = MAX_BATCH_RECORDS
    rate_limit_per_s: float | None = None
    rate_limit_burst: int = 20
    rate_limit_key_header: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.kafka, KafkaConfig) or not isinstance(self.decode, DecodeSettings):
            raise TypeError("AppSettings.kafka and .decode are the kafka and decode sections' configs "
                            "(KafkaConfig, DecodeSettings); set them there, not under serving")
        if self.topology not in TOPOLOGIES:
            raise ValueError(f"AppSettings.topology={self.topology!r}: use one of {list(TOPOLOGIES)}")
        if self.max_inflight is not None and self.max_inflight < 1:
            raise ValueError(f"AppSettings.max_inflight={self.max_inflight} must be >= 1 (or null: the "
                             "recommender's rows)")
        if self.latency_target_ms is not None and self.latency_target_ms <= 0:
            raise ValueError(f"AppSettings.latency_target_ms={self.latency_target_ms} must be > 0 (or None: off)")
        if not 0 <= self.reject_spread_s <= 10:
            raise ValueError(f"AppSettings.reject_spread_s={self.reject_spread_s} must be in [0, 10] seconds "
                             "(0: answer 503s at once)")
        if self.retry_after_s < 1:
            raise ValueError(f"AppSettings.retry_after_s={self.retry_after_s} must be >= 1 second")
        if self.admin_token is not None and len(self.admin_token) < MIN_ADMIN_TOKEN:
            raise ValueError(f"AppSettings.admin_token must be at least {MIN_ADMIN_TOKEN} characters (or None to "
                             "disable admin)")
        if self.admin_token is not None and self.admin_token_file:
            raise ValueError("AppSettings: give admin_token (GENREC_SERVING__ADMIN_TOKEN) or admin_token_file, "
                             "not both")
        if not 1024 <= self.max_body_bytes <= 1 << 30:
            raise ValueError(f"AppSettings.max_body_bytes={self.max_body_bytes} must be in 1024..{1 << 30}")
        if not 1 <= self.max_batch_records <= MAX_BATCH_RECORDS:
            raise ValueError(f"AppSettings.max_batch_records={self.max_batch_records} must be in "
                             f"1..{MAX_BATCH_RECORDS} (the API schema's bound)")
        if self.rate_limit_per_s is not None and not (self.rate_limit_per_s > 0 and self.rate_limit_burst >= 1):
            raise ValueError(f"AppSettings.rate_limit_per_s={self.rate_limit_per_s} must be > 0 (or null: no "
                             f"rate limit) and rate_limit_burst={self.rate_limit_burst} >= 1")
        if self.shed_retry_after_s < 1 or self.max_retry_after_s < self.retry_after_s:
            raise ValueError(f"AppSettings: shed_retry_after_s={self.shed_retry_after_s} must be >= 1 and "
                             f"max_retry_after_s={self.max_retry_after_s} >= retry_after_s={self.retry_after_s}")
        if self.ingress_slack < 1 or self.ingress_queue < 1:
            raise ValueError(f"AppSettings.ingress_slack={self.ingress_slack} and ingress_queue={self.ingress_queue} "
                             "must be >= 1 (extra ingress concurrency / proxy queue beyond max_inflight)")
        if not 1 <= self.max_k <= 1000:
            raise ValueError(f"AppSettings.max_k={self.max_k} must be in 1..1000")
        if self.num_replicas < 1:
            raise ValueError(f"AppSettings.num_replicas={self.num_replicas} must be >= 1 (ingress replicas)")

    def admin_secret(self) -> str | None:
        """The admin bearer token: ``admin_token``, else the stripped content of ``admin_token_file`` (read
        now, in the calling process), else None (admin routes disabled)."""
        if not self.admin_token_file:
            return self.admin_token
        path = Path(self.admin_token_file)
        if not path.is_file():
            raise FileNotFoundError(f"AppSettings.admin_token_file={str(path)!r} does not exist on this node")
        token = path.read_text().strip()
        if len(token) < MIN_ADMIN_TOKEN:
            raise ValueError(f"AppSettings.admin_token_file={str(path)!r} holds fewer than {MIN_ADMIN_TOKEN} "
                             "characters; write a long random token (e.g. `openssl rand -hex 32`)")
        return token
