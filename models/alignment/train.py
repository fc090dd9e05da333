"""The alignment training step and loop: L = L_NTP + λ·L_DPO (OneRec IPA), or + λ·L_GBPO (feedback).

With ``chosen_ntp_weight`` μ > 0 the pairs' term is λ·L_DPO + μ·NLL(chosen) (RPO, Pang et al. 2024,
"Iterative Reasoning Preference Optimization"): the chosen session's likelihood is held up while DPO
widens the margin.

With ``ntp_kl_weight`` κ > 0 the loss adds κ·KL(π_parent ‖ π_θ) per code on the NTP batch: a frozen copy
of the parent (taken when training starts) reads the same teacher-forced histories, and the forward KL
(mass-covering) penalises the policy for dropping codes the parent gives mass to on real data, which is
what its NDCG@10 on unseen users rests on.

OneRec (Deng et al. 2025) trains the next model M_{t+1}, initialised from M_t, on next-token loss over
fresh data plus λ·DPO on the chosen / rejected sessions of sampled users, with M_t frozen as the
reference. The reference's log-probabilities are computed once, before training (the reference never
changes), so a worker holds only the policy. One step runs ONE teacher-forced forward over the NTP
examples and the pairs' sessions stacked together (one forward per backward, as data-parallel training
wants). Dropout is off throughout: the DPO log-ratios then compare π_θ with π_ref deterministically
(at step 0 every ratio is exactly 0).

:func:`train_alignment` is the loop every worker runs (Ray Train's ``train_loop_per_worker`` in
:mod:`actors.aligner`, or in-process): worker ``rank`` of ``world_size`` draws its batches from its own
shard of the pairs and the NTP examples.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Callable

import numpy as np
import torch

from models.alignment.config import AlignConfig
from models.alignment.dpo import dpo_loss, gbpo_loss
from models.alignment.logprob import token_kl, token_logprobs
from models.generator.model import HistoryBatch
from models.generator.sessions import SessionExamples
from models.generator.training import session_ntp_loss


@dataclass
class PairData:
    """P preference pairs with their reference log-probabilities (from the frozen parent)."""

    hist: HistoryBatch        # [P, S(, D)] the users' histories
    chosen: torch.Tensor      # [P, K, D] codes of the chosen sessions
    chosen_mask: torch.Tensor  # [P, K] bool
    rejected: torch.Tensor    # [P, K, D]
    rejected_mask: torch.Tensor  # [P, K] bool
    ref_chosen: torch.Tensor  # [P] log π_ref(chosen)
    ref_rejected: torch.Tensor  # [P] log π_ref(rejected)

    def __len__(self) -> int:
        return self.chosen.shape[0]

    def take(self, idx: torch.Tensor) -> "PairData":
        return PairData(HistoryBatch(*(t[idx] for t in self.hist)), self.chosen[idx], self.chosen_mask[idx],
                        self.rejected[idx], self.rejected_mask[idx], self.ref_chosen[idx], self.ref_rejected[idx])


@dataclass
class FeedbackData:
    """M served sessions with ±1 advantages and the serving policy's per-code log-probabilities."""

    hist: HistoryBatch        # [M, S(, D)]
    sids: torch.Tensor        # [M, K, D]
    mask: torch.Tensor        # [M, K] bool
    advantage: torch.Tensor   # [M] in {-1, 0, +1}
    old_logp: torch.Tensor    # [M, K, D] log π_old of each code

    def __len__(self) -> int:
        return self.sids.shape[0]

    def take(self, idx: torch.Tensor) -> "FeedbackData":
        return FeedbackData(HistoryBatch(*(t[idx] for t in self.hist)), self.sids[idx], self.mask[idx],
                            self.advantage[idx], self.old_logp[idx])


@dataclass
class AlignData:
    """Everything a worker trains on: fresh NTP examples and the round's pairs or feedback."""

    ntp: SessionExamples
    item_sids: np.ndarray           # [n_items, D]
    pairs: PairData | None = None
    feedback: FeedbackData | None = None


