"""Replay a data set into Kafka in event-time order, at a chosen rate.

The merged stream (catalog upserts and user events, ts order, an item before
anyone sees it) goes to the contract topics through :class:`EventProducer`,
keyed so one user's events stay in order in one partition. The send rate is
shaped by a token bucket (``rate`` events per second with a burst of
``burst``; ``rate=0`` sends as fast as the producer can), and a tqdm bar shows
progress. Event time is *not* rescaled: records keep their own ``ts``, only
the wall-clock pace of sending is controlled.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Iterable

from ingest.contract import ItemEvent, Record
from ingest.producer import EventProducer


@dataclass(frozen=True)
class ReplayConfig:
    """Pace and size of a replay.

    ``rate``: events per second (0 = as fast as possible); ``burst``: how many
    events may go at once after an idle spell (default: a tenth of a second's
    worth, at least 1); ``limit``: stop after this many user events (catalog
    upserts do not count); ``include_items``: also send the catalog.
    """

    rate: float = 0.0
    burst: int | None = None
    limit: int | None = None
    include_items: bool = True
    progress: bool = True

    def __post_init__(self) -> None:
        if self.rate < 0:
            raise ValueError(f"ReplayConfig.rate={self.rate} must be >= 0 (0 = as fast as possible)")
        if self.burst is not None and self.burst < 1:
            raise ValueError(f"ReplayConfig.burst={self.burst} must be >= 1 (or None for rate/10)")
        if self.limit is not None and self.limit < 0:
            raise ValueError(f"ReplayConfig.limit={self.limit} must be >= 0 (or None for everything)")


class TokenBucket:
    """Classic token bucket: ``rate`` tokens per second, at most ``capacity`` saved up."""

    def __init__(self, rate: float, capacity: float, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep):
        if rate <= 0 or capacity < 1:
            raise ValueError(f"TokenBucket needs rate > 0 and capacity >= 1, got rate={rate}, capacity={capacity}")
        self.rate, self.capacity = float(rate), float(capacity)
        self._clock, self._sleep = clock, sleep
        self._tokens = 1.0  # start almost empty: the first second is paced too
        self._last = clock()

    def acquire(self, n: float = 1.0) -> None:
        """Block until ``n`` tokens are available, then take them."""
        while True:
            now = self._clock()
            self._tokens = min(self.capacity, self._tokens + (now - self._last) * self.rate)
            self._last = now
            if self._tokens >= n - 1e-9:  # float slack: a sleep of exactly the deficit is enough
                self._tokens -= n
                return
            self._sleep((n - self._tokens) / self.rate)


@dataclass
class ReplayStats:
    """What a replay sent and how fast."""

    user_events: int = 0
    item_events: int = 0
    elapsed_s: float = 0.0
    partitions: dict = field(default_factory=dict)  # topic -> partition count seen by the producer

    @property
    def sent(self) -> int:
        return self.user_events + self.item_events

    @property
    def events_per_s(self) -> float:
        return self.sent / self.elapsed_s if self.elapsed_s > 0 else 0.0


def replay(stream: Iterable[Record], producer: EventProducer, config: ReplayConfig = ReplayConfig(),
           total: int | None = None) -> ReplayStats:
    """Send ``stream`` (event-time order) through ``producer``; flush at the end (everything acked)."""
    bucket = None
    if config.rate > 0:
        bucket = TokenBucket(config.rate, config.burst or max(1.0, config.rate / 10))
    stats = ReplayStats()
    bar = None
    if config.progress:
        from tqdm import tqdm

        if config.limit is not None and total is not None:
            total = min(total, config.limit)
        bar = tqdm(total=total, unit="ev", desc="replay", mininterval=0.5, smoothing=0.1)
    t0 = time.perf_counter()
    pending = 0
    try:
        for rec in stream:
            is_item = isinstance(rec, ItemEvent)
            if is_item and not config.include_items:
                continue
            if not is_item and config.limit is not None and stats.user_events >= config.limit:
                break
            if bucket is not None:
                bucket.acquire()
            producer.send(rec)
            if is_item:
                stats.item_events += 1
            else:
                stats.user_events += 1
            pending += 1
            if bar is not None and pending >= 2000:
                bar.update(pending)
                pending = 0
        producer.flush()
    finally:
        if bar is not None:
            bar.update(pending)
            bar.close()
    stats.elapsed_s = time.perf_counter() - t0
    return stats


def replay_dataset(dataset, producer: EventProducer, config: ReplayConfig = ReplayConfig()) -> ReplayStats:
    """Replay a :class:`ingest.datasets.Dataset` (catalog and user events merged by time)."""
    n_items = len(dataset.item_events) if config.include_items else 0
    stats = replay(dataset.stream(), producer, config, total=len(dataset.user_events) + n_items)
    return stats


__all__ = ["ReplayConfig", "ReplayStats", "TokenBucket", "replay", "replay_dataset"]
