"""Start-up stages and their elapsed times: what ``genrec serve`` and a replica spend their start-up on."""

from __future__ import annotations

import sys
import time
from contextlib import contextmanager


class StartupLog:
    """Records ``(stage, seconds)``; with ``echo`` also prints each stage as it ends, with the time since start."""

    def __init__(self, echo: bool = False, out=None):
        self.t0 = time.perf_counter()
        self.stages: list[tuple[str, float]] = []
        self.echo, self.out = echo, out

    @contextmanager
    def stage(self, name: str):
        t = time.perf_counter()
        yield
        self.add(name, time.perf_counter() - t)

    def add(self, name: str, seconds: float) -> None:
        self.stages.append((name, round(seconds, 3)))
        if self.echo:
            print(f"[{time.perf_counter() - self.t0:5.1f} s] {name}: {seconds:.1f} s", file=self.out or sys.stdout,
                  flush=True)

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0