def _cat_hist(hs: list[HistoryBatch]) -> HistoryBatch:
    s = max(h.sids.shape[1] for h in hs)

    def pad(t: torch.Tensor, value) -> torch.Tensor:   # left-pad the event axis to s
        extra = s - t.shape[1]
        if not extra:
            return t
        shape = (t.shape[0], extra) + tuple(t.shape[2:])
        return torch.cat([t.new_full(shape, value), t], 1)

    return HistoryBatch(*(torch.cat([pad(getattr(h, f), v) for h in hs], 0)
                          for f, v in (("sids", 0), ("event_type", 0), ("time_bucket", 0), ("mask", False))))


def align_step(model, core, opt: torch.optim.Optimizer, ntp: tuple, cfg: AlignConfig,
               pairs: PairData | None = None, feedback: FeedbackData | None = None,
               ntp_ref_logits: torch.Tensor | None = None) -> dict[str, float]:
    """One optimizer step of L_NTP + λ·(L_DPO or L_GBPO) (+ κ·KL(parent ‖ policy) on the NTP batch when
    ``ntp_ref_logits``, the parent's teacher-forced logits [B, K*D, K_max] on it, are given). ``model`` is
    what is called (may be DDP), ``core`` the :class:`GenerativeRecommender` inside it.
    ``ntp`` = (hist, tgt [B, K, D], tmask [B, K])."""
    hist, tgt, tmask = ntp
    parts = [(hist, tgt, tmask)]
    if pairs is not None:
        parts += [(pairs.hist, pairs.chosen, pairs.chosen_mask), (pairs.hist, pairs.rejected, pairs.rejected_mask)]
    if feedback is not None:
        parts.append((feedback.hist, feedback.sids, feedback.mask))
    sizes = [p[1].shape[0] for p in parts]
    all_tgt = torch.cat([torch.where(p[2][..., None], p[1], torch.zeros_like(p[1])) for p in parts], 0)
    out = model(_cat_hist([p[0] for p in parts]), all_tgt)                       # logits [ΣB, K*D, K_max]
    chunks = list(torch.split(out.logits, sizes, 0))
    ntp_out = SimpleNamespace(logits=chunks[0], aux_loss=out.aux_loss, position_logits=None)
    loss, ce = session_ntp_loss(ntp_out, tgt, tmask, cfg.later_item_weight, core.cfg.moe_aux_weight)
    m: dict[str, float] = {"ntp_loss": float(ce)}
    if ntp_ref_logits is not None and cfg.ntp_kl_weight > 0:
        # per code, the NTP term's scale: KL(parent || policy) = token_kl with the roles swapped
        n_codes = (tmask.sum() * tgt.shape[-1]).clamp(min=1)
        kl = token_kl(ntp_ref_logits, chunks[0], tmask, tgt.shape[-1]).sum() / n_codes
        loss = loss + cfg.ntp_kl_weight * kl
        m["ntp_kl"] = float(kl.detach())
    if pairs is not None:
        lp_c = (token_logprobs(chunks[1], all_tgt[sizes[0]:sizes[0] + sizes[1]]).sum(-1) * pairs.chosen_mask).sum(-1)
        lo = sizes[0] + sizes[1]
        lp_r = (token_logprobs(chunks[2], all_tgt[lo:lo + sizes[2]]).sum(-1) * pairs.rejected_mask).sum(-1)
        d = dpo_loss(lp_c, lp_r, pairs.ref_chosen, pairs.ref_rejected, cfg.beta)
        loss = loss + cfg.dpo_weight * d.loss
        if cfg.chosen_ntp_weight > 0:
            # mean NLL per code of the chosen session (RPO): same scale as the NTP term
            n_codes = (pairs.chosen_mask.sum(-1) * pairs.chosen.shape[-1]).clamp(min=1)
            c_nll = (-lp_c / n_codes).mean()
            loss = loss + cfg.chosen_ntp_weight * c_nll
            m["chosen_nll"] = float(c_nll.detach())
        m.update(dpo_loss=float(d.loss.detach()), reward_margin=float(d.reward_margin), pair_accuracy=float(d.accuracy),
                 chosen_reward=float(d.chosen_reward), rejected_reward=float(d.rejected_reward))
    if feedback is not None:
        lo = sum(sizes[:-1])
        lp = token_logprobs(chunks[-1], all_tgt[lo:])                             # [M, K, D]
        b = lp.shape[0]
        tok_mask = feedback.mask[..., None].expand_as(lp).reshape(b, -1)
        g = gbpo_loss(lp.reshape(b, -1), feedback.old_logp.reshape(b, -1), feedback.advantage, tok_mask)
        loss = loss + cfg.dpo_weight * g
        m["feedback_loss"] = float(g.detach())
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if cfg.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
    opt.step()
    m["loss"] = float(loss.detach())
    return m


