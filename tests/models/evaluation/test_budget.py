"""models.evaluation.budget: wall vs CPU clocks, validation."""

import time

import pytest

from models.evaluation.budget import Budget


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


def test_default_threads_fit_the_machine():
    from models.evaluation.budget import default_threads

    assert default_threads(1) == 1
    assert default_threads(2) == 1      # 2 cores: one thread, no spinning against a neighbour
    assert default_threads(16) == 8
    assert default_threads(128) == 8


def test_fit_threads_sets_torch_threads():
    import torch

    from models.evaluation.budget import default_threads, fit_threads

    before = torch.get_num_threads()
    try:
        assert fit_threads(3) == 3 and torch.get_num_threads() == 3
        assert fit_threads(0) == default_threads() == torch.get_num_threads()
    finally:
        torch.set_num_threads(before)
