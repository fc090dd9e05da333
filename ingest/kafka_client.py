"""Shared Kafka client settings and a clear error when the broker is unreachable."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_BOOTSTRAP_ENV = "KAFKA_BOOTSTRAP"


class BrokerUnavailable(ConnectionError):
    """No Kafka broker answered at the configured bootstrap address."""

    def __init__(self, bootstrap: str, cause: Exception | None = None):
        msg = (f"cannot reach a Kafka broker at {bootstrap!r}"
               + (f" ({type(cause).__name__}: {cause})" if cause else "")
               + f"; start one with `genrec broker` or set {DEFAULT_BOOTSTRAP_ENV}=host:port")
        super().__init__(msg)
        self.bootstrap = bootstrap


#: ``security_protocol`` values kafka-python speaks; SASL mechanisms genrec configures (GSSAPI/OAUTHBEARER
#: need objects, not YAML: pass them through ``extra``).
SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
#: Where the SASL password is read from unless ``sasl_password_file`` or ``sasl_password_env`` says otherwise.
DEFAULT_SASL_PASSWORD_ENV = "KAFKA_SASL_PASSWORD"


@dataclass(frozen=True)
class KafkaConfig:
    """Where Kafka is and how clients talk to it.

    ``bootstrap`` is ``host:port[,host:port…]``; ``connect_timeout_s`` bounds
    how long a client waits for the first broker before raising
    :class:`BrokerUnavailable` (no silent hang). ``namespace`` prefixes every
    physical topic name (``{namespace}user-events``) so several deployments —
    or tests sharing one broker — never see each other's data; the contract
    topic names themselves never change.

    Security (SECURITY.md): ``security_protocol`` is one of :data:`SECURITY_PROTOCOLS` (``PLAINTEXT``
    only on loopback / a private network). ``SASL_*``: ``sasl_mechanism`` (:data:`SASL_MECHANISMS`) and
    ``sasl_username``; the password is read, when a client is created, from the file
    ``sasl_password_file`` or else the environment variable ``sasl_password_env`` (default
    ``KAFKA_SASL_PASSWORD``). ``sasl_password`` (plain text in the config) is refused unless
    ``allow_plaintext_password`` is true. ``SSL`` / ``SASL_SSL``: ``ssl_cafile`` (the CA that signed the
    brokers' certificates; None: the system's), ``ssl_certfile`` + ``ssl_keyfile`` (client certificate,
    mutual TLS), ``ssl_check_hostname``. Every producer, consumer and admin client genrec creates gets
    :meth:`common` (through :func:`connect`): the one place client keyword arguments are made.
    """

    bootstrap: str
    namespace: str = ""
    client_id: str = "genrec"
    connect_timeout_s: float = 10.0
    security_protocol: str = "PLAINTEXT"
    sasl_mechanism: str | None = None
    sasl_username: str | None = None
    sasl_password_file: str | None = None
    sasl_password_env: str = DEFAULT_SASL_PASSWORD_ENV
    sasl_password: str | None = field(default=None, repr=False)
    allow_plaintext_password: bool = False
    ssl_cafile: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    ssl_check_hostname: bool = True
    extra: dict = field(default_factory=dict, hash=False, compare=False)

    def __post_init__(self) -> None:
        if not self.bootstrap or any(":" not in h for h in self.bootstrap.split(",")):
            raise ValueError(f"KafkaConfig.bootstrap={self.bootstrap!r} must be host:port[,host:port...]")
        if self.connect_timeout_s <= 0:
            raise ValueError(f"KafkaConfig.connect_timeout_s={self.connect_timeout_s} must be > 0")
        if self.security_protocol not in SECURITY_PROTOCOLS:
            raise ValueError(f"KafkaConfig.security_protocol={self.security_protocol!r}: use one of "
                             f"{list(SECURITY_PROTOCOLS)}")
        sasl, tls = self.security_protocol.startswith("SASL_"), self.security_protocol.endswith("SSL")
        if sasl:
            if self.sasl_mechanism not in SASL_MECHANISMS:
                raise ValueError(f"KafkaConfig.sasl_mechanism={self.sasl_mechanism!r}: security_protocol="
                                 f"{self.security_protocol} needs one of {list(SASL_MECHANISMS)}")
            if not self.sasl_username:
                raise ValueError(f"KafkaConfig.sasl_username is needed with security_protocol="
                                 f"{self.security_protocol} (kafka.sasl_username in genrec.yaml)")
            if not self.sasl_password_env and not self.sasl_password_file and self.sasl_password is None:
                raise ValueError("KafkaConfig: no SASL password source; set sasl_password_file: PATH or "
                                 "sasl_password_env: NAME of an environment variable holding it")
        elif self.sasl_mechanism or self.sasl_username or self.sasl_password_file or self.sasl_password:
            raise ValueError(f"KafkaConfig: SASL settings are given but security_protocol="
                             f"{self.security_protocol} does not use SASL; use SASL_SSL (or SASL_PLAINTEXT "
                             "on a private network), or drop the sasl_* fields")
        if self.sasl_password is not None and not self.allow_plaintext_password:
            env = self.sasl_password_env or DEFAULT_SASL_PASSWORD_ENV
            raise ValueError("KafkaConfig.sasl_password holds the password in plain text; put it in a file "
                             f"(sasl_password_file: PATH) or the environment ({env}=...), or set "
                             "allow_plaintext_password: true to accept it")
        if self.sasl_password is not None and self.sasl_password_file:
            raise ValueError("KafkaConfig: give sasl_password_file or sasl_password, not both")
        ssl_files = {"ssl_cafile": self.ssl_cafile, "ssl_certfile": self.ssl_certfile,
                     "ssl_keyfile": self.ssl_keyfile}
        if not tls and any(ssl_files.values()):
            raise ValueError(f"KafkaConfig: {[k for k, v in ssl_files.items() if v]} are given but "
                             f"security_protocol={self.security_protocol} does not use TLS; use SSL or SASL_SSL")
        if bool(self.ssl_certfile) != bool(self.ssl_keyfile):
            raise ValueError("KafkaConfig: a client certificate needs both ssl_certfile and ssl_keyfile")

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

    def sasl_secret(self) -> str:
        """The SASL password: ``sasl_password_file``, else ``$sasl_password_env``, else ``sasl_password``
        (read in the process that creates the client; errors say what is missing)."""
        if self.sasl_password_file:
            path = Path(self.sasl_password_file)
            if not path.is_file():
                raise FileNotFoundError(f"KafkaConfig.sasl_password_file={str(path)!r} does not exist")
            secret = path.read_text().strip()
            if not secret:
                raise ValueError(f"KafkaConfig.sasl_password_file={str(path)!r} is empty")
            return secret
        if self.sasl_password is not None:
            return self.sasl_password
        secret = os.environ.get(self.sasl_password_env or "")
        if not secret:
            raise ValueError(f"Kafka SASL password not found: set the environment variable "
                             f"{self.sasl_password_env} or kafka.sasl_password_file: PATH")
        return secret

    def security(self) -> dict:
        """The kafka-python keyword arguments of ``security_protocol``, SASL and TLS (empty for PLAINTEXT)."""
        if self.security_protocol == "PLAINTEXT":
            return {}
        out: dict = {"security_protocol": self.security_protocol}
        if self.security_protocol.startswith("SASL_"):
            out.update(sasl_mechanism=self.sasl_mechanism, sasl_plain_username=self.sasl_username,
                       sasl_plain_password=self.sasl_secret())
        if self.security_protocol.endswith("SSL"):
            for key in ("ssl_cafile", "ssl_certfile", "ssl_keyfile"):
                path = getattr(self, key)
                if path and not Path(path).is_file():
                    raise FileNotFoundError(f"KafkaConfig.{key}={path!r} does not exist (TLS files are read "
                                            "where the client runs: every node needs them)")
                if path:
                    out[key] = path
            out["ssl_check_hostname"] = self.ssl_check_hostname
        return out

    def common(self) -> dict:
        """Keyword arguments every kafka-python client gets (connection, security)."""
        return {
            "bootstrap_servers": self.bootstrap.split(","),
            "client_id": self.client_id,
            "api_version_auto_timeout_ms": int(self.connect_timeout_s * 1000),
            "request_timeout_ms": max(30_000, int(self.connect_timeout_s * 1000) + 1000),
            # tansu may answer a fetch with more than fetch_max_bytes; accept large frames.
            "receive_message_max_bytes": 256 * 1024 * 1024,
            **self.security(),
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

    common = kafka.common()   # outside the try: a missing password or TLS file is not "no broker"
    try:
        return factory(**common, **kwargs)
    except NoBrokersAvailable as e:
        raise BrokerUnavailable(kafka.bootstrap, e) from None
    except (KafkaError, OSError) as e:
        if "broker" in str(e).lower() or isinstance(e, OSError):
            raise BrokerUnavailable(kafka.bootstrap, e) from None
        raise
