"""What the closed-loop simulator saw (:mod:`serving.simulator`): counts, latency, per-arm click rate and reward.

:class:`SimulationSummary` is filled while the run goes (one asyncio loop, so no
locks) and read at the end: :meth:`~SimulationSummary.to_dict` (``--json``) and
:meth:`~SimulationSummary.lines` (the table ``genrec simulate`` prints).

Invariants: ``arrivals = sent + skipped``; ``sent = Σ status + Σ no-answer
reasons`` once the run ended; each usable 200 answer is one session in exactly
one arm (``experiment/arm`` of the answer; a 200 whose body or world answer
failed is in ``client_errors`` instead); ``click_rate`` is clicks per item served;
``mean_reward`` is the mean of the sessions' scalar rewards with a normal 95 %
half-width (``1.96 · sd / √n``; sessions, not users, are the unit here — the A/B
report does the user-level analysis).
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field

import numpy as np


@dataclass
class SessionOutcome:
    """One answered session: what was served, what the world did, what the ingestion path acknowledged."""

    request_id: str
    user_id: str
    arm: str                 # "experiment/arm" of the answer
    model_version: str
    items: int
    unknown_items: int       # items the world does not know (the app's catalog is not the world's)
    events: int              # events the world produced
    clicks: int
    reward: float            # the session's scalar reward, as the reward joiner computes it
    ts: int                  # wall-clock ms the answer arrived (the events' time base)
    acked_event_ids: list[str] = field(default_factory=list)


@dataclass
class ArmStats:
    """Running sums of one arm's sessions."""

    model_versions: Counter = field(default_factory=Counter)
    sessions: int = 0
    items: int = 0
    clicks: int = 0
    reward_sum: float = 0.0
    reward_sq: float = 0.0

    def add(self, o: SessionOutcome) -> None:
        self.model_versions[o.model_version] += 1
        self.sessions += 1
        self.items += o.items
        self.clicks += o.clicks
        self.reward_sum += o.reward
        self.reward_sq += o.reward * o.reward

    def to_dict(self) -> dict:
        n = self.sessions
        mean = self.reward_sum / n if n else float("nan")
        var = max(0.0, self.reward_sq / n - mean * mean) * n / (n - 1) if n > 1 else float("nan")
        return {"model_versions": dict(self.model_versions), "sessions": n, "items": self.items,
                "clicks": self.clicks, "click_rate": self.clicks / self.items if self.items else float("nan"),
                "mean_reward": mean, "mean_reward_ci95": 1.96 * math.sqrt(var / n) if n > 1 else float("nan")}


def _pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values, dtype=np.float64), q)) if values else float("nan")


