"""Training loop of the generator: next-token cross-entropy on SID tokens.

Pure torch (no files, no environment): data come in as arrays, checkpoints go
out through a callback the caller supplies (``on_epoch_end``), progress is a
tqdm bar on stderr (loss and ETA).

Recipe (what makes TIGER-style models work on small data):

* every engaged event of every user is an example (all prefixes), the target
  being the next ``session_len`` engaged items (:mod:`models.generator.sessions`); the
  first item carries weight 1 and later items ``later_item_weight`` — the first
  is what next-item evaluation asks for, the rest teach session structure;
* examples are batched by encoder *window*: the causal encoder reads a window
  of a user's events once and the decoder runs after every prefix of it
  (``GenerativeRecommender.forward_anchors``); ``batch_size`` counts examples;
* optionally (``GeneratorConfig.position_head``) every history position also
  predicts the next item's codes straight from its encoder state, as SASRec /
  HSTU train (``position_loss_weight``), and the decoder — most of a step's cost —
  may train on a random share ``decoder_frac`` of each batch's examples while the
  position head sees all of them (docs/decisions/026-personalised-generator.md);
* AdamW (Loshchilov & Hutter, 2019) with linear warmup and cosine decay,
  gradient-norm clipping, dropout;
* early stopping on validation NDCG@10 (each user's last engaged item,
  excluded from training targets), restoring the best epoch's weights;
* bf16 autocast on CUDA when ``amp`` is on (no loss scaling needed for bf16).

Data-parallel training (:class:`DataParallel`, driven by :mod:`actors.ray_train` through Ray Train):
worker ``rank`` of ``world_size`` trains on its shard of the users' examples, its steps go through a
DDP-wrapped :class:`AnchorStep`, only rank 0 validates, and every decision that could differ between
workers (end of an epoch, the time budget, early stopping, the budget-driven learning rate) is agreed
through one collective (``all_max``), so every worker runs the same number of steps. With the default
(one worker) the loop is exactly the single-process one.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from models.evaluation.budget import CLOCKS, Budget
from models.generator.model import GenerativeRecommender, GeneratorConfig
from models.generator.features import FlatEvents
from models.generator.sessions import SessionConfig, SessionExamples, build_sessions, split_last, window_batches


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings. ``epochs`` is an upper bound (early stopping)."""

    epochs: int = 40
    batch_size: int = 256
    lr: float = 2e-3
    weight_decay: float = 0.05
    warmup_frac: float = 0.05
    min_lr_frac: float = 0.05
    grad_clip: float = 1.0
    later_item_weight: float = 0.3
    position_loss_weight: float = 1.0  # weight of the every-position head's loss (models with position_head)
    decoder_frac: float = 1.0  # share of each batch's examples the decoder trains on (the position head sees all)
    item_loss_weight: float = 1.0  # weight of the item head's full-softmax next-item loss (models with item_head)
    patience: int = 4          # validation passes without improvement before stopping (0 = never stop)
    eval_every: int = 1        # epochs between validation passes
    val_metric: str = "ndcg10"  # "ndcg10" (beam search on validation users) or "loss"
    val_max_users: int = 2000  # validation users evaluated (a sample, for speed)
    val_beam: int = 20
    amp: bool = True           # bf16 autocast, only on CUDA
    device: str = "cpu"
    seed: int = 0
    max_steps: int = 0         # hard cap on optimizer steps (0 = none), for quick runs
    max_seconds: float = 0.0   # training budget in seconds (0 = none), checked every step
    budget_clock: str = "wall"  # what max_seconds counts: "wall" or "cpu" (this process's CPU time)
    progress: bool = True

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 1")
        if not self.lr > 0:
            raise ValueError(f"lr={self.lr} must be > 0, e.g. 1e-3")
        if not 0 <= self.warmup_frac < 1 or not 0 <= self.min_lr_frac <= 1:
            raise ValueError(f"warmup_frac={self.warmup_frac} must be in [0,1) and min_lr_frac="
                             f"{self.min_lr_frac} in [0,1]")
        if self.val_metric not in ("ndcg10", "loss"):
            raise ValueError(f"val_metric={self.val_metric!r}: use 'ndcg10' or 'loss'")
        if self.budget_clock not in CLOCKS:
            raise ValueError(f"budget_clock={self.budget_clock!r}: use one of {CLOCKS}")
        if not 0.0 < self.decoder_frac <= 1.0:
            raise ValueError(f"decoder_frac={self.decoder_frac} must be in (0, 1], e.g. 0.25")
        if self.item_loss_weight < 0:
            raise ValueError(f"item_loss_weight={self.item_loss_weight} must be >= 0 (0 = off)")
        if self.position_loss_weight < 0:
            raise ValueError(f"position_loss_weight={self.position_loss_weight} must be >= 0 (0 = off)")
        if self.patience < 0 or self.eval_every < 1 or self.max_steps < 0:
            raise ValueError("patience and max_steps must be >= 0 and eval_every >= 1")


