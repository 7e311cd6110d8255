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
    # source -> the newest of its item deltas this worker's state holds (its own: the newest made)
    deltas_merged_through: dict[str, int] = field(default_factory=dict)
    delta_bytes_published: int = 0
    item_staleness_seconds: Histogram = field(default_factory=Histogram)  # peer learned it -> merged here
    shown: dict[str, int] = field(default_factory=dict)  # strategy -> items served (impressions read)
    clicks: dict[str, int] = field(default_factory=dict)  # strategy -> events credited to it
    # for the dashboard: what this worker holds and when it last checkpointed
    partitions: list[int] = field(default_factory=list)
    users: int = 0
    items: int = 0
    last_checkpoint_at: float | None = None
    last_batch_at: float | None = None  # wall time of the last batch of events it learned

    def as_dict(self) -> dict:
        return {"shown": dict(self.shown), "clicks": dict(self.clicks), "partitions": list(self.partitions),
                "users": self.users, "items": self.items, "last_checkpoint_at": self.last_checkpoint_at,
                "last_batch_at": self.last_batch_at,
                "batch_seconds": self.batch_seconds.as_dict(),
                "freshness_seconds": self.freshness_seconds.as_dict(), "consumer_lag": self.consumer_lag,
                "attributed": self.attributed, "online_evaluated": self.online_evaluated,
                "online_hits": self.online_hits, "bandit_arms": self.bandit_arms,
                "deltas_merged": self.deltas_merged, "deltas_published": self.deltas_published,
                "deltas_merged_through": dict(self.deltas_merged_through),
                "delta_bytes_published": self.delta_bytes_published, "item_staleness_seconds": self.item_staleness_seconds.as_dict()}


COUNTED = ("online_evaluated", "online_hits", "attributed", "deltas_merged")
"""Worker metrics that only grow: their per-minute increments make the dashboard's series."""
COUNTED_PER_KEY = {"shown": "shown", "clicks": "clicks"}


def increments(before: dict, after: dict) -> dict[str, float]:
    """What grew between two ``WorkerMetrics.as_dict()`` snapshots, as flat series fields:
    the counters, ``shown:<strategy>``, ``clicks:<strategy>``, ``pulls:<arm>`` and
    ``rewards:<arm>`` (the agent's bandit), and ``fresh:<i>``, the freshness observations
    that fell in bucket ``i`` (``i == len(buckets)``: beyond the last bound).

    >>> m = WorkerMetrics()
    >>> before = m.as_dict()
    >>> m.online_hits, m.shown["cooc"] = 2, 5
    >>> m.freshness_seconds.observe_many(np.array([0.001, 0.02, 60.0]))
    >>> increments(before, m.as_dict())
    {'online_hits': 2, 'shown:cooc': 5, 'fresh:0': 1, 'fresh:2': 1, 'fresh:11': 1}
    """
    grown: dict[str, float] = {}

    def add(name: str, value: float) -> None:
        if value:
            grown[name] = value

    for key in COUNTED:
        add(key, after.get(key, 0) - before.get(key, 0))
    for key, prefix in COUNTED_PER_KEY.items():
        old = before.get(key, {})
        for name, value in after.get(key, {}).items():
            add(f"{prefix}:{name}", value - old.get(name, 0))
    old_arms = before.get("bandit_arms", {})
    for arm, stats in after.get("bandit_arms", {}).items():
        add(f"pulls:{arm}", stats["pulls"] - old_arms.get(arm, {}).get("pulls", 0))
        add(f"rewards:{arm}", stats["rewards"] - old_arms.get(arm, {}).get("rewards", 0))
    new, old = after["freshness_seconds"], before["freshness_seconds"]
    for i, (count, was) in enumerate(zip([*_per_bucket(new), new["count"] - new["counts"][-1]],
                                         [*_per_bucket(old), old["count"] - old["counts"][-1]])):
        add(f"fresh:{i}", count - was)
    return grown


def _per_bucket(histogram: dict) -> list[int]:
    """Observations per bucket, from the cumulative counts."""
    counts = histogram["counts"]
    return [c - (counts[i - 1] if i else 0) for i, c in enumerate(counts)]


def quantile(buckets: tuple[float, ...] | list[float], per_bucket: list[float], q: float) -> float | None:
    """The ``q`` quantile of observations counted per bucket (``per_bucket[i]``: in bucket
    ``i``, the last one beyond every bound), interpolated linearly inside its bucket as
    Prometheus' ``histogram_quantile`` does; the last bound for the open bucket.

    >>> quantile((0.1, 1.0), [0, 10, 0], 0.5)
    0.55
    """
    total = sum(per_bucket)
    if total <= 0:
        return None
    rank, seen = q * total, 0.0
    for i, count in enumerate(per_bucket):
        if count and seen + count >= rank:
            if i >= len(buckets):
                return float(buckets[-1])
            low = buckets[i - 1] if i else 0.0
            return round(low + (buckets[i] - low) * (rank - seen) / count, 6)
        seen += count
    return float(buckets[-1])


class Exposures:
    """Items served (read from the impressions topic), tallied per 5-minute bucket of their
    serve time until the worker writes them.

    >>> e = Exposures()
    >>> e.add(600.0, ["a", "b"]); e.add(601.0, ["a"])
    >>> e.drain(), e.drain()
    ({2: {'a': 2, 'b': 1}}, {})
    """

    BUCKET_S = 300

    def __init__(self) -> None:
        self.pending: dict[int, dict[str, int]] = {}

    def add(self, ts: float, items) -> None:
        counts = self.pending.setdefault(int(ts // self.BUCKET_S), {})
        for item in items:
            counts[item] = counts.get(item, 0) + 1

    def drain(self) -> dict[int, dict[str, int]]:
        pending, self.pending = self.pending, {}
        return pending
