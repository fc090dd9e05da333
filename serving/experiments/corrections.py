"""Multiple-comparison corrections over arms × metrics (tea-tasting's procedures).

``holm``: Holm–Bonferroni step-down, controls the family-wise error rate under
any dependence (Holm, Scand. J. Statistics 1979). ``bh``: Benjamini–Hochberg
step-up, controls the false discovery rate under independence or positive
dependence (Benjamini & Hochberg, JRSS-B 1995). ``none``: p-values unchanged.
Invariant: a missing (NaN) p-value is not a hypothesis: it is left out of the
family, gets a NaN adjusted p-value and is never rejected.
"""

from __future__ import annotations

import math
import warnings
from typing import Sequence

import numpy as np


def adjust_pvalues(pvalues: Sequence[float], method: str, alpha: float = 0.05
                   ) -> tuple[np.ndarray, np.ndarray]:
    """``(adjusted p-values, rejected)`` for ``method`` in ``holm`` / ``bh`` / ``none``."""
    p = np.asarray(pvalues, dtype=float)
    adj = np.full(p.shape, np.nan)
    ok = np.isfinite(p)
    if method == "none":
        adj[ok] = p[ok]
        return adj, np.where(ok, p <= alpha, False)
    if method not in ("holm", "bh"):
        raise ValueError(f"correction {method!r}; use holm, bh or none")
    idx = np.flatnonzero(ok)
    if len(idx) == 0:
        return adj, np.zeros(p.shape, dtype=bool)
    import tea_tasting as tt
    from tea_tasting.experiment import ExperimentResult

    results = {int(i): ExperimentResult({"h": {"pvalue": float(p[i])}}) for i in idx}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if method == "holm":
            out = tt.adjust_fwer(results, alpha=alpha, method="bonferroni", arbitrary_dependence=True)
        else:
            out = tt.adjust_fdr(results, alpha=alpha, arbitrary_dependence=False)
    rejected = np.zeros(p.shape, dtype=bool)
    for key, res in out.items():
        h = res["h"]
        adj[key] = min(1.0, float(h["pvalue_adj"])) if not math.isnan(float(h["pvalue_adj"])) else math.nan
        rejected[key] = bool(h["null_rejected"])
    return adj, rejected
