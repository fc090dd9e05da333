"""models.budget: wall vs CPU clocks, validation."""

import time

import pytest

from models.budget import Budget


def test_cpu_clock_does_not_count_sleeping():
    wall, cpu = Budget(0.05, "wall"), Budget(0.05, "cpu")
    time.sleep(0.1)
    assert wall.exceeded() and wall.fraction() > 1.0
    assert not cpu.exceeded(), "a sleeping process used no CPU, so its CPU budget is intact"


def test_cpu_clock_counts_work():
    b = Budget(0.02, "cpu")
    x = 0
    while not b.exceeded():
        x += 1
    assert b.elapsed() > 0.02


def test_no_budget_never_runs_out_and_bad_input_is_named():
    assert not Budget(0.0).exceeded() and Budget(0.0).fraction() == 0.0
    with pytest.raises(ValueError, match="clock"):
        Budget(1.0, "gpu")
    with pytest.raises(ValueError, match=">= 0"):
        Budget(-1.0)
