"""The operator dashboard's numbers, read from what the system keeps in Redis: the workers'
metrics and counters (what ``/metrics`` shows), their per-minute series, the exposure the
workers tallied from the impressions topic, users' lists and recent events, item metadata
and similar items; and the backtest reports under ``Settings.reports_dir``.

Nothing here scans the users: a page costs the same with 100 or 10 million of them.
"""

from __future__ import annotations

import heapq
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from core.keys import EXPOSURE_BUCKETS_S
from core.metrics import LATENCY_BUCKETS_S, quantile
from serving.store import RecommendationStore

WINDOWS_H = {1: 60, 24: 15 * 60}
"""Hours shown -> seconds per chart bin."""
STREAM_COUNTS = ("consumed", "applied", "dead_lettered", "deduplicated")
RECENT_S = 300  # the headline rates and quantiles: the last five minutes


def gini(counts: Sequence[float], catalogue: int | None = None) -> float | None:
    """Gini index of exposure over ``catalogue`` items (those not in ``counts`` count 0):
    0 when every item is shown alike, towards 1 when a few take every impression.

    >>> gini([1, 1, 1, 1]), gini([4], catalogue=4)
    (0.0, 0.75)
    """
    values = np.sort(np.fromiter(counts, dtype=np.float64, count=len(counts)))
    n = max(catalogue or 0, len(values))
    total = float(values.sum())
    if not n or total <= 0:
        return None
    ranks = np.arange(n - len(values) + 1, n + 1, dtype=np.float64)  # the unshown items rank first, with 0
    return round(float(2 * (ranks @ values) / (n * total) - (n + 1) / n), 4)


@dataclass
class Series:
    labels: list[str]
    bin_s: int
    bins: list[dict[str, float]]
    recent: dict[str, float]  # summed over the last RECENT_S seconds
    recent_s: float
    window: dict[str, float]  # summed over the whole window

    def values(self, name: str, per_second: bool = False) -> list[float]:
        return [b.get(name, 0.0) / (self.bin_s if per_second else 1) for b in self.bins]

    def ratio(self, numerator: str, denominator: str) -> list[float | None]:
        return [b[numerator] / b[denominator] if b.get(denominator) else None for b in self.bins]

    def prefixed(self, prefix: str) -> list[str]:
        return sorted({k.split(":", 1)[1] for b in (self.window,) for k in b if k.startswith(prefix + ":")})