def make_optimizer(model, cfg: AlignConfig) -> torch.optim.Optimizer:
    """Adam at ``cfg.lr`` (OneRec's optimiser), no weight decay: a short round should not shrink weights."""
    return torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=(0.9, 0.98), weight_decay=0.0)


def train_alignment(model, core, data: AlignData, cfg: AlignConfig, *, rank: int = 0, world_size: int = 1,
                    device: torch.device | str = "cpu",
                    on_step: Callable[[int, dict], None] | None = None) -> list[dict[str, float]]:
    """``cfg.steps`` steps of :func:`align_step` on this worker's shard; returns each step's metrics.

    ``model`` / ``core`` as in :func:`align_step` (the same module when not wrapped). Worker ``rank``
    uses pairs / sessions / NTP examples ``rank::world_size``; batches are drawn with replacement-free
    shuffles seeded by ``cfg.seed`` and the rank, so a run is reproducible.
    """
    if not 0 <= rank < world_size:
        raise ValueError(f"rank={rank} must be in [0, world_size={world_size})")
    dev = torch.device(device)
    torch.manual_seed(cfg.seed + rank)
    rng = np.random.default_rng([cfg.seed, rank])
    core.eval()                                     # dropout off (see module docstring)
    opt = make_optimizer(model, cfg)
    mc = core.cfg
    ntp_idx = np.arange(rank, len(data.ntp), world_size)
    if not len(ntp_idx):
        raise ValueError("no NTP examples on this worker: give the round fresh data (SessionExamples)")
    ref = None
    if cfg.ntp_kl_weight > 0:                       # the parent, frozen before the first step
        ref = copy.deepcopy(core).eval().requires_grad_(False)
    pair_idx = np.arange(rank, len(data.pairs), world_size) if data.pairs is not None else None
    fb_idx = np.arange(rank, len(data.feedback), world_size) if data.feedback is not None else None
    history = []

    def draw(idx: np.ndarray, n: int, stream: list) -> np.ndarray:
        out = []
        while sum(len(x) for x in out) < min(n, len(idx)):
            if not stream or not len(stream[0]):
                stream[:] = [rng.permutation(idx)]
            take = min(n - sum(len(x) for x in out), len(stream[0]))
            out.append(stream[0][:take])
            stream[0] = stream[0][take:]
        return np.concatenate(out)

    s_ntp, s_pair, s_fb = [], [], []
    for step in range(cfg.steps):
        bi = draw(ntp_idx, cfg.ntp_batch, s_ntp)
        hist, tgt, tmask = data.ntp.batch(bi, data.item_sids, mc.max_history, mc.n_time_buckets)
        pb = fb = None
        if pair_idx is not None and len(pair_idx):
            pb = data.pairs.take(torch.from_numpy(draw(pair_idx, cfg.pair_batch, s_pair)))
            pb = PairData(pb.hist.to(dev), *(t.to(dev) for t in (pb.chosen, pb.chosen_mask, pb.rejected,
                                                                  pb.rejected_mask, pb.ref_chosen, pb.ref_rejected)))
        if fb_idx is not None and len(fb_idx):
            fb = data.feedback.take(torch.from_numpy(draw(fb_idx, cfg.pair_batch, s_fb)))
            fb = FeedbackData(fb.hist.to(dev), *(t.to(dev) for t in (fb.sids, fb.mask, fb.advantage, fb.old_logp)))
        hist, tgt, tmask = hist.to(dev), tgt.to(dev), tmask.to(dev)
        ref_logits = None
        if ref is not None:
            with torch.no_grad():
                ref_logits = ref(hist, torch.where(tmask[..., None], tgt, torch.zeros_like(tgt))).logits
        m = align_step(model, core, opt, (hist, tgt, tmask), cfg, pb, fb, ref_logits)
        history.append(m)
        if on_step is not None:
            on_step(step, m)
    return history
