"""A metric the analysis library cannot analyse leaves the others' results intact (the report names it)."""

from __future__ import annotations

import tea_tasting as tt

from serving.experiments.report import build_reward_report
from tests.serving.experiments.report_logs import EXP, logs


def test_one_failing_metric_does_not_hide_the_others(monkeypatch):
    real = tt.Experiment.analyze

    def analyze(self, data, *a, **kw):
        if "watch_ms" in self.metrics:     # e.g. a negative delta-method variance: math.sqrt raises
            raise ValueError("math domain error")
        return real(self, data, *a, **kw)

    monkeypatch.setattr(tt.Experiment, "analyze", analyze)
    _, rewards, _ = logs()
    rep = build_reward_report(EXP, rewards)
    got = rep["arms"]["beam4"]["metrics"]
    assert got["ctr"]["vs_control"]["p_value"] is not None and got["ctr"]["vs_control"]["note"] is None
    assert got["mean_reward"]["vs_control"]["p_value"] is not None
    watch = got["watch_ms"]["vs_control"]
    assert watch["p_value"] is None and "the analysis failed (ValueError: math domain error)" in watch["note"]
