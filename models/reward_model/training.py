"""Training of the session reward model: per-head losses, early stopping on a later validation window.

Losses (OneRec trains its reward towers with BCE on session labels): click, like
and skip rates with binary cross-entropy against the observed per-impression
rates (soft labels in [0, 1], a proper scoring rule for a rate), watch fraction
with squared error on the sessions where it is known. ``loss_weights`` weigh
the heads. AdamW, gradient-norm clipping.

Per-slot term (``slot_weight`` > 0, on examples with ``slot_targets``): the same
heads trained on each served slot's own label — BCE of the slot's click, like and
skip probabilities (``RewardOutput.slot_probs``) against whether that position was
clicked, liked, skipped / disliked, squared error of its watch fraction on the
clicked slots whose watch fraction is known. A session's rate is the mean of its
slots' probabilities, so both terms fit the same quantities; the slot term says
*which* item earned the click (item-level credit, K times the labelled units),
the session term also covers sessions whose slot labels are unknown.
``session_weight`` weighs the session term; by default it applies only to the
sessions whose slot labels are unknown (events without positions) — a fallback,
not a second target for the same sessions (``session_on_labelled=True`` adds it
for every session; on the simulator that ranked one user's candidates worse, see
docs/decisions/036-alignment-settings.md). The ranking term defaults to off for
the same reason.

Optional ranking term (``rank_weight`` > 0): the aligner asks the model to order
*one user's* candidate sessions, which the pointwise heads learn only through
differences between users. A pairwise logistic (RankNet, Burges et al. 2005)
loss over pairs of the same user's sessions in a batch — the one with the higher
observed value (:func:`observed_value`, the heads' targets combined with the value
weights) should get the higher predicted value — is added to the head losses;
batches are then built from whole users (shuffled users, their examples together)
so that a batch holds such pairs.

Validation is **by time**: the newest ``valid_frac`` of the training examples
(by served time) are held out, and training stops when their loss has not
improved for ``patience`` epochs; the best epoch's weights are restored. Pure:
arrays in, a model out.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from models.reward_model.data import EMPTY, HEADS, RewardExamples
from models.reward_model.features import history_batch
from models.reward_model.model import RewardModel, RewardModelConfig, RewardOutput


@dataclass(frozen=True)
class RewardTrainConfig:
    """Optimisation settings; ``epochs`` is an upper bound (early stopping)."""

    epochs: int = 30
    batch_size: int = 128
    lr: float = 3e-3
    weight_decay: float = 1e-4
    grad_clip: float = 1.0
    patience: int = 3            # epochs without a better validation loss before stopping (0 = never stop)
    valid_frac: float = 0.15     # newest share of the training examples used for early stopping
    loss_weights: dict = field(default_factory=lambda: {h: 1.0 for h in HEADS}, hash=False)
    device: str = "cpu"
    seed: int = 0
    max_seconds: float = 0.0     # wall-clock budget (0 = none)
    eval_batch_size: int = 1024
    rank_weight: float = 0.0     # weight of the within-user pairwise ranking loss (0 = head losses only)
    rank_margin: float = 0.0     # pairs whose observed values differ by no more than this are skipped
    slot_weight: float = 1.0     # weight of the per-slot head losses (0 = session targets only)
    session_weight: float = 1.0  # weight of the per-session head losses (0 = slot targets only)
    session_on_labelled: bool = False   # False: the session term only for sessions without slot labels

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "eval_batch_size"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"RewardTrainConfig.{name}={v!r} must be a positive int")
        if not self.lr > 0:
            raise ValueError(f"RewardTrainConfig.lr={self.lr} must be > 0, e.g. 3e-3")
        if self.weight_decay < 0 or not self.grad_clip > 0:
            raise ValueError(f"RewardTrainConfig.weight_decay={self.weight_decay} must be >= 0 and "
                             f"grad_clip={self.grad_clip} > 0")
        if not isinstance(self.patience, int) or self.patience < 0:
            raise ValueError(f"RewardTrainConfig.patience={self.patience!r} must be an int >= 0 (0 = never stop)")
        if not 0.0 <= self.valid_frac < 1.0:
            raise ValueError(f"RewardTrainConfig.valid_frac={self.valid_frac} must be in [0, 1) "
                             "(0 = no validation window, every epoch runs)")
        if not (self.rank_weight >= 0 and self.rank_margin >= 0):
            raise ValueError(f"RewardTrainConfig.rank_weight={self.rank_weight} and rank_margin={self.rank_margin} "
                             "must be >= 0 (rank_weight 0 = no ranking loss; e.g. 1.0 and 0.0)")
        for name in ("slot_weight", "session_weight"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not v >= 0:
                raise ValueError(f"RewardTrainConfig.{name}={v!r} must be a number >= 0 (0 = leave that term out)")
        if not isinstance(self.session_on_labelled, bool):
            raise ValueError(f"RewardTrainConfig.session_on_labelled={self.session_on_labelled!r} must be True or "
                             "False (False: session targets only where a session's slot labels are unknown)")
        if not (self.slot_weight > 0 or self.session_weight > 0):
            raise ValueError("RewardTrainConfig.slot_weight and session_weight are both 0: nothing trains the heads; "
                             "set session_weight=1.0 (and slot_weight=1.0 for examples with slot targets)")
        if self.max_seconds < 0:
            raise ValueError(f"RewardTrainConfig.max_seconds={self.max_seconds} must be >= 0 (0 = no budget)")
        if not isinstance(self.loss_weights, dict) or set(self.loss_weights) - set(HEADS):
            raise ValueError(f"RewardTrainConfig.loss_weights={self.loss_weights!r} must map some of "
                             f"{list(HEADS)} to weights")
        for k, v in self.loss_weights.items():
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not v >= 0:
                raise ValueError(f"RewardTrainConfig.loss_weights[{k!r}]={v!r} must be a number >= 0")


@dataclass
class RewardTrainResult:
    model: RewardModel
    history: list[dict]          # one dict per epoch: epoch, loss, valid_loss (when validated), elapsed_s
    best_epoch: int
    best_valid_loss: float
    train_s: float
    n_train: int
    n_valid: int


def head_losses(out: RewardOutput, targets: torch.Tensor, loss_weights: dict | None = None) -> tuple[torch.Tensor, dict]:
    """``(total, per-head)`` losses of predictions against targets ``[B, 4]`` (NaN = unknown, skipped)."""
    eps = 1e-6
    known = ~torch.isnan(targets)                                                     # [B, 4]
    y = torch.nan_to_num(targets, nan=0.0)
    p = out.rates.clamp(eps, 1 - eps)
    bce = -(y * torch.log(p) + (1 - y) * torch.log1p(-p))                            # [B, 4]
    sq = (out.rates - y) ** 2
    per = torch.where(torch.arange(len(HEADS), device=p.device)[None] == HEADS.index("watch"), sq, bce)
    total = per.new_zeros(())
    parts = {}
    for j, h in enumerate(HEADS):
        k = known[:, j]
        if bool(k.any()):
            lj = per[k, j].mean()
            parts[h] = float(lj.detach())
            w = 1.0 if loss_weights is None else float(loss_weights.get(h, 0.0))
            total = total + w * lj
    return total, parts


def slot_losses(out: RewardOutput, slot_targets: torch.Tensor, sessions: torch.Tensor,
                loss_weights: dict | None = None) -> tuple[torch.Tensor, dict]:
    """``(total, per-head)`` per-slot losses of ``out.slot_probs`` ``[B, K, 4]`` against ``slot_targets``
    ``[B, K, 4]`` (NaN = unknown, skipped) on the real slots of ``sessions`` ``[B, K]``: BCE for click, like,
    skip, squared error for watch; each head's mean over its known slots. 0 (with a graph) when none is known."""
    eps = 1e-6
    real = (sessions != EMPTY)[..., None]                                             # [B, K, 1]
    known = ~torch.isnan(slot_targets) & real                                         # [B, K, 4]
    y = torch.nan_to_num(slot_targets, nan=0.0)
    p = out.slot_probs.clamp(eps, 1 - eps)
    bce = -(y * torch.log(p) + (1 - y) * torch.log1p(-p))                            # [B, K, 4]
    sq = (out.slot_probs - y) ** 2
    is_watch = torch.arange(len(HEADS), device=p.device) == HEADS.index("watch")
    per = torch.where(is_watch, sq, bce)                                              # [B, K, 4]
    total = out.slot_probs.sum() * 0.0
    parts = {}
    for j, h in enumerate(HEADS):
        k = known[..., j]
        if bool(k.any()):
            lj = per[..., j][k].mean()
            parts[h] = float(lj.detach())
            w = 1.0 if loss_weights is None else float(loss_weights.get(h, 0.0))
            total = total + w * lj
    return total, parts