@dataclass
class TrainReport:
    """What a training run did; stored with the model file as its metrics."""

    epochs_run: int = 0
    steps: int = 0
    best_epoch: int = -1
    best_val: float = float("nan")
    val_metric: str = "ndcg10"
    train_loss: list[float] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    val_ndcg10: list[float] = field(default_factory=list)
    val_hr10: list[float] = field(default_factory=list)
    n_train_examples: int = 0
    n_val_examples: int = 0
    n_params: int = 0
    train_s: float = 0.0
    train_cpu_s: float = 0.0   # CPU seconds of this process spent in the training loop (validation included)
    train_targets: int = 0     # next-item targets trained on (history positions with a next item), all epochs
    stopped_early: bool = False

    def as_dict(self) -> dict:
        return asdict(self)


class AnchorStep(torch.nn.Module):
    """``forward`` = ``model.forward_anchors``: the module a data-parallel wrapper wraps (DDP averages
    gradients only for work done through the wrapper's ``forward``)."""

    def __init__(self, model: GenerativeRecommender):
        super().__init__()
        self.model = model

    def forward(self, *args, **kwargs):
        return self.model.forward_anchors(*args, **kwargs)


@dataclass(frozen=True)
class DataParallel:
    """This process's place among data-parallel workers (default: alone).

    ``step``: the module the training steps call (a DDP wrapper of :class:`AnchorStep` of the model);
    ``all_max(values) -> values``: the element-wise maximum over all workers, a collective every worker
    calls equally often; ``on_epoch(report)``: progress, called on every worker after each epoch.
    Invariant: all workers run the same number of optimizer steps with the same learning rates.
    """

    rank: int = 0
    world_size: int = 1
    step: torch.nn.Module | None = None
    all_max: Callable[[list[float]], list[float]] | None = None
    on_epoch: Callable[[int, "TrainReport"], None] | None = None

    def __post_init__(self) -> None:
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank={self.rank} must be in [0, world_size={self.world_size})")
        if self.world_size > 1 and self.all_max is None:
            raise ValueError("world_size > 1 needs all_max (a collective), e.g. actors.ray_train.Worker.all_max")

    def agree(self, values: list[float]) -> list[float]:
        return values if self.world_size == 1 else self.all_max(values)


def shard_examples(ex: SessionExamples, rank: int, world_size: int) -> SessionExamples:
    """Worker ``rank``'s share of ``ex``: the examples of users ``u`` with ``u % world_size == rank`` (a
    user's examples stay together, so their shared encoder windows are computed on one worker)."""
    if world_size == 1:
        return ex
    user = np.searchsorted(ex.events.user_offsets, ex.anchors, side="right") - 1            # [M]
    return ex.subset(np.flatnonzero(user % world_size == rank))


