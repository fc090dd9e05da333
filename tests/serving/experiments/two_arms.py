"""The smallest experiment config the report tests share: one layer, experiment ``exp``, arms ``a`` (control) and ``b``."""

from __future__ import annotations

from serving.experiments.config import ExperimentsConfig


def two_arms(analysis: str = "") -> ExperimentsConfig:
    """The config, with ``analysis`` (a YAML flow mapping) as the experiment's ``analysis:`` block when given."""
    block = f"\n        analysis: {analysis}" if analysis else ""
    return ExperimentsConfig.from_yaml(f"""
layers:
  - name: l
    experiments:
      - name: exp
        control: a
        guardrails: [{{metric: ctr, max_relative_drop: 0.05}}]{block}
        arms: [{{name: a}}, {{name: b}}]
""")


CFG = two_arms()
