"""Shared Kafka client settings and a clear error when the broker is unreachable."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

DEFAULT_BOOTSTRAP_ENV = "KAFKA_BOOTSTRAP"


class BrokerUnavailable(ConnectionError):
    """No Kafka broker answered at the configured bootstrap address."""

    def __init__(self, bootstrap: str, cause: Exception | None = None):
        msg = (f"cannot reach a Kafka broker at {bootstrap!r}"
               + (f" ({type(cause).__name__}: {cause})" if cause else "")
               + f"; start one with `genrec broker` or set {DEFAULT_BOOTSTRAP_ENV}=host:port")
        super().__init__(msg)
        self.bootstrap = bootstrap


@dataclass(frozen=True)
class KafkaConfig:
    """Where Kafka is and how clients talk to it.

    ``bootstrap`` is ``host:port[,host:port…]``; ``connect_timeout_s`` bounds
    how long a client waits for the first broker before raising
    :class:`BrokerUnavailable` (no silent hang). ``namespace`` prefixes every
    physical topic name (``{namespace}user-events``) so several deployments —
    or tests sharing one broker — never see each other's data; the contract
    topic names themselves never change.
    """

    bootstrap: str
    namespace: str = ""
    client_id: str = "genrec"
    connect_timeout_s: float = 10.0
    extra: dict = field(default_factory=dict, hash=False, compare=False)

    def __post_init__(self) -> None:
        if not self.bootstrap or any(":" not in h for h in self.bootstrap.split(",")):
            raise ValueError(f"KafkaConfig.bootstrap={self.bootstrap!r} must be host:port[,host:port...]")
        if self.connect_timeout_s <= 0:
            raise ValueError(f"KafkaConfig.connect_timeout_s={self.connect_timeout_s} must be > 0")

    def topic(self, contract_topic: str) -> str:
        """Physical Kafka topic name of a contract topic."""
        return f"{self.namespace}{contract_topic}"

    @staticmethod
    def from_env(default: str | None = None) -> "KafkaConfig":
        """From ``KAFKA_BOOTSTRAP`` (or ``default``)."""
        bs = os.environ.get(DEFAULT_BOOTSTRAP_ENV, default)
        if not bs:
            raise ValueError(f"no Kafka bootstrap given: set {DEFAULT_BOOTSTRAP_ENV}=host:port")
        return KafkaConfig(bootstrap=bs, namespace=os.environ.get("GENREC_TOPIC_NAMESPACE", ""))

    def common(self) -> dict:
        """Keyword arguments every kafka-python client gets."""
        return {
            "bootstrap_servers": self.bootstrap.split(","),
            "client_id": self.client_id,
            "api_version_auto_timeout_ms": int(self.connect_timeout_s * 1000),
            "request_timeout_ms": max(30_000, int(self.connect_timeout_s * 1000) + 1000),
            # tansu may answer a fetch with more than fetch_max_bytes; accept large frames.
            "receive_message_max_bytes": 256 * 1024 * 1024,
            **self.extra,
        }


def as_config(kafka: "KafkaConfig | str") -> KafkaConfig:
    """Accept a config or a bare bootstrap string."""
    return kafka if isinstance(kafka, KafkaConfig) else KafkaConfig(bootstrap=kafka)


def is_broker_error(exc: BaseException) -> bool:
    """True for kafka-python errors that mean 'no broker answered'."""
    from kafka.errors import KafkaTimeoutError, NoBrokersAvailable

    return isinstance(exc, (NoBrokersAvailable, KafkaTimeoutError))


def connect(factory, kafka: KafkaConfig, **kwargs):
    """Build a kafka-python client, turning 'no broker' into :class:`BrokerUnavailable`."""
    from kafka.errors import KafkaError, NoBrokersAvailable

    try:
        return factory(**kafka.common(), **kwargs)
    except NoBrokersAvailable as e:
        raise BrokerUnavailable(kafka.bootstrap, e) from None
    except (KafkaError, OSError) as e:
        if "broker" in str(e).lower() or isinstance(e, OSError):
            raise BrokerUnavailable(kafka.bootstrap, e) from None
        raise
