"""``genrec rewards``: settings from genrec.yaml and flags; a short real run prints the supervisor line."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from infra.cli import build_parser
from infra.commands.rewards import config_from_args


def test_flags_override_the_rewards_section():
    args = build_parser().parse_args(["rewards", "--window-s", "3", "--lateness-s", "0.5", "--joiners", "2",
                                      "--checkpoint-dir", "/tmp/x", "--duration-aware"])
    cfg = config_from_args(args)
    assert (cfg.window_s, cfg.allowed_lateness_s, cfg.num_joiners, cfg.checkpoint_uri) == (3, 0.5, 2, "/tmp/x")
    assert cfg.reward.duration_aware
    with pytest.raises(ValueError, match="window_s"):
        config_from_args(build_parser().parse_args(["rewards", "--window-s", "0"]))


def test_a_short_run_prints_lag_windows_and_rewards(broker, topic_name, tmp_path):
    from ingest.contract import DEAD_LETTERS, REWARDS, SERVED, USER_EVENTS
    from ingest.kafka_client import KafkaConfig
    from ingest.producer import EventProducer
    from ingest.session_stream import session_stream
    from ingest.topics import TopicsConfig, ensure_topics

    ns = topic_name + "."
    kafka = KafkaConfig(bootstrap=broker, namespace=ns)
    ensure_topics(kafka, TopicsConfig(partitions={SERVED: 2, USER_EVENTS: 2, REWARDS: 2, DEAD_LETTERS: 1}))
    with EventProducer(kafka) as prod:
        prod.send_many(rec for _, rec in session_stream(50, n_users=10, window_ms=500, lateness_ms=100))
    env = {**os.environ, "RAY_worker_niceness": "0"}
    out = subprocess.run([sys.executable, "-m", "infra.cli", "rewards", "--bootstrap", broker, "--namespace", ns,
                          "--window-s", "0.5", "--lateness-s", "0.1", "--interval", "1", "--duration", "4",
                          "--checkpoint-dir", str(tmp_path / "ckpt")],
                         capture_output=True, text=True, timeout=240, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "reward joiner(s) over 2 partitions" in out.stdout
    line = [ln for ln in out.stdout.splitlines() if "total:" in ln][-1]
    assert "windows open" in line and "rewards/s" in line and "orphans" in line
    assert "final checkpoints written" in out.stdout