def observed_value(targets: torch.Tensor, value_w: torch.Tensor, slot_targets: torch.Tensor | None = None,
                   minutes: torch.Tensor | None = None) -> torch.Tensor:
    """The observed session value ``[B]`` of targets ``[B, 4]`` with the model's value weights ``[4]`` — the
    same combination the model's ``value`` makes of its rates; unknown targets count 0. Watch counts as
    click rate × watch fraction × the session's mean item length (``minutes`` ``[B, K]``, 0 on empty slots;
    None = 1 minute), or, where the session's slot labels are known (``slot_targets`` ``[B, K, 4]``), as
    the mean over its slots of clicked × watch fraction × that item's minutes."""
    y = torch.nan_to_num(targets, nan=0.0)
    watch = y[:, 0] * y[:, 2]                                                                  # [B]
    if minutes is not None:
        real = minutes > 0                                                                     # [B, K]
        n = real.sum(1).clamp(min=1)
        watch = watch * (minutes.sum(1) / n)
        if slot_targets is not None:
            st = torch.nan_to_num(slot_targets, nan=0.0)
            known = (~torch.isnan(slot_targets[..., 0])).any(1)                                # [B] labelled
            per_slot = (st[..., 0] * st[..., 2] * minutes).sum(1) / n                         # [B]
            watch = torch.where(known, per_slot, watch)
    terms = torch.stack([y[:, 0], y[:, 1], watch, y[:, 3]], dim=1)                              # [B, 4]
    return (terms * value_w).sum(1)


