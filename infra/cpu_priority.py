"""CPU priority of genrec's processes: the stream in front, batch jobs behind — across sessions too.

A streaming process (sequence shard, indexer, joiner, archive) keeps nice 0
(``ShardConfig.niceness``); a batch job beside it (training, alignment,
evaluation, a benchmark neighbour) should stay out of its way. ``nice`` alone
does not do that on a Linux host with **session autogroups**
(``/proc/sys/kernel/sched_autogroup_enabled`` = 1, the default of most
distributions): the scheduler first shares the CPU equally between sessions,
and nice only orders the threads *inside* one session. A ``nice -n 15`` job
started from another shell, cron or service therefore gets as much CPU as the
whole streaming session, and the stream's micro-batches queue behind it
(decision 033). The autogroup's own nice (``/proc/<pid>/autogroup``, see
``man 7 sched``) is the knob that works across sessions; systemd units and
cgroups have their own (``CPUWeight=idle`` / ``cpu.idle``, decision 033).

:func:`make_background` is what a batch job calls first thing: nice for its
session's other threads, ``SCHED_BATCH`` (no wake-up preemption of others),
and its autogroup's nice so the whole job yields to other sessions.
:func:`priority_report` says where a process stands (for ``status()`` rows
and diagnosis).
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

AUTOGROUP_SWITCH = Path("/proc/sys/kernel/sched_autogroup_enabled")


@dataclass(frozen=True)
class BackgroundConfig:
    """How far a batch job steps back.

    ``niceness``: the process's nice value (0..19; 15 is Ray's default for its
    workers). ``autogroup_niceness``: the nice value of the job's session
    autogroup (0..19; None leaves it), which is what orders it against other
    sessions. ``batch_policy``: switch to ``SCHED_BATCH`` (CPU-bound, never
    preempts others on wake-up).
    """

    niceness: int = 15
    autogroup_niceness: int | None = 19
    batch_policy: bool = True

    def __post_init__(self) -> None:
        if not 0 <= self.niceness <= 19:
            raise ValueError(f"BackgroundConfig.niceness={self.niceness} must be in [0, 19] "
                             "(a background job only lowers its priority)")
        if self.autogroup_niceness is not None and not 0 <= self.autogroup_niceness <= 19:
            raise ValueError(f"BackgroundConfig.autogroup_niceness={self.autogroup_niceness} must be in "
                             "[0, 19] or None (leave the session's autogroup alone)")


def autogroup_enabled() -> bool:
    """True when the kernel shares CPU between sessions first (then nice alone does not cross them)."""
    try:
        return AUTOGROUP_SWITCH.read_text().strip() == "1"
    except OSError:
        return False


def parse_autogroup(text: str) -> int | None:
    """The nice value in a ``/proc/<pid>/autogroup`` text ("/autogroup-520 nice 0"), None if it holds none.

    Containers and kernels without autogroups give an empty file or other words; that is "none", not an error.
    """
    m = re.search(r"\bnice\s+(-?\d+)", text)
    return int(m.group(1)) if m else None


def autogroup_niceness(pid: int | str = "self") -> int | None:
    """The nice value of a process's session autogroup, or None where there is none."""
    try:
        text = Path(f"/proc/{pid}/autogroup").read_text()
    except OSError:
        return None
    return parse_autogroup(text)


def set_autogroup_niceness(value: int) -> bool:
    """Set this process's session autogroup nice (raising it needs no privilege); False if impossible.

    It applies to every process of the session (the shell a job was started from and its children).
    """
    try:
        Path("/proc/self/autogroup").write_text(f"{value}\n")
        return True
    except OSError as e:
        log.debug("cannot set the autogroup nice to %s: %s", value, e)
        return False


def make_background(niceness: int = 15, config: BackgroundConfig | None = None) -> dict:
    """Make this process (and what it starts later) a background batch job; returns :func:`priority_report`.

    Invariant: only lowers priorities, so it needs no privilege and cannot starve anything.
    """
    cfg = config or BackgroundConfig(niceness=niceness)
    try:
        os.setpriority(os.PRIO_PROCESS, 0, max(cfg.niceness, os.getpriority(os.PRIO_PROCESS, 0)))
    except OSError as e:
        log.warning("cannot lower this process's priority to nice %s: %s", cfg.niceness, e)
    if cfg.batch_policy and hasattr(os, "SCHED_BATCH"):
        try:
            os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))
        except OSError as e:
            log.debug("cannot switch to SCHED_BATCH: %s", e)
    if cfg.autogroup_niceness is not None and autogroup_enabled():
        current = autogroup_niceness()
        if current is not None and current < cfg.autogroup_niceness:
            set_autogroup_niceness(cfg.autogroup_niceness)
    return priority_report()


def priority_report(pid: int = 0) -> dict:
    """Nice, scheduling policy and autogroup nice of a process (0 = this one)."""
    policy = os.sched_getscheduler(pid) if hasattr(os, "sched_getscheduler") else None
    names = {getattr(os, n): n for n in ("SCHED_OTHER", "SCHED_BATCH", "SCHED_IDLE", "SCHED_FIFO", "SCHED_RR")
             if hasattr(os, n)}
    return {"niceness": os.getpriority(os.PRIO_PROCESS, pid), "policy": names.get(policy, policy),
            "autogroups": autogroup_enabled(), "autogroup_niceness": autogroup_niceness(pid or "self")}


BACKGROUND_HELP = ("run as a background batch job (nice 15, SCHED_BATCH, and this login session's autogroup at nice 19: "
                   "the whole session yields to streaming services on the same cores; infra/cpu_priority.py, "
                   "decision 033)")


def add_background_arg(parser) -> None:
    """The ``--background`` flag of genrec's batch commands (train, align, eval): :func:`make_background`."""
    parser.add_argument("--background", action="store_true", help=BACKGROUND_HELP)