def lr_factor(step: int, total: int, warmup: int, min_frac: float) -> float:
    """Linear warmup to 1, then cosine decay to ``min_frac`` at ``total``."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    t = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_frac + (1 - min_frac) * 0.5 * (1 + math.cos(math.pi * t))


def session_ntp_loss(out, tgt: torch.Tensor, tmask: torch.Tensor, later_item_weight: float, aux_weight: float,
                     position_weight: float = 0.0,
                     decode_idx: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(total loss, token CE) from a teacher-forced output. ``tgt`` [B, K, D], ``tmask`` [B, K].

    With ``out.position_logits`` (the every-position head, over all B examples), its next-item
    code CE is added with ``position_weight``; the decoder's logits are those of the examples
    ``decode_idx`` (all when None). The reported token CE is the decoder's alone."""
    full_tgt, full_mask = tgt, tmask
    if decode_idx is not None:
        tgt, tmask = tgt[decode_idx], tmask[decode_idx]
    b, k, D = tgt.shape
    logits = out.logits.float().reshape(b * k * D, -1)                        # [B*K*D, K_max]
    ce = F.cross_entropy(logits, tgt.reshape(-1), reduction="none").view(b, k, D)
    w = torch.full((k,), later_item_weight, device=ce.device)
    w[0] = 1.0
    wm = tmask.float() * w[None, :]                                           # [B, K]
    token_ce = (ce.sum(-1) * wm).sum() / (wm.sum() * D).clamp(min=1e-9)
    total = token_ce + out.aux_loss * aux_weight
    if position_weight and out.position_logits is not None:
        pl = out.position_logits.float()                                          # [B, D, K_max]
        nb = pl.shape[0]
        pce = F.cross_entropy(pl.reshape(nb * D, -1), full_tgt[:, 0].reshape(-1), reduction="none").view(nb, D)
        m0 = full_mask[:, 0].float()
        total = total + position_weight * (pce.sum(-1) * m0).sum() / (m0.sum() * D).clamp(min=1e-9)
    return total, token_ce.detach()


def item_head_loss(item_logits: torch.Tensor, target_item: torch.Tensor) -> torch.Tensor:
    """Full-softmax next-item cross-entropy of the item head (SASRec's loss, Kang & McAuley 2018, with
    the full softmax of Klenitskiy & Vasilev 2023). ``item_logits`` [N, I]; ``target_item`` [N], -1 = none."""
    keep = target_item >= 0
    ce = F.cross_entropy(item_logits.float(), target_item.clamp(min=0), reduction="none")
    return (ce * keep).sum() / keep.sum().clamp(min=1)


