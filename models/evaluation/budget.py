"""A training budget in seconds on a wall clock or on this process's CPU clock.

Why a CPU clock: the development and CI machines are small and shared, so a
wall-clock budget gives a model trained while something else ran fewer
optimizer steps than the same model trained on a quiet machine, and a
comparison of two models (generator vs SASRec) trained one after the other
then measures the neighbours as much as the models. ``time.process_time``
counts only the CPU this process received (all its threads), so equal CPU
budgets are equal compute whatever else the machine was doing. Wall clock
stays the default: it is what an operator waiting for a run cares about.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

CLOCKS = ("wall", "cpu")


@dataclass
class Budget:
    """``seconds`` of training on ``clock`` ("wall" or "cpu"), counted from construction; 0 = unlimited."""

    seconds: float = 0.0
    clock: str = "wall"
    _t0: float = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.clock not in CLOCKS:
            raise ValueError(f"budget clock {self.clock!r}: use one of {CLOCKS}")
        if self.seconds < 0:
            raise ValueError(f"budget seconds={self.seconds} must be >= 0 (0 = no budget)")
        self._t0 = self._now()

    def _now(self) -> float:
        return time.perf_counter() if self.clock == "wall" else time.process_time()

    def elapsed(self) -> float:
        """Seconds used so far on this budget's clock."""
        return self._now() - self._t0

    def fraction(self) -> float:
        """Share of the budget used (0 when there is no budget)."""
        return self.elapsed() / self.seconds if self.seconds else 0.0

    def exceeded(self) -> bool:
        return bool(self.seconds) and self.elapsed() > self.seconds


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask, else ``os.cpu_count()``)."""
    import os

    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def default_threads(cpus: int | None = None) -> int:
    """Torch intra-op threads that fit the machine: half its usable CPUs, at least 1, at most 8.

    Why not torch's default (one per core): on small or shared machines the
    threads of one process spin against each other and against neighbours (time
    in the kernel, issue 17), and on a CPU-time budget every spinning second is
    training lost. The small
    models here gain little from more than a few threads per process.
    """
    n = usable_cpus() if cpus is None else int(cpus)
    return max(1, min(8, n // 2))


def fit_threads(threads: int = 0) -> int:
    """Set torch's intra-op threads (``threads``, or :func:`default_threads` when 0) and one
    inter-op thread. Returns the intra-op count. Call before any torch work (inter-op threads
    can only be set once per process; later calls leave them as they are)."""
    import torch

    n = int(threads) if threads and threads > 0 else default_threads()
    torch.set_num_threads(n)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # already set, or parallel work already started in this process
        pass
    return n
