"""Worker metrics, kept as plain numbers so they travel to Redis and the API's /metrics.

>>> h = Histogram((0.1, 1.0))
>>> for v in (0.05, 0.5, 5.0):
...     h.observe(v)
>>> h.as_dict()
{'buckets': [0.1, 1.0], 'counts': [1, 2], 'count': 3, 'sum': 5.55}
>>> h.observe_many(np.array([0.1, 2.0]))
>>> h.as_dict()["counts"]
[2, 3]
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field

import numpy as np

LATENCY_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


@dataclass
class Histogram:
    """Cumulative fixed-bucket histogram, Prometheus style (``counts[i]``: observations <= ``buckets[i]``)."""

    buckets: tuple[float, ...] = LATENCY_BUCKETS_S
    counts: list[int] = field(default_factory=list)
    count: int = 0
    total: float = 0.0

    def __post_init__(self) -> None:
        self.counts = self.counts or [0] * len(self.buckets)

    def observe(self, value: float) -> None:
        for i in range(bisect.bisect_left(self.buckets, value), len(self.buckets)):
            self.counts[i] += 1
        self.count += 1
        self.total += value

    def observe_many(self, values: np.ndarray) -> None:
        """Observe an array of values at once (the worker's per-event freshness)."""
        if len(values):
            per_bucket = np.searchsorted(np.sort(values), self.buckets, side="right")
            self.counts = [c + int(n) for c, n in zip(self.counts, per_bucket)]
            self.count += len(values)
            self.total += float(values.sum())

    def as_dict(self) -> dict:
        return {"buckets": list(self.buckets), "counts": list(self.counts), "count": self.count,
                "sum": round(self.total, 6)}


@dataclass
class WorkerMetrics:
    """What one worker reports besides its counters: lag, batch latency, freshness, and the
    agent's feedback (clicks attributed to impressions, the bandit's arms)."""

    batch_seconds: Histogram = field(default_factory=Histogram)
    freshness_seconds: Histogram = field(default_factory=Histogram)
    consumer_lag: int = 0
    attributed: int = 0
    online_evaluated: int = 0  # served events whose user had a list, judged before learning
    online_hits: int = 0  # ... whose item was in that list's top online_eval_k
    bandit_arms: dict[str, dict] = field(default_factory=dict)  # arm -> pulls, rewards, share
    deltas_merged: int = 0  # peers' item deltas added to this worker's item state
    deltas_published: int = 0  # this worker's own (and restored checkpoints' pending) deltas sent
    delta_bytes_published: int = 0
    item_staleness_seconds: Histogram = field(default_factory=Histogram)  # peer learned it -> merged here

    def as_dict(self) -> dict:
        return {"batch_seconds": self.batch_seconds.as_dict(),
                "freshness_seconds": self.freshness_seconds.as_dict(), "consumer_lag": self.consumer_lag,
                "attributed": self.attributed, "online_evaluated": self.online_evaluated,
                "online_hits": self.online_hits, "bandit_arms": self.bandit_arms,
                "deltas_merged": self.deltas_merged, "deltas_published": self.deltas_published,
                "delta_bytes_published": self.delta_bytes_published, "item_staleness_seconds": self.item_staleness_seconds.as_dict()}