def session_loss(model: GenerativeRecommender, hist, tgt: torch.Tensor, tmask: torch.Tensor,
                 later_item_weight: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(total loss, token CE, aux) of a batch of separate histories. ``tgt`` [B, K, D], ``tmask`` [B, K]."""
    out = model(hist, tgt)
    loss, ce = session_ntp_loss(out, tgt, tmask, later_item_weight, model.cfg.moe_aux_weight)
    return loss, ce, out.aux_loss.detach()


@torch.no_grad()
def evaluate(model: GenerativeRecommender, valid: SessionExamples, item_sids: np.ndarray, cfg: TrainConfig,
             trie=None, exclude_seen: bool = True) -> dict[str, float]:
    """Validation loss (first item) and NDCG@10 / HR@10 by constrained beam search."""
    from models.decoding.constraint import SidConstraint
    from models.evaluation.generator_ranker import build_trie, live_mask, rank_encoded

    was = model.training
    model.eval()
    dev = next(model.parameters()).device
    mc = model.cfg
    n = len(valid)
    if n == 0:
        return {"loss": float("nan"), "ndcg10": float("nan"), "hr10": float("nan")}
    idx = np.arange(n)
    if cfg.val_max_users and n > cfg.val_max_users:
        idx = np.random.default_rng(cfg.seed + 1).choice(n, cfg.val_max_users, replace=False)
    n_items = len(item_sids)
    trie = trie if trie is not None else build_trie(item_sids, mc.level_sizes)
    constraint = SidConstraint.of(trie, dev)
    catalog = torch.from_numpy(np.asarray(item_sids)).to(dev) if mc.item_head else None   # the head's candidates' SIDs
    live = live_mask(trie, n_items, dev) if mc.item_head else None
    losses, ranks = [], []
    for s in range(0, len(idx), cfg.batch_size):
        bi = idx[s:s + cfg.batch_size]
        hist, tgt, tmask = valid.batch(bi, item_sids, mc.max_history, mc.n_time_buckets)
        hist, tgt, tmask = hist.to(dev), tgt[:, :1].to(dev), tmask[:, :1].to(dev)
        _, ce, _ = session_loss(model, hist, tgt, tmask, 0.0)
        losses.append(float(ce) * len(bi))
        if cfg.val_metric == "ndcg10":
            seen = _seen_from_history(valid, bi, n_items, dev) if exclude_seen else None
            # ranked as GeneratorRanker ranks (the item head, when there is one, over the beam and the catalog)
            top = rank_encoded(model, model.encode(hist), constraint, 10, cfg.val_beam, seen, catalog, live)
            target = valid.targets[bi, 0]
            hit = (top.cpu().numpy() == target[:, None])
            r = np.where(hit.any(1), hit.argmax(1) + 1, 0)
            ranks.append(r)
    model.train(was)
    if not ranks:
        return {"loss": sum(losses) / len(idx), "ndcg10": float("nan"), "hr10": float("nan")}
    r = np.concatenate(ranks)
    ndcg = float(np.where(r > 0, 1.0 / np.log2(np.maximum(r, 1) + 1), 0.0).mean())
    return {"loss": sum(losses) / len(idx), "ndcg10": ndcg, "hr10": float((r > 0).mean())}


def _seen_from_history(ex: SessionExamples, bi: np.ndarray, n_items: int, dev) -> torch.Tensor:
    """[B, n_items] bool: items in each example's history (everything before its anchor)."""
    seen = torch.zeros(len(bi), n_items, dtype=torch.bool)
    ev = ex.events
    for r, a in enumerate(ex.anchors[bi]):
        it = ev.items[ev.start[a]:a]
        it = it[it >= 0]
        if len(it):
            seen[r, torch.from_numpy(it)] = True
    return seen.to(dev)


def train_generator(train: SessionExamples, valid: SessionExamples | None, item_sids: np.ndarray,
                    gen_cfg: GeneratorConfig, cfg: TrainConfig = TrainConfig(),
                    on_epoch_end: Callable[[int, GenerativeRecommender, TrainReport], None] | None = None,
                    model: GenerativeRecommender | None = None, *,
                    parallel: DataParallel = DataParallel()) -> tuple[GenerativeRecommender, TrainReport]:
    """Train (or continue training ``model``) on ``train``; early-stop on ``valid``.

    ``item_sids`` [n_items, D]: the SID of every item index. Returns the model
    with the best validation weights restored, and a :class:`TrainReport`.
    ``on_epoch_end(epoch, model, report)`` is where the caller checkpoints.
    ``parallel``: this worker's place among data-parallel workers (see the module docstring); each
    worker passes all of ``train`` and trains on its shard (:func:`shard_examples`); rank 0 validates
    and its model and report are the result.
    """
    item_sids = np.asarray(item_sids, dtype=np.int64)
    if item_sids.ndim != 2 or item_sids.shape[1] != gen_cfg.sid_len:
        raise ValueError(f"item_sids shape {item_sids.shape} must be [n_items, D={gen_cfg.sid_len}]")
    lim = np.asarray(gen_cfg.level_sizes)
    if len(item_sids) and ((item_sids < 0) | (item_sids >= lim[None, :])).any():
        raise ValueError(f"item_sids has codes outside level_sizes={gen_cfg.level_sizes}; "
                         "build the GeneratorConfig from the tokenizer's sid_level_sizes")
    if len(train) == 0:
        raise ValueError("no training examples: the data set has no engaged events with known items")
    dp = parallel
    n_all = len(train)
    train = shard_examples(train, dp.rank, dp.world_size)
    if dp.rank != 0:
        valid = None                       # rank 0 validates and decides; the others follow (dp.agree)
    torch.manual_seed(cfg.seed + dp.rank)
    rng = np.random.default_rng(cfg.seed + dp.rank)
    dev = torch.device(cfg.device)
    model = model if model is not None else GenerativeRecommender(gen_cfg)
    model.to(dev).train()
    step_fn = dp.step if dp.step is not None else model.forward_anchors
    # the item head scores the whole catalog for every example (full softmax, as SASRec trains)
    catalog = torch.from_numpy(item_sids).to(dev) if gen_cfg.item_head and cfg.item_loss_weight else None
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2 and "emb" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.dim() >= 2 and "emb" not in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr, betas=(0.9, 0.98))
    steps_per_epoch = math.ceil(n_all / (cfg.batch_size * dp.world_size))
    total = steps_per_epoch * cfg.epochs
    if cfg.max_steps:
        total = min(total, cfg.max_steps)
    warmup = int(cfg.warmup_frac * total)
    use_amp = cfg.amp and dev.type == "cuda"
    report = TrainReport(val_metric=cfg.val_metric, n_train_examples=len(train),
                         n_val_examples=len(valid) if valid is not None else 0, n_params=model.num_parameters())
    best_state, best, bad = None, None, 0
    t0, cpu0 = time.time(), time.process_time()
    budget = Budget(cfg.max_seconds, cfg.budget_clock)
    step = 0
    bar = None
    if cfg.progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, desc="train generator", unit="step", dynamic_ncols=True, leave=False)
    try:
        for epoch in range(cfg.epochs):
            run_loss, run_n = 0.0, 0
            batches = window_batches(train, item_sids, gen_cfg.max_history, gen_cfg.n_time_buckets,
                                     cfg.batch_size, rng)
            while True:
                wb = next(batches, None)
                # out of batches, steps or time (validate what we have and stop); with a time budget the
                # schedule follows whichever runs out first: steps or seconds. Workers agree on both.
                done = wb is None or bool(cfg.max_steps and step >= cfg.max_steps) or budget.exceeded()
                eff = step if not cfg.max_seconds else max(step, int(total * budget.fraction()))
                done, eff = dp.agree([float(done), float(eff)])
                if done:
                    break
                eff = int(eff)
                for g in opt.param_groups:
                    g["lr"] = cfg.lr * lr_factor(eff, total, warmup, cfg.min_lr_frac)
                n_ex = len(wb.anchor_row)
                sel = None
                if cfg.decoder_frac < 1.0:  # decode a random subset; the position head still sees every example
                    m = max(1, int(round(cfg.decoder_frac * n_ex)))
                    sel = torch.from_numpy(np.sort(rng.choice(n_ex, m, replace=False))).to(dev)
                with torch.autocast("cuda", dtype=torch.bfloat16, enabled=use_amp):
                    out = step_fn(wb.window.to(dev), wb.anchor_row.to(dev), wb.anchor_len.to(dev),
                                  wb.targets.to(dev), decode_idx=sel, item_sids=catalog)
                    loss, ce = session_ntp_loss(out, wb.targets.to(dev), wb.target_mask.to(dev), cfg.later_item_weight,
                                                gen_cfg.moe_aux_weight, cfg.position_loss_weight, decode_idx=sel)
                    if out.item_logits is not None:
                        loss = loss + cfg.item_loss_weight * item_head_loss(out.item_logits, wb.target_items[:, 0].to(dev))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                if cfg.grad_clip > 0:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                opt.step()
                step += 1
                seen_tm = wb.target_mask if (sel is None or out.position_logits is not None) else wb.target_mask[sel.cpu()]
                report.train_targets += int(seen_tm[:, 0].sum())
                run_loss += float(ce)
                run_n += 1
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(epoch=epoch + 1, loss=f"{run_loss / run_n:.3f}")
            if run_n == 0:                 # the time budget ran out before this epoch took a step (on every worker:
                break                      # they agree on each step)
            report.train_loss.append(run_loss / run_n)
            report.epochs_run = epoch + 1
            report.steps = step
            stop = bool(cfg.max_steps and step >= cfg.max_steps)
            if budget.exceeded():
                stop = True
            if valid is not None and len(valid) and ((epoch + 1) % cfg.eval_every == 0 or stop
                                                     or epoch + 1 == cfg.epochs):
                with torch.autocast("cuda", dtype=torch.bfloat16, enabled=use_amp):
                    m = evaluate(model, valid, item_sids, cfg)
                report.val_loss.append(m["loss"])
                report.val_ndcg10.append(m["ndcg10"])
                report.val_hr10.append(m["hr10"])
                score = m["ndcg10"] if cfg.val_metric == "ndcg10" else -m["loss"]
                if bar is not None:
                    bar.set_postfix(epoch=epoch + 1, loss=f"{report.train_loss[-1]:.3f}",
                                    val_ndcg10=f"{m['ndcg10']:.4f}", val_loss=f"{m['loss']:.3f}")
                if best is None or score > best:
                    best, bad = score, 0
                    report.best_epoch = epoch + 1
                    report.best_val = m[cfg.val_metric]
                    best_state = copy.deepcopy(model.state_dict())
                else:
                    bad += 1
                    if cfg.patience and bad >= cfg.patience:
                        report.stopped_early = True
                        stop = True
            report.train_s = time.time() - t0
            report.train_cpu_s = time.process_time() - cpu0
            stop = bool(dp.agree([float(stop)])[0])
            if on_epoch_end is not None:
                on_epoch_end(epoch + 1, model, report)
            if dp.on_epoch is not None:
                dp.on_epoch(epoch + 1, report)
            if stop:
                break
    finally:
        if bar is not None:
            bar.close()
    if best_state is not None:
        model.load_state_dict(best_state)
    report.train_s = time.time() - t0
    report.train_cpu_s = time.process_time() - cpu0
    model.eval()
    return model, report


