"""Prometheus metrics for ``GET /metrics``: the API's own request latencies, and what the
workers report through Redis (counters, consumer lag, batch latency, freshness).

One scrape of the API shows the whole pipeline; the workers need no port of their own.
"""

from __future__ import annotations

from time import perf_counter

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)

from core.errors import StoreUnavailable
from core.metrics import LATENCY_BUCKETS_S
from serving.store import RecommendationStore

REQUEST_BUCKETS_S = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)


class PipelineCollector:
    """Reads the workers' numbers from the store at scrape time."""

    def __init__(self, store: RecommendationStore):
        self.store = store

    def collect(self):
        try:
            counters = self.store.counters()
            workers = self.store.workers_metrics()
        except StoreUnavailable:
            up = GaugeMetricFamily("streamrec_store_up", "Whether Redis answered this scrape")
            up.add_metric([], 0)
            yield up
            return
        up = GaugeMetricFamily("streamrec_store_up", "Whether Redis answered this scrape")
        up.add_metric([], 1)
        yield up
        for name in ("consumed", "applied", "dead_lettered", "deduplicated"):
            family = CounterMetricFamily(f"streamrec_events_{name}", f"Events {name.replace('_', '-')} by the workers")
            family.add_metric([], counters.get(name, 0))
            yield family
        lag = GaugeMetricFamily("streamrec_consumer_lag", "Records not yet consumed, summed over live workers")
        lag.add_metric([], sum(w["consumer_lag"] for w in workers))
        yield lag
        workers_gauge = GaugeMetricFamily("streamrec_workers", "Workers that reported in the last minute")
        workers_gauge.add_metric([], len(workers))
        yield workers_gauge
        for key, help_text in (("online_evaluated", "Served events judged against the user's last list"),
                               ("online_hits", "... whose item was in that list (online HR = hits / evaluated)"),
                               ("deltas_merged", "Item deltas merged from the other workers")):
            family = CounterMetricFamily(f"streamrec_{key}", help_text)
            family.add_metric([], sum(w.get(key, 0) for w in workers))  # .get: workers of an older version
            yield family
        attributed = CounterMetricFamily("streamrec_feedback_attributed", "Events credited to the impression they came from")
        attributed.add_metric([], sum(w["attributed"] for w in workers))
        yield attributed
        pulls = CounterMetricFamily("streamrec_bandit_arm_pulls", "Slots the bandit learned about, per strategy", labels=["arm"])
        rewards = CounterMetricFamily("streamrec_bandit_arm_rewards", "Rewards (clicks) per strategy", labels=["arm"])
        share = GaugeMetricFamily("streamrec_bandit_arm_share", "Share of the bandit's pulls per strategy", labels=["arm"])
        arms: dict[str, list[float]] = {}  # summed over workers: [pulls, rewards]
        for worker in workers:
            for arm, stats in worker["bandit_arms"].items():
                totals = arms.setdefault(arm, [0, 0.0])
                totals[0] += stats["pulls"]
                totals[1] += stats["rewards"]
        all_pulls = sum(p for p, _ in arms.values())
        for arm, (n, r) in sorted(arms.items()):
            pulls.add_metric([arm], n)
            rewards.add_metric([arm], r)
            share.add_metric([arm], n / all_pulls if all_pulls else 0.0)
        yield from (pulls, rewards, share)
        for key, help_text in (("batch_seconds", "Time to apply one micro-batch, up to its Redis write"),
                               ("freshness_seconds", "From an event's produce time to its user's list being written"),
                               ("item_staleness_seconds", "From a peer's first learning in an item delta to its merge here")):
            yield _histogram(f"streamrec_{key}", help_text, [w[key] for w in workers if key in w])


class ImpressionCollector:
    """The API's impressions: published, and dropped (Kafka away, or too many waiting)."""

    def __init__(self, impressions):
        self.impressions = impressions

    def collect(self):
        for name, help_text in (("sent", "Impressions handed to the Kafka producer"),
                                ("dropped", "Impressions dropped: Kafka away or too many waiting")):
            family = CounterMetricFamily(f"streamrec_impressions_{name}", help_text)
            family.add_metric([], getattr(self.impressions, name))
            yield family


def _histogram(name: str, help_text: str, parts: list[dict]) -> HistogramMetricFamily:
    buckets = parts[0]["buckets"] if parts else list(LATENCY_BUCKETS_S)
    counts = [sum(p["counts"][i] for p in parts) for i in range(len(buckets))]
    total = sum(p["count"] for p in parts)
    family = HistogramMetricFamily(name, help_text)
    family.add_metric([], [(str(b), c) for b, c in zip(buckets, counts)] + [("+Inf", total)],
                      sum_value=sum(p["sum"] for p in parts))
    return family


class RequestTimer:
    """Pure ASGI middleware: request latency per route template.

    The labelled child of each (method, route) is looked up once and kept: ``labels()`` takes
    a lock and builds a key on every call, a cost per request for nothing.
    """

    def __init__(self, app, histogram: Histogram):
        self.app = app
        self.histogram = histogram
        self._children: dict[tuple[str, str], Histogram] = {}

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = perf_counter()
        try:
            await self.app(scope, receive, send)
        finally:
            route = scope.get("route")
            key = (scope["method"], route.path if route is not None else "unmatched")
            child = self._children.get(key)
            if child is None:
                child = self._children[key] = self.histogram.labels(*key)
            child.observe(perf_counter() - started)


def make_registry() -> tuple[CollectorRegistry, Histogram]:
    registry = CollectorRegistry()
    requests = Histogram("streamrec_request_seconds", "API request latency per route", ["method", "route"],
                         buckets=REQUEST_BUCKETS_S, registry=registry)
    return registry, requests