def ranking_loss(value: torch.Tensor, observed: torch.Tensor, groups: torch.Tensor,
                 margin: float = 0.0) -> tuple[torch.Tensor, int]:
    """Pairwise logistic loss within groups: mean of ``softplus(-(v_i - v_j))`` over the pairs of one group
    (``groups`` [B] int ids, e.g. users) with ``observed_i > observed_j + margin``; ``value`` / ``observed``
    [B]. Returns ``(loss, n_pairs)``; 0 (with a graph) when the batch has no such pair."""
    same = groups[:, None] == groups[None, :]                                         # [B, B]
    better = observed[:, None] > observed[None, :] + margin                           # [B, B]: i better than j
    pair = same & better
    n = int(pair.sum())
    if n == 0:
        return value.sum() * 0.0, 0
    diff = value[:, None] - value[None, :]                                            # [B, B]
    return torch.nn.functional.softplus(-diff[pair]).mean(), n


def _user_batches(groups: np.ndarray, batch_size: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Batches of example indices that keep each group's examples together: groups in a random order,
    each group's examples shuffled, cut into chunks of about ``batch_size``."""
    _, inv = np.unique(groups, return_inverse=True)
    order = np.concatenate([rng.permutation(np.flatnonzero(inv == g)) for g in rng.permutation(inv.max() + 1)]) \
        if len(groups) else np.zeros(0, np.int64)
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


def _tensors(model: RewardModel, ex: RewardExamples, device):
    """``(history, sessions [M, K], targets [M, 4], slot targets [M, K, 4] — all NaN when the examples have none)``."""
    hist = history_batch(ex.histories, model.cfg.max_history, model.cfg.n_time_buckets)
    slots = ex.slot_targets if ex.slot_targets is not None else \
        np.full((*ex.sessions.shape, len(HEADS)), np.nan, np.float32)
    return (hist.to(device), torch.as_tensor(ex.sessions, device=device),
            torch.as_tensor(ex.targets, device=device), torch.as_tensor(slots, device=device))


def _loss(out: RewardOutput, sess: torch.Tensor, tgt: torch.Tensor, slot_tgt: torch.Tensor,
          cfg: "RewardTrainConfig") -> torch.Tensor:
    """The head losses of a batch: ``session_weight`` · session term + ``slot_weight`` · slot term; the
    session term leaves out sessions with slot labels unless ``session_on_labelled`` (or ``slot_weight`` is 0)."""
    loss = out.value.sum() * 0.0
    if cfg.session_weight > 0:
        if cfg.slot_weight > 0 and not cfg.session_on_labelled:
            labelled = (~torch.isnan(slot_tgt[..., 0])).any(1)                            # [B]
            tgt = torch.where(labelled[:, None], torch.full_like(tgt, float("nan")), tgt)
        loss = loss + cfg.session_weight * head_losses(out, tgt, cfg.loss_weights)[0]
    if cfg.slot_weight > 0:
        loss = loss + cfg.slot_weight * slot_losses(out, slot_tgt, sess, cfg.loss_weights)[0]
    return loss


def _outputs(model: RewardModel, ex: RewardExamples, batch_size: int):
    """The model's :class:`RewardOutput` on ``ex``, batch by batch, in eval mode (restored after)."""
    device = next(model.parameters()).device
    was = model.training
    model.eval()
    try:
        for i in range(0, len(ex), batch_size):
            sub = ex.subset(np.arange(i, min(len(ex), i + batch_size)))
            hist = history_batch(sub.histories, model.cfg.max_history, model.cfg.n_time_buckets).to(device)
            yield model(hist, torch.as_tensor(sub.sessions, device=device))
    finally:
        model.train(was)


@torch.no_grad()
def predict(model: RewardModel, ex: RewardExamples, batch_size: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """``(rates [M, 4], value [M])`` of the model on examples (eval mode, no grad)."""
    rates, values = [], []
    for out in _outputs(model, ex, batch_size):
        rates.append(out.rates.float().cpu().numpy())
        values.append(out.value.float().cpu().numpy())
    if not rates:
        return np.zeros((0, len(HEADS)), np.float32), np.zeros(0, np.float32)
    return np.concatenate(rates), np.concatenate(values)


@torch.no_grad()
def predict_slots(model: RewardModel, ex: RewardExamples, batch_size: int = 1024) -> np.ndarray:
    """Per-slot probabilities ``[M, K, 4]`` of the model on examples (eval mode; padding slots meaningless)."""
    out = [o.slot_probs.float().cpu().numpy() for o in _outputs(model, ex, batch_size)]
    return np.concatenate(out) if out else np.zeros((0, ex.sessions.shape[1], len(HEADS)), np.float32)


@torch.no_grad()
def _eval_loss(model: RewardModel, tensors, batch_size: int, cfg: "RewardTrainConfig") -> float:
    model.eval()
    hist, sess, tgt, slot_tgt = tensors
    total, n = 0.0, 0
    for i in range(0, sess.shape[0], batch_size):
        sl = slice(i, i + batch_size)
        out = model(type(hist)(*(t[sl] for t in hist)), sess[sl])
        loss = _loss(out, sess[sl], tgt[sl], slot_tgt[sl], cfg)
        total += float(loss) * (min(sess.shape[0], i + batch_size) - i)
        n += min(sess.shape[0], i + batch_size) - i
    return total / max(n, 1)


def train_reward_model(examples: RewardExamples, model_cfg: RewardModelConfig, cfg: RewardTrainConfig = RewardTrainConfig(),
                       item_sids: np.ndarray | None = None, on_epoch=None,
                       item_length_ms: np.ndarray | None = None) -> RewardTrainResult:
    """Train a fresh :class:`RewardModel` on ``examples`` (early stopping on their newest ``valid_frac``);
    ``item_length_ms`` [N] (0 = unknown) goes into the model's value (:meth:`RewardModel.set_item_lengths`)."""
    if len(examples) < 2:
        raise ValueError(f"train_reward_model needs at least 2 examples, got {len(examples)}; "
                         "collect more served sessions with rewards")
    if examples.sessions.shape[1] > model_cfg.max_session:
        raise ValueError(f"examples have sessions of {examples.sessions.shape[1]} slots but "
                         f"RewardModelConfig.max_session={model_cfg.max_session}; raise max_session")
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    device = torch.device(cfg.device)
    model = RewardModel(model_cfg, item_sids).to(device)
    if item_length_ms is not None:
        model.set_item_lengths(item_length_ms)
    if cfg.valid_frac > 0 and len(examples) >= 10:
        train, valid = examples.split_by_time(cfg.valid_frac)
    else:
        train, valid = examples, None
    tr = _tensors(model, train, device)
    va = _tensors(model, valid, device) if valid is not None and len(valid) else None
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    best, best_state, best_epoch, bad = float("inf"), None, 0, 0
    history: list[dict] = []
    t0 = time.perf_counter()
    m = tr[1].shape[0]
    groups = np.unique(np.asarray(train.user_ids, dtype=object).astype(str), return_inverse=True)[1].reshape(-1)
    g_t = torch.as_tensor(groups, device=device)
    for epoch in range(1, cfg.epochs + 1):
        model.train()
        if cfg.rank_weight > 0:
            batches = [torch.as_tensor(b, device=device) for b in _user_batches(groups, cfg.batch_size, rng)]
        else:
            order = torch.as_tensor(rng.permutation(m), device=device)
            batches = [order[i:i + cfg.batch_size] for i in range(0, m, cfg.batch_size)]
        total, count = 0.0, 0
        for idx in batches:
            sess = tr[1].index_select(0, idx)
            out = model(tr[0].index_select(idx), sess)
            tgt = tr[2].index_select(0, idx)
            loss = _loss(out, sess, tgt, tr[3].index_select(0, idx), cfg)
            if cfg.rank_weight > 0:
                obs = observed_value(tgt, model.value_w, tr[3].index_select(0, idx),
                                     model.minutes(sess) * (sess != EMPTY))
                rl, _ = ranking_loss(out.value, obs, g_t.index_select(0, idx),
                                     cfg.rank_margin)
                loss = loss + cfg.rank_weight * rl
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
            total += float(loss.detach()) * len(idx)
            count += len(idx)
        rec = {"epoch": epoch, "loss": total / max(count, 1)}
        if va is not None:
            vl = _eval_loss(model, va, cfg.eval_batch_size, cfg)
            rec["valid_loss"] = vl
            if vl < best - 1e-6:
                best, best_epoch, bad = vl, epoch, 0
                best_state = copy.deepcopy(model.state_dict())
            else:
                bad += 1
        rec["elapsed_s"] = time.perf_counter() - t0
        history.append(rec)
        if on_epoch is not None:
            on_epoch(rec)
        if (va is not None and cfg.patience and bad >= cfg.patience) or \
                (cfg.max_seconds and rec["elapsed_s"] > cfg.max_seconds):
            break
    if best_state is not None:
        model.load_state_dict(best_state)
    else:
        best_epoch = len(history)
    model.eval()
    return RewardTrainResult(model, history, best_epoch, best, time.perf_counter() - t0, len(train),
                             0 if valid is None else len(valid))
