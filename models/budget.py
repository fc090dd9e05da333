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
