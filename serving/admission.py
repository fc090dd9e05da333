"""How long a rejected client is told to wait: an adaptive, jittered ``Retry-After``.

Why: on overload the ingress answers 503 at once instead of queueing (:mod:`serving.app`), but a
fixed ``Retry-After: 1`` brings every rejected client back together one second later, and the
admitted requests then queue behind that herd.

What: the ingress counts admitted and rejected ``/recommend`` calls per window (0.5 s). At each
window's end the base delay moves towards the value at which clients come back at about the rate
the server admits them: ``base ← clamp(base · sqrt(rejected / admitted), min_s, max_s)`` (the square
root damps the step); within a window the ratio so far can only raise it, so a first burst is already
spread. Each 503 carries a uniform integer in ``[base, 2·base]`` seconds ("full jitter": Brooker,
"Exponential Backoff And Jitter", AWS Architecture Blog, 2015); without overload the base decays to
``min_s``.

Sub-second spread (``spread_s``): whole-second jitter keeps the phase of a herd (clients rejected in
the same instant come back at that instant plus whole seconds), so each rejection is also answered
after a uniform random delay in ``[0, spread_s)`` (:meth:`AdaptiveRetryAfter.answer_delay`): a timer
on the event loop, decided after admission, so no admitted request waits for it.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass


@dataclass(frozen=True)
class RetryAfterConfig:
    """``min_s``/``max_s``: bounds of the base delay (seconds, integers on the wire); ``window_s``: update period;
    ``spread_s``: a rejection is answered after a uniform random delay in ``[0, spread_s)`` (breaks herds)."""

    min_s: int = 1
    max_s: int = 30
    window_s: float = 0.5
    jitter: bool = True
    spread_s: float = 1.0

    def __post_init__(self) -> None:
        if not 0 <= self.spread_s <= 10:
            raise ValueError(f"RetryAfterConfig.spread_s={self.spread_s} must be in [0, 10] seconds "
                             "(0: answer rejections at once)")
        if not 1 <= self.min_s <= self.max_s:
            raise ValueError(f"RetryAfterConfig: need 1 <= min_s ({self.min_s}) <= max_s ({self.max_s}); "
                             "Retry-After is a whole number of seconds")
        if self.window_s <= 0:
            raise ValueError(f"RetryAfterConfig.window_s={self.window_s} must be > 0")


class AdaptiveRetryAfter:
    """Counts admissions/rejections and hands out ``Retry-After`` values (single event loop; no lock)."""

    def __init__(self, config: RetryAfterConfig = RetryAfterConfig(), seed: int | None = None,
                 clock=time.monotonic):
        self.cfg = config
        self.base = float(config.min_s)
        self._clock = clock
        self._t = clock()
        self._admitted = 0
        self._rejected = 0
        self._rng = random.Random(seed)

    def _tick(self) -> None:
        now = self._clock()
        windows = int((now - self._t) / self.cfg.window_s)
        if windows < 1:
            return
        # a window without rejections at least halves the base (sqrt(1/4)), and so does every window that
        # passed without any call at all: the delay decays when the overload is over, traffic or not
        ratio = (self._rejected + 1) / (self._admitted + 1) if self._rejected else min(0.25, 1 / (self._admitted + 1))
        self.base = min(float(self.cfg.max_s), max(float(self.cfg.min_s), self.base * math.sqrt(ratio)))
        self.base = max(float(self.cfg.min_s), self.base * 0.5 ** (windows - 1))
        self._t, self._admitted, self._rejected = now, 0, 0

    def admitted(self) -> None:
        self._admitted += 1
        self._tick()

    def rejected(self) -> int:
        """Count one rejection; the ``Retry-After`` seconds to send with it."""
        self._rejected += 1
        self._tick()
        # within a window, a burst already raises the delay (never lowers it before the window ends)
        now = min(float(self.cfg.max_s), self.base * math.sqrt((self._rejected + 1) / (self._admitted + 1)))
        lo = max(self.cfg.min_s, int(round(max(self.base, now))))
        if not self.cfg.jitter:
            return lo
        hi = min(2 * lo, self.cfg.max_s)
        return self._rng.randint(min(lo, max(self.cfg.min_s, hi // 2)), hi)  # near max_s: [max_s/2, max_s]

    def answer_delay(self) -> float:
        """Seconds to hold a rejection before answering it: uniform in ``[0, spread_s)`` (see the module doc)."""
        return self._rng.random() * self.cfg.spread_s if self.cfg.spread_s > 0 else 0.0