def fit_inputs(items: Sequence[np.ndarray], item_sids: np.ndarray, gen_cfg: GeneratorConfig,
               cfg: TrainConfig = TrainConfig(), *, types: Sequence[np.ndarray] | None = None,
               ts: Sequence[np.ndarray] | None = None, validate: bool = True, item_emb: np.ndarray | None = None
               ) -> tuple[SessionExamples, SessionExamples | None, GenerativeRecommender | None]:
    """What :func:`fit_generator` hands :func:`train_generator`: (train examples, validation examples or
    None, the initial model or None for a random one) — so that a data-parallel run can prepare them
    once and train them on its workers."""
    ev = FlatEvents.from_sequences(items, types, ts, n_items=len(item_sids))  # no types: every event a click
    scfg = SessionConfig(session_len=gen_cfg.session_len)
    if validate:
        train, valid = split_last(ev, scfg)
    else:
        train, valid = build_sessions(ev, scfg), None
    model = None
    if item_emb is not None:
        from models.generator.code_init import code_embeddings_from_items

        torch.manual_seed(cfg.seed)
        model = GenerativeRecommender(gen_cfg)
        table = code_embeddings_from_items(item_emb, item_sids, gen_cfg.level_sizes, gen_cfg.d_model)
        with torch.no_grad():
            model.code_emb.weight.copy_(torch.from_numpy(table))
    return train, valid, model


def fit_generator(items: Sequence[np.ndarray], item_sids: np.ndarray, gen_cfg: GeneratorConfig,
                  cfg: TrainConfig = TrainConfig(), *, types: Sequence[np.ndarray] | None = None,
                  ts: Sequence[np.ndarray] | None = None, validate: bool = True,
                  on_epoch_end=None, item_emb: np.ndarray | None = None
                  ) -> tuple[GenerativeRecommender, TrainReport]:
    """Train from per-user sequences (oldest first) of item indices — the easy entry point.

    ``types`` are EVENT_TYPES indices (default: every event a 'click'); ``ts``
    ms event times (optional). With ``validate``, each user's last engaged item
    is held out for early stopping (pass the *training* part of a leave-one-out
    split, so the evaluation's own validation / test items stay unseen).
    ``item_emb`` [n_items, E]: the embeddings the SIDs were fitted on; when given, the
    code embeddings start from them (:mod:`models.generator.code_init`) instead of at random.
    """
    train, valid, model = fit_inputs(items, item_sids, gen_cfg, cfg, types=types, ts=ts, validate=validate,
                                     item_emb=item_emb)
    return train_generator(train, valid, item_sids, gen_cfg, cfg, on_epoch_end=on_epoch_end, model=model)
