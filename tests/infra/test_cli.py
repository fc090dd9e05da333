"""The ``genrec`` console script: real --help for every subcommand, clear errors."""

from __future__ import annotations

import subprocess
import sys

import pytest

from infra.cli import build_parser


def _subcommands() -> list[str]:
    parser = build_parser()
    action = next(a for a in parser._actions if a.dest == "command")
    return sorted(action.choices)


def test_genrec_help_lists_the_subcommands():
    out = subprocess.run([sys.executable, "-m", "infra.cli", "--help"], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0
    for name in ("broker", "bench", "demo"):
        assert name in out.stdout


@pytest.mark.parametrize("name", _subcommands())
def test_every_subcommand_has_a_real_help(name, capsys):
    with pytest.raises(SystemExit) as e:
        build_parser().parse_args([name, "--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    assert f"genrec {name}" in text and len(text.splitlines()) >= 3


def test_unknown_bench_suite_is_a_clear_error(capsys):
    from infra.cli import main

    assert main(["bench", "no-such-suite"]) == 2
    assert "unknown benchmark suite" in capsys.readouterr().err
