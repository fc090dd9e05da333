"""``genrec simulate``: its help, and clear errors for bad flags and an unreachable URL (no app needed; the
run against a real app is in tests/serving/test_simulator.py)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from infra.broker import free_port
from infra.cli import main


def test_help_explains_the_loop_and_the_flags():
    out = subprocess.run([sys.executable, "-m", "infra.cli", "simulate", "--help"], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    for needle in ("--url", "--users", "--rate", "--duration", "--concurrency", "--timeout", "--events",
                   "--json", "--answered", "--acked", "Poisson", "POST /v1/events", "Exit status"):
        assert needle in out.stdout, needle
    top = subprocess.run([sys.executable, "-m", "infra.cli", "--help"], capture_output=True, text=True, timeout=120)
    assert "simulate" in top.stdout


def test_an_unreachable_url_is_a_clear_error_before_any_traffic(capsys):
    url = f"http://127.0.0.1:{free_port()}"   # nothing listens there
    rc = main(["simulate", "--url", url, "--small", "--duration", "1", "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and f"cannot reach the genrec app at {url}" in err and "genrec serve" in err


@pytest.mark.parametrize("flags,needle", [
    (["--url", "localhost:8000"], "must be an http:// or https:// URL"),
    (["--url", "http://127.0.0.1:1", "--rate", "0"], "rate=0.0 must be a positive number"),
    (["--url", "http://127.0.0.1:1", "--duration", "-5"], "duration_s=-5.0"),
    (["--url", "http://127.0.0.1:1", "--concurrency", "0"], "concurrency=0"),
    (["--url", "http://127.0.0.1:1", "--small", "--users", "100000"], "more than the world's 500 users"),
])
def test_bad_flags_exit_2_and_name_the_fix(flags, needle, capsys):
    rc = main(["simulate", *flags, "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and needle in err, err


def test_missing_url_is_an_argparse_error(capsys):
    with pytest.raises(SystemExit) as e:
        main(["simulate", "--rate", "1"])
    assert e.value.code == 2 and "--url" in capsys.readouterr().err