def read_series(store: RecommendationStore, hours: int, now: float | None = None) -> Series:
    """The per-minute series of the last ``hours``, summed into chart bins."""
    now = time.time() if now is None else now
    bin_s = WINDOWS_H[hours]
    minute = int(now // 60)
    minutes = list(range(minute - hours * 60 + 1, minute + 1))
    per_minute = store.series(minutes)
    per_bin = bin_s // 60
    bins: list[dict[str, float]] = []
    labels = []
    for start in range(0, len(minutes), per_bin):
        summed: dict[str, float] = {}
        for found in per_minute[start : start + per_bin]:
            for key, value in found.items():
                summed[key] = summed.get(key, 0.0) + value
        bins.append(summed)
        labels.append(time.strftime("%H:%M", time.localtime(minutes[start] * 60)))
    recent: dict[str, float] = {}
    window: dict[str, float] = {}
    for m, found in zip(minutes, per_minute):
        for key, value in found.items():
            window[key] = window.get(key, 0.0) + value
            if (minute - m) * 60 < RECENT_S:
                recent[key] = recent.get(key, 0.0) + value
    recent_s = RECENT_S - 60 + (now % 60 or 1.0)  # the current minute counts only as far as it went
    return Series(labels, bin_s, bins, recent, recent_s, window)


def freshness(counts: dict[str, float], q: float) -> float | None:
    per_bucket = [counts.get(f"fresh:{i}", 0.0) for i in range(len(LATENCY_BUCKETS_S) + 1)]
    return quantile(LATENCY_BUCKETS_S, per_bucket, q)


@dataclass
class Exposure:
    impressions: int
    items_shown: int
    catalogue: int
    coverage: float | None
    gini: float | None
    top: list[tuple[str, int, float]] = field(default_factory=list)  # item, impressions, times a fair share


def read_exposure(store: RecommendationStore, size: str, buckets: int, catalogue: int, now: float,
                  top_n: int = 8) -> Exposure:
    """Impressions per item over the last ``buckets`` buckets of ``size`` (the current one too)."""
    current = int(now // EXPOSURE_BUCKETS_S[size])
    counts = store.exposure(size, range(current - buckets + 1, current + 1))
    total = sum(counts.values())
    catalogue = max(catalogue, len(counts))
    fair = total / catalogue if catalogue else 0.0
    top = heapq.nsmallest(top_n, counts.items(), key=lambda kv: (-kv[1], kv[0]))
    return Exposure(
        impressions=total, items_shown=len(counts), catalogue=catalogue,
        coverage=round(len(counts) / catalogue, 4) if catalogue else None,
        gini=gini(list(counts.values()), catalogue),
        top=[(item, n, round(n / fair, 1) if fair else 0.0) for item, n in top],
    )


@dataclass
class Overview:
    hours: int
    now: float
    series: Series
    counters: dict[str, int]
    workers: list[dict]
    model: str | None
    exposure_hour: Exposure
    exposure_day: Exposure
    titles: dict[str, str]

    @property
    def lag(self) -> int:
        return sum(w.get("consumer_lag", 0) for w in self.workers)

    def rate(self, name: str) -> float:
        return self.series.recent.get(name, 0.0) / self.series.recent_s

    @property
    def online_hr(self) -> float | None:
        evaluated = sum(w.get("online_evaluated", 0) for w in self.workers)
        return sum(w.get("online_hits", 0) for w in self.workers) / evaluated if evaluated else None


def read_overview(store: RecommendationStore, hours: int = 1, now: float | None = None) -> Overview:
    now = time.time() if now is None else now
    workers = sorted(store.workers_metrics(), key=lambda w: str(w.get("worker", "")))
    catalogue = max((w.get("items", 0) for w in workers), default=0)
    hour = read_exposure(store, "5m", 3600 // EXPOSURE_BUCKETS_S["5m"], catalogue, now)
    day = read_exposure(store, "1h", 24, catalogue, now)
    items = list(dict.fromkeys([i for i, _, _ in hour.top] + [i for i, _, _ in day.top]))
    titles = {i: title_of(m) for i, m in zip(items, store.item_metadata(items)) if m}
    return Overview(hours=hours, now=now, series=read_series(store, hours, now), counters=store.counters(),
                    workers=workers, model=_served_model(workers), exposure_hour=hour,
                    exposure_day=day, titles=titles)


def _served_model(workers: list[dict]) -> str | None:
    models = {w.get("model") for w in workers if w.get("model")}
    return ", ".join(sorted(models)) or None


def title_of(metadata: dict | None) -> str:
    if not metadata:
        return ""
    return str(metadata.get("title") or metadata.get("name") or "")


@dataclass
class UserView:
    user_id: str
    source: str
    model: str | None
    updated_at: float | None
    items: list[dict]  # item_id, title, score, seen, strategy, reason
    history: list[dict]  # item_id, title, type, ts


def read_user(store: RecommendationStore, user_id: str, k: int = 20) -> UserView:
    stored = store.user_list(user_id, unseen_only=True, limit=k)  # as the API serves it by default
    source = "personal"
    if stored is None:
        stored, source = store.popular_list(), "popular"
    events = store.history(user_id)[:50]
    entries = stored.items if stored else []
    explained = (stored.explained if stored else None) or [(None, None)] * len(entries)
    seen = (stored.seen if stored else None) or [False] * len(entries)
    ids = list(dict.fromkeys([i for i, _ in entries] + [e[0] for e in events]))
    titles = {i: title_of(m) for i, m in zip(ids, store.item_metadata(ids))}
    items = [{"item_id": i, "title": titles.get(i, ""), "score": s, "seen": is_seen, "strategy": x, "reason": r}
             for (i, s), (x, r), is_seen in zip(entries, explained, seen)]
    history = [{"item_id": item, "title": titles.get(item, ""), "type": kind, "ts": ts} for item, kind, ts in events]
    return UserView(user_id, source, stored.model if stored else None, stored.updated_at if stored else None,
                    items, history)


@dataclass
class ItemView:
    item_id: str
    metadata: dict | None
    similar: list[tuple[str, str, float]]  # item, title, score
    impressions_hour: int
    impressions_day: int


def read_item(store: RecommendationStore, item_id: str, k: int = 10, now: float | None = None) -> ItemView | None:
    now = time.time() if now is None else now
    metadata = store.item_metadata([item_id])[0]
    stored = store.similar_list(item_id)
    similar = stored.items[:k] if stored else []
    if metadata is None and not similar:
        return None
    titles = [title_of(m) for m in store.item_metadata([i for i, _ in similar])]
    five, hour = EXPOSURE_BUCKETS_S["5m"], EXPOSURE_BUCKETS_S["1h"]
    last_hour = store.exposure_of(item_id, "5m", range(int(now // five) - 11, int(now // five) + 1))
    last_day = store.exposure_of(item_id, "1h", range(int(now // hour) - 23, int(now // hour) + 1))
    return ItemView(item_id, metadata, [(i, t, s) for (i, s), t in zip(similar, titles)], last_hour, last_day)


@dataclass
class Report:
    name: str
    folder: Path
    modified: float
    markdown: str
    has_png: bool


def find_reports(reports_dir: Path, limit: int = 20) -> list[Report]:
    """Backtest reports (``report.md``, with ``report.png`` beside it when drawn) in
    ``reports_dir`` or a folder up to two levels under it, the newest first."""
    if not reports_dir.is_dir():
        return []
    found = [*reports_dir.glob("report.md"), *reports_dir.glob("*/report.md"), *reports_dir.glob("*/*/report.md")]
    reports = []
    for md in found:
        name = md.parent.relative_to(reports_dir).as_posix()
        reports.append(Report(name if name != "." else reports_dir.name, md.parent, md.stat().st_mtime,
                              md.read_text(errors="replace"), (md.parent / "report.png").is_file()))
    return sorted(reports, key=lambda r: -r.modified)[:limit]


def report_folder(reports_dir: Path, name: str) -> Path | None:
    """The folder of the report named ``name``, only if it is one of ``find_reports``' (no
    path from a request ever reaches the file system otherwise)."""
    for report in find_reports(reports_dir, limit=1000):
        if report.name == name:
            return report.folder
    return None
