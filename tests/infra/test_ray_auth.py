"""Ray token authentication: the plumbing of genrec's commands and cluster config, and a real Ray head
started with token auth that accepts a client holding the token and refuses one without it."""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml

from infra.ray_auth import prepare_ray_auth

REPO = Path(__file__).resolve().parents[2]


def test_joining_a_cluster_needs_token_mode_and_a_token(tmp_path):
    with pytest.raises(ValueError, match="RAY_AUTH_MODE=token"):
        prepare_ray_auth("10.0.0.1:6379", {"RAY_AUTH_MODE": "disabled", "HOME": str(tmp_path)})
    with pytest.raises(ValueError, match="RAY_AUTH_TOKEN_PATH"):
        prepare_ray_auth(None, {"RAY_ADDRESS": "10.0.0.1:6379", "HOME": str(tmp_path)})
    with pytest.raises(FileNotFoundError, match="RAY_AUTH_TOKEN_PATH"):
        prepare_ray_auth("10.0.0.1:6379", {"RAY_AUTH_TOKEN_PATH": str(tmp_path / "none"), "HOME": str(tmp_path)})
    token = tmp_path / "token"
    token.write_text("t" * 64)
    env = {"RAY_AUTH_TOKEN_PATH": str(token), "HOME": str(tmp_path)}
    assert prepare_ray_auth("10.0.0.1:6379", env) == "token" and env["RAY_AUTH_MODE"] == "token"
    (tmp_path / ".ray").mkdir()
    (tmp_path / ".ray" / "auth_token").write_text("t" * 64)   # Ray's default place works too
    assert prepare_ray_auth("10.0.0.1:6379", {"HOME": str(tmp_path)}) == "token"
    with pytest.raises(ValueError, match="'token'"):
        prepare_ray_auth(None, {"RAY_AUTH_MODE": "none"})


def test_a_local_ray_uses_token_auth_unless_disabled_explicitly(tmp_path):
    env = {"HOME": str(tmp_path)}
    assert prepare_ray_auth(None, env) == "token" and env["RAY_AUTH_MODE"] == "token"
    assert prepare_ray_auth("local", {"RAY_AUTH_MODE": "disabled"}) == "disabled"


def test_commands_no_longer_default_to_disabled(monkeypatch):
    import ray

    from infra import cli
    from infra.commands.ray_local import init_ray

    assert 'setdefault("RAY_AUTH_MODE"' not in Path(cli.__file__).read_text()
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    with pytest.raises(ValueError, match="refusing to join"):
        init_ray("127.0.0.1:1", 1)


def test_cluster_config_starts_every_node_with_token_auth_from_a_file():
    doc = yaml.safe_load((REPO / "ray_cluster.yaml").read_text())
    starts = doc["head_start_ray_commands"] + doc["worker_start_ray_commands"]
    ray_starts = [c for c in starts if "ray start" in c]
    assert len(ray_starts) == 2
    assert all("RAY_AUTH_MODE=token" in c and "RAY_AUTH_TOKEN_PATH=/home/ray/secrets/ray_auth_token" in c
               for c in ray_starts)
    assert "disabled" not in (REPO / "ray_cluster.yaml").read_text().split("cluster_name:")[1]
    assert "/home/ray/secrets/ray_auth_token" in doc["file_mounts"]
    assert "secrets" in doc["rsync_exclude"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


CLIENT = ("import ray, sys; ray.init(address=sys.argv[1], log_to_driver=False); "
          "print('ANSWER', ray.get(ray.remote(lambda: 6 * 7).remote()))")


def test_a_token_authenticated_ray_head_accepts_the_token_and_refuses_a_client_without(tmp_path):
    token = tmp_path / "ray_auth_token"
    token.write_text(secrets.token_hex(32))
    token.chmod(0o600)
    base = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env = {**base, "HOME": str(tmp_path), "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "token",
           "RAY_AUTH_TOKEN_PATH": str(token)}
    port = _free_port()
    # Its own temp dir: `ray start` writes the head's address to <temp dir>/ray_current_cluster, and a stale
    # one in the default /tmp/ray would make every later local ray.init() on the machine try to join it.
    # Short (Ray's Unix socket paths live under it).
    temp_dir = tempfile.mkdtemp(prefix="rauth-", dir="/tmp")
    head = subprocess.Popen([str(Path(sys.executable).parent / "ray"), "start", "--head", f"--port={port}",
                             f"--temp-dir={temp_dir}", "--num-cpus=1", "--include-dashboard=false",
                             "--disable-usage-stats", "--block"],
                            env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), 1).close()
                break
            except OSError:
                time.sleep(0.3)

        def client(e):
            return subprocess.run([sys.executable, "-c", CLIENT, f"127.0.0.1:{port}"], env=e, capture_output=True,
                                  text=True, timeout=120)

        without = {k: v for k, v in env.items() if k != "RAY_AUTH_TOKEN_PATH"} | {"RAY_AUTH_MODE": "disabled"}
        with ThreadPoolExecutor(2) as pool:
            ok, refused = pool.map(client, [env, without])
        assert ok.returncode == 0 and "ANSWER 42" in ok.stdout, ok.stdout[-2000:] + ok.stderr[-2000:]
        assert refused.returncode != 0 and "ANSWER" not in refused.stdout, refused.stdout[-2000:]
    finally:
        os.killpg(head.pid, signal.SIGTERM)
        try:
            head.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
        shutil.rmtree(temp_dir, ignore_errors=True)
