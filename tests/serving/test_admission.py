"""Adaptive, jittered Retry-After (serving.admission): grows under overload, spreads clients, decays back."""

from __future__ import annotations

import pytest

from serving.admission import AdaptiveRetryAfter, RetryAfterConfig


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def test_base_grows_while_rejections_outnumber_admissions_and_decays_after():
    clk = Clock()
    ra = AdaptiveRetryAfter(RetryAfterConfig(min_s=1, max_s=30, window_s=1.0), seed=0, clock=clk)
    for _ in range(6):                       # 6 windows of 10 admitted / 400 rejected
        for _ in range(10):
            ra.admitted()
        vals = [ra.rejected() for _ in range(400)]
        clk.t += 1.01
    assert ra.base > 10
    assert all(1 <= v <= 30 for v in vals)
    assert len(set(vals)) > 3, "rejected clients must be told different delays (jitter)"
    lo = int(round(ra.base))
    for _ in range(20):                      # no more rejections: back to min_s
        for _ in range(10):
            ra.admitted()
        clk.t += 1.01
    ra.admitted()
    assert ra.base == 1.0
    assert ra.rejected() in (1, 2) and lo > 2


def test_values_stay_within_bounds_and_without_jitter_equal_the_base():
    clk = Clock()
    ra = AdaptiveRetryAfter(RetryAfterConfig(min_s=2, max_s=4, window_s=0.1, jitter=False), clock=clk)
    for _ in range(50):
        for _ in range(100):
            assert 2 <= ra.rejected() <= 4
        clk.t += 0.2
    assert ra.rejected() == 4 and ra.base == 4.0


@pytest.mark.parametrize("kw", [{"min_s": 0}, {"min_s": 5, "max_s": 2}, {"window_s": 0}])
def test_config_errors_name_the_bad_value(kw):
    with pytest.raises(ValueError, match="min_s|window_s"):
        RetryAfterConfig(**kw)


def test_a_burst_within_one_window_is_spread_at_once():
    clk = Clock()
    ra = AdaptiveRetryAfter(RetryAfterConfig(min_s=1, max_s=30, window_s=1.0), seed=1, clock=clk)
    for _ in range(16):
        ra.admitted()
    vals = [ra.rejected() for _ in range(484)]   # 500 clients at once, 16 admitted
    assert vals[0] <= 2 and max(vals[-50:]) >= 8
    assert len(set(vals)) >= 8


def test_the_delay_decays_over_idle_windows_too():
    """After an overload ends with no traffic at all, the next rejected client is not told the old delay."""
    clk = Clock()
    ra = AdaptiveRetryAfter(RetryAfterConfig(min_s=1, max_s=30, window_s=0.5), seed=0, clock=clk)
    for _ in range(8):
        for _ in range(300):
            ra.rejected()
        ra.admitted()
        clk.t += 0.51
    assert ra.base > 8
    clk.t += 3.0                      # six silent windows
    ra.admitted()
    assert ra.base == 1.0


def test_rejections_are_answered_after_a_sub_second_spread():
    ra = AdaptiveRetryAfter(RetryAfterConfig(spread_s=0.8), seed=3)
    delays = [ra.answer_delay() for _ in range(2000)]
    assert all(0 <= d < 0.8 for d in delays)
    assert max(delays) > 0.7 and min(delays) < 0.1       # spread over the whole window
    assert 0.35 < sum(delays) / len(delays) < 0.45
    assert AdaptiveRetryAfter(RetryAfterConfig(spread_s=0)).answer_delay() == 0.0
    with pytest.raises(ValueError, match="spread_s"):
        RetryAfterConfig(spread_s=-1)
