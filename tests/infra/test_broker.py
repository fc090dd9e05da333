"""The embedded tansu broker: starts, answers, stops cleanly, and dies with its parent (kill -9)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from infra.broker import BrokerConfig, EmbeddedBroker, wait_until_answers
from ingest.kafka_client import KafkaConfig
from ingest.topics import existing_topics

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"  # a zombie is dead
    except FileNotFoundError:
        return False


def _wait_dead(pid: int, timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not _alive(pid):
            return True
        time.sleep(0.05)
    return False


def test_fixture_broker_answers_kafka_requests(broker):
    wait_until_answers(broker, 5)
    assert isinstance(existing_topics(KafkaConfig(bootstrap=broker)), set)


def test_start_and_stop_cleanly():
    b = EmbeddedBroker(BrokerConfig(start_timeout_s=30)).start()
    pid = b.proc.pid
    try:
        assert b.alive()
        assert existing_topics(b.bootstrap) is not None
    finally:
        b.stop()
    assert not b.alive() and _wait_dead(pid)
    b.stop()  # idempotent


def test_broker_dies_with_its_parent_on_kill_9(tmp_path):
    child = textwrap.dedent("""
        import sys, time
        from infra.broker import EmbeddedBroker
        b = EmbeddedBroker().start()
        print(b.proc.pid, b.bootstrap, flush=True)
        time.sleep(600)
    """)
    proc = subprocess.Popen([sys.executable, "-c", child], cwd=REPO, stdout=subprocess.PIPE, text=True)
    tansu_pid = None
    try:
        line = proc.stdout.readline()
        assert line, "child did not start a broker"
        tansu_pid, bootstrap = int(line.split()[0]), line.split()[1]
        assert _alive(tansu_pid)
        wait_until_answers(bootstrap, 10)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        assert _wait_dead(tansu_pid), "tansu outlived its parent"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if tansu_pid and _alive(tansu_pid):  # never leave a broker behind, even when the test fails
            os.kill(tansu_pid, signal.SIGKILL)


def test_bad_config_is_a_clear_error():
    with pytest.raises(ValueError, match="port=70000"):
        BrokerConfig(port=70000)
