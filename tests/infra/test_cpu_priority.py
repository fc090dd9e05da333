"""make_background really steps a process back — nice, SCHED_BATCH and its session autogroup — and only back."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from infra.cpu_priority import BackgroundConfig, autogroup_enabled, parse_autogroup, priority_report

REPO = Path(__file__).resolve().parents[2]

CHILD = """
import json, sys
sys.path.insert(0, {repo!r})
from infra.cpu_priority import make_background, priority_report
before = priority_report()
after = make_background(15)
print(json.dumps({{"before": before, "after": after}}))
"""


def _in_own_session() -> dict:
    """make_background in a child of its own session (its own autogroup: this test's session is untouched)."""
    out = subprocess.run([sys.executable, "-c", CHILD.format(repo=str(REPO))], capture_output=True, text=True,
                         timeout=60, start_new_session=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_make_background_lowers_nice_policy_and_the_sessions_autogroup():
    got = _in_own_session()
    assert got["before"]["niceness"] == os.getpriority(os.PRIO_PROCESS, 0)
    assert got["after"]["niceness"] == max(15, got["before"]["niceness"])
    assert got["after"]["policy"] == "SCHED_BATCH"
    if got["after"]["autogroups"] and got["before"]["autogroup_niceness"] is not None:
        assert got["after"]["autogroup_niceness"] == 19
    # this process (another session) kept its priority
    assert priority_report()["niceness"] == got["before"]["niceness"]


def test_this_sessions_autogroup_is_untouched():
    mine = priority_report()["autogroup_niceness"]
    _in_own_session()
    assert priority_report()["autogroup_niceness"] == mine


@pytest.mark.parametrize("kw, word", [({"niceness": -1}, "niceness"), ({"niceness": 20}, "niceness"),
                                      ({"autogroup_niceness": -5}, "autogroup_niceness")])
def test_config_only_lowers_priority(kw, word):
    with pytest.raises(ValueError, match=word):
        BackgroundConfig(**kw)


def test_report_says_whether_autogroups_are_on():
    assert priority_report()["autogroups"] == autogroup_enabled()


@pytest.mark.parametrize("text, want", [("/autogroup-520 nice 0\n", 0), ("/autogroup-7 nice 19", 19),
                                        ("/autogroup-7 nice -5", -5), ("", None), ("\n", None),
                                        ("/autogroup-1", None)])
def test_autogroup_text_without_a_nice_value_means_none(text, want):
    # CI containers give an empty /proc/self/autogroup; that must read as "no autogroup", not crash
    assert parse_autogroup(text) == want