@dataclass
class SimulationSummary:
    """Counters of one run (see the module doc for what each means)."""

    config: dict = field(default_factory=dict)
    keep_sessions: bool = True
    arrivals: int = 0
    sent: int = 0
    skipped: int = 0                       # arrivals beyond the concurrency bound: never sent
    status: Counter = field(default_factory=Counter)       # HTTP status -> answers
    errors: Counter = field(default_factory=Counter)       # no answer: reason -> requests
    client_errors: Counter = field(default_factory=Counter)  # answered 200 but unusable: reason -> sessions
    latencies_ms: list[float] = field(default_factory=list)          # of 200 answers, from the scheduled arrival
    events_generated: int = 0
    events_acked: int = 0
    events_rejected: int = 0
    events_lost: int = 0                   # in batches the ingestion path did not take
    event_errors: Counter = field(default_factory=Counter)
    event_post_ms: list[float] = field(default_factory=list)
    unknown_items: int = 0
    arms: dict = field(default_factory=dict)               # "experiment/arm" -> ArmStats
    sessions: list = field(default_factory=list)           # SessionOutcome per 200 (keep_sessions)
    wall_s: float = 0.0

    # -- recording (the engine) --------------------------------------------------------------

    def answered(self, status: int, latency_ms: float) -> None:
        self.status[int(status)] += 1
        if status == 200:
            self.latencies_ms.append(latency_ms)

    def no_answer(self, reason: str) -> None:
        self.errors[reason] += 1

    def session(self, o: SessionOutcome) -> None:
        self.events_generated += o.events
        self.unknown_items += o.unknown_items
        self.arms.setdefault(o.arm, ArmStats()).add(o)
        if self.keep_sessions:
            self.sessions.append(o)

    def events_sent(self, acked: int, rejected: int, ms: float) -> None:
        self.events_acked += acked
        self.events_rejected += rejected
        self.event_post_ms.append(ms)

    def events_failed(self, n: int, reason: str) -> None:
        self.events_lost += n
        self.event_errors[reason] += 1

    # -- reading ---------------------------------------------------------------------------

    @property
    def ok(self) -> int:
        return self.status.get(200, 0)

    def latency_p(self, q: float) -> float:
        return _pct(self.latencies_ms, q)

    def status_groups(self) -> dict[str, int]:
        """Answers per status: 200, 429, 503 and every other code together."""
        other = sum(n for s, n in self.status.items() if s not in (200, 429, 503))
        return {"200": self.ok, "429": self.status.get(429, 0), "503": self.status.get(503, 0), "other": other}

    def answered_request_ids(self) -> list[str]:
        """Request ids answered 200, in answer order (``genrec audit --answered``); needs ``keep_sessions``."""
        return [o.request_id for o in self.sessions]

    def acked_event_ids(self) -> list[str]:
        """Event ids the ingestion path acknowledged (``genrec audit --acked``); needs ``keep_sessions``."""
        return [e for o in self.sessions for e in o.acked_event_ids]

    def to_dict(self) -> dict:
        """The summary as plain JSON-able data (NaN where there is nothing to measure)."""
        answered = sum(self.status.values())
        clicks = sum(a.clicks for a in self.arms.values())
        items = sum(a.items for a in self.arms.values())
        return {
            "config": dict(self.config),
            "wall_s": self.wall_s,
            "arrivals": self.arrivals, "sent": self.sent, "skipped": self.skipped,
            "offered_rate": self.arrivals / self.wall_s if self.wall_s else float("nan"),
            "answered": answered, "status": self.status_groups(),
            "status_codes": {str(k): v for k, v in sorted(self.status.items())},
            "no_answer": dict(self.errors), "client_errors": dict(self.client_errors),
            "latency_ms": {"p50": self.latency_p(50), "p99": self.latency_p(99),
                           "max": max(self.latencies_ms) if self.latencies_ms else float("nan")},
            "events": {"generated": self.events_generated, "acked": self.events_acked,
                       "rejected": self.events_rejected, "lost": self.events_lost,
                       "errors": dict(self.event_errors),
                       "post_ms": {"p50": _pct(self.event_post_ms, 50), "p99": _pct(self.event_post_ms, 99)}},
            "unknown_items": self.unknown_items,
            "click_rate": clicks / items if items else float("nan"),
            "arms": {name: a.to_dict() for name, a in sorted(self.arms.items())},
        }

    def to_json(self) -> str:
        """:meth:`to_dict` as strict JSON: NaN (nothing measured) becomes null."""
        import json

        def clean(v):
            if isinstance(v, float) and not math.isfinite(v):
                return None
            if isinstance(v, dict):
                return {k: clean(x) for k, x in v.items()}
            return v

        return json.dumps(clean(self.to_dict()), indent=2, allow_nan=False)

    def lines(self) -> list[str]:
        """The summary for people."""
        d = self.to_dict()
        st, ev, lat = d["status"], d["events"], d["latency_ms"]
        out = [f"{d['sent']:,} requests sent of {d['arrivals']:,} arrivals in {d['wall_s']:.1f} s "
               f"({d['offered_rate']:.1f}/s offered; {d['skipped']:,} skipped at the concurrency bound)",
               f"answered: {d['answered']:,} — 200: {st['200']:,}, 429: {st['429']:,}, 503: {st['503']:,}, "
               f"other: {st['other']:,}" + (f" {d['status_codes']}" if st["other"] else ""),
               f"latency of 200 answers (from the scheduled arrival): p50 {lat['p50']:.1f} ms, p99 {lat['p99']:.1f} ms",
               f"events: {ev['generated']:,} from the world, {ev['acked']:,} acknowledged, {ev['rejected']:,} "
               f"rejected, {ev['lost']:,} lost; post p50 {ev['post_ms']['p50']:.1f} ms, p99 "
               f"{ev['post_ms']['p99']:.1f} ms"]
        if d["no_answer"] or ev["errors"] or d["client_errors"]:
            out.append(f"errors: no answer {d['no_answer']}; event batches {ev['errors']}; 200 answers not "
                       f"usable {d['client_errors']}")
        if d["unknown_items"]:
            out.append(f"warning: {d['unknown_items']:,} served items are not the world's items: the app's "
                       "catalog is not this world's (seed it with the world's items, e.g. genrec replay)")
        if d["arms"]:
            w = max(len(n) for n in d["arms"])
            out.append(f"{'arm':<{w}}  {'sessions':>8}  {'click rate':>10}  {'mean reward':>18}  model versions")
            for name, a in d["arms"].items():
                out.append(f"{name:<{w}}  {a['sessions']:>8,}  {a['click_rate']:>10.4f}  "
                           f"{a['mean_reward']:>9.3f} ± {a['mean_reward_ci95']:<6.3f}  "
                           + ", ".join(f"{v} ({n})" for v, n in a["model_versions"].items()))
        return out
