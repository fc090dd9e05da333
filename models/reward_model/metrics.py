"""Quality of a reward model: per-head AUC, calibration, and rank correlation with a true value.

* AUC (``sklearn.metrics.roc_auc_score``) of each head's predicted rate against
  a binary session label: the session had a click / a like at all; its watch
  fraction, or its skip-and-dislike rate, is at least ``LABEL_AT`` (nearly every
  session has some skip, so "any skip" would leave one class); NaN when a window
  has one class.
* Calibration: reliability bins of equal width over the predicted rate, each
  with its mean prediction and mean observed rate; the expected calibration
  error (ECE) is their count-weighted mean absolute gap (Guo et al., 2017). The
  targets are rates, not 0/1 labels, so ``sklearn.calibration.calibration_curve``
  (binary labels only) does not fit; the binning is a few lines of numpy.
* ``rank_correlation``: Spearman's rho (``scipy.stats.spearmanr``) between the
  predicted session value and a true one (the simulator's expected value);
  ``within_user_rank_correlation`` the same among each user's own candidates.

Report these on a **later time window** than the model trained on
(:meth:`models.reward_model.data.RewardExamples.split_at`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.stats import spearmanr
from sklearn.metrics import roc_auc_score

from models.reward_model.data import HEADS

#: Sessions count as positive for the watch / skip heads' AUC when their target is at least this.
LABEL_AT = 0.5


@dataclass(frozen=True)
class Calibration:
    ece: float
    mean_pred: float
    mean_obs: float
    bins: list[tuple[float, float, int, float, float]]   # (lo, hi, count, mean predicted, mean observed)


def auc(pred: np.ndarray, label: np.ndarray) -> float:
    """ROC AUC of scores ``pred`` for binary ``label``; NaN when only one class is present."""
    label = np.asarray(label).astype(bool)
    if label.all() or not label.any():
        return float("nan")
    return float(roc_auc_score(label, np.asarray(pred, dtype=np.float64)))


def calibration(pred: np.ndarray, observed: np.ndarray, n_bins: int = 10) -> Calibration:
    """Reliability bins over [0, 1] and the expected calibration error of ``pred`` vs ``observed`` rates."""
    if n_bins < 1:
        raise ValueError(f"n_bins={n_bins} must be >= 1, e.g. 10")
    pred = np.asarray(pred, dtype=np.float64)
    observed = np.asarray(observed, dtype=np.float64)
    if len(pred) == 0:
        return Calibration(float("nan"), float("nan"), float("nan"), [])
    which = np.minimum((np.clip(pred, 0.0, 1.0) * n_bins).astype(np.int64), n_bins - 1)
    bins, ece = [], 0.0
    for b in range(n_bins):
        sel = which == b
        c = int(sel.sum())
        if not c:
            continue
        mp, mo = float(pred[sel].mean()), float(observed[sel].mean())
        bins.append((b / n_bins, (b + 1) / n_bins, c, mp, mo))
        ece += c * abs(mp - mo)
    return Calibration(ece / len(pred), float(pred.mean()), float(observed.mean()), bins)


def head_labels(targets: np.ndarray) -> np.ndarray:
    """Binary labels ``[M, 4]`` of per-session targets (see module docstring); NaN targets give False."""
    t = np.nan_to_num(np.asarray(targets, dtype=np.float64), nan=-1.0)
    lab = t > 0
    for h in ("watch", "skip"):
        lab[:, HEADS.index(h)] = t[:, HEADS.index(h)] >= LABEL_AT
    return lab


def head_report(rates: np.ndarray, targets: np.ndarray, n_bins: int = 10, prefix: str = "rm_") -> dict[str, float]:
    """``{prefix}auc_<head>``, ``ece_<head>``, ``mean_pred_<head>``, ``mean_obs_<head>`` and ``n_<head>`` per
    head, over the examples whose target for that head is known."""
    rates = np.asarray(rates, dtype=np.float64)
    targets = np.asarray(targets, dtype=np.float64)
    labels = head_labels(targets)
    out: dict[str, float] = {}
    for j, h in enumerate(HEADS):
        k = ~np.isnan(targets[:, j])
        cal = calibration(rates[k, j], targets[k, j], n_bins)
        out[f"{prefix}auc_{h}"] = auc(rates[k, j], labels[k, j]) if k.any() else float("nan")
        out[f"{prefix}ece_{h}"] = cal.ece
        out[f"{prefix}mean_pred_{h}"] = cal.mean_pred
        out[f"{prefix}mean_obs_{h}"] = cal.mean_obs
        out[f"{prefix}n_{h}"] = float(k.sum())
    return out


def rank_correlation(pred_value: np.ndarray, true_value: np.ndarray) -> float:
    """Spearman's rho of predicted vs true session values (NaN when either is constant)."""
    pred_value = np.asarray(pred_value, dtype=np.float64)
    true_value = np.asarray(true_value, dtype=np.float64)
    if len(pred_value) != len(true_value):
        raise ValueError(f"pred_value has {len(pred_value)} sessions, true_value {len(true_value)}; give one each")
    if len(pred_value) < 2 or np.ptp(pred_value) == 0 or np.ptp(true_value) == 0:
        return float("nan")
    return float(spearmanr(pred_value, true_value).statistic)


def within_user_rank_correlation(pred: np.ndarray, true: np.ndarray) -> float:
    """Mean over users of Spearman's rho between predicted and true values of that user's candidate
    sessions (``[U, N]`` each): what preference alignment needs — the best and worst of one user's
    candidates told apart — free of between-user differences. Users whose values are constant are skipped."""
    pred = np.asarray(pred, dtype=np.float64)
    true = np.asarray(true, dtype=np.float64)
    if pred.shape != true.shape or pred.ndim != 2:
        raise ValueError(f"pred and true must both be [U, N] values of N candidate sessions per user; got "
                         f"{pred.shape} and {true.shape}")
    rhos = [rank_correlation(p, t) for p, t in zip(pred, true)]
    rhos = [r for r in rhos if np.isfinite(r)]
    return float(np.mean(rhos)) if rhos else float("nan")


def slot_head_report(slot_probs: np.ndarray, slot_targets: np.ndarray, prefix: str = "rm_slot_") -> dict[str, float]:
    """Per-slot quality: ``{prefix}auc_<head>`` of each slot's predicted probability ``[M, K, 4]`` against its
    slot label ``[M, K, 4]`` (click / like / skip: the 0/1 label; watch: fraction >= ``LABEL_AT`` on clicked
    slots) over the known slots, and ``{prefix}n_<head>`` their count — "does the model know which item of a
    session the user engaged with", which session-level AUC does not tell."""
    p = np.asarray(slot_probs, dtype=np.float64).reshape(-1, len(HEADS))
    t = np.asarray(slot_targets, dtype=np.float64).reshape(-1, len(HEADS))
    if p.shape != t.shape:
        raise ValueError(f"slot_probs {np.shape(slot_probs)} and slot_targets {np.shape(slot_targets)} must be the "
                         "same [M, K, 4]")
    out: dict[str, float] = {}
    for j, h in enumerate(HEADS):
        k = ~np.isnan(t[:, j])
        lab = t[k, j] >= (LABEL_AT if h == "watch" else 0.5)
        out[f"{prefix}auc_{h}"] = auc(p[k, j], lab) if k.any() else float("nan")
        out[f"{prefix}n_{h}"] = float(k.sum())
    return out
