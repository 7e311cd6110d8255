"""The consumer worker: Kafka events in, model updates, fresh top-k lists out to Redis.

One loop, one micro-batch at a time (bytewax-style: errors are data):

1. ``poll()`` a batch of records from the consumer group;
2. split it into valid events and rejects (each reject carries its reason);
3. send the rejects to the dead-letter topic ``<topic>.dlq`` with the original bytes;
4. the model learns the valid events (``learn_many``);
5. the touched users' fresh lists, the popular list and the counters go to Redis in one
   transaction;
6. only then are the batch's offsets committed (and only after the DLQ sends are flushed),
   so a crash anywhere before re-delivers the batch rather than losing it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from kafka import KafkaConsumer, KafkaProducer
from kafka.consumer.fetcher import ConsumerRecord

from online_models import Recommender, make_model
from online_models.trending import Trending
from serving.store import RecommendationStore, make_client
from stream.producer import make_producer
from stream.schema import Event, parse_event
from stream.topics import ensure_topics
from streamrec.errors import InvalidEvent
from streamrec.settings import Settings

log = logging.getLogger("streamrec.worker")


@dataclass
class Reject:
    record: ConsumerRecord
    reason: str


@dataclass
class BatchReport:
    consumed: int = 0
    applied: int = 0
    dead_lettered: int = 0
    users_refreshed: int = 0
    seconds: float = 0.0


@dataclass
class Totals:
    consumed: int = 0
    applied: int = 0
    dead_lettered: int = 0
    batches: int = 0
    last_batch: BatchReport = field(default_factory=BatchReport)

    def add(self, report: BatchReport) -> None:
        self.consumed += report.consumed
        self.applied += report.applied
        self.dead_lettered += report.dead_lettered
        self.batches += 1
        self.last_batch = report


def split_records(records: Iterable[ConsumerRecord], max_event_bytes: int) -> tuple[list[Event], list[Reject]]:
    """Valid events and rejects, in record order."""
    events: list[Event] = []
    rejects: list[Reject] = []
    for record in records:
        try:
            events.append(
                parse_event(
                    record.value,
                    default_ts=record.timestamp / 1000.0 if record.timestamp and record.timestamp > 0 else None,
                    default_event_id=f"{record.topic}/{record.partition}/{record.offset}",
                    max_bytes=max_event_bytes,
                )
            )
        except InvalidEvent as exc:
            rejects.append(Reject(record, exc.reason))
    return events, rejects


class Worker:
    """Consumes the event topic and keeps every touched user's list in Redis fresh.

    The collaborators can be passed in (tests, benchmarks); by default they are built
    from ``settings``.
    """

    def __init__(
        self,
        settings: Settings,
        model: Recommender | None = None,
        store: RecommendationStore | None = None,
        consumer: KafkaConsumer | None = None,
        dlq_producer: KafkaProducer | None = None,
    ):
        self.settings = settings
        self.model = model if model is not None else make_model(settings.model)
        self.popularity = self.model if isinstance(self.model, Trending) else Trending()
        self.store = store or RecommendationStore(
            make_client(settings.redis_url, retries=-1), settings.redis_prefix, settings.user_list_ttl_s
        )
        if consumer is None:
            ensure_topics(
                settings.kafka_bootstrap,
                {settings.topic: settings.topic_partitions, settings.dlq_topic: settings.topic_partitions},
            )
            consumer = KafkaConsumer(
                settings.topic,
                bootstrap_servers=settings.kafka_bootstrap,
                group_id=settings.group_id,
                enable_auto_commit=False,
                auto_offset_reset="earliest",
                max_poll_records=settings.max_poll_records,
                fetch_max_bytes=32 * 1024 * 1024,
                max_partition_fetch_bytes=8 * 1024 * 1024,
            )
        self.consumer = consumer
        self.dlq = dlq_producer or make_producer(settings.kafka_bootstrap)
        self.seen: dict[str, set[str]] = {}
        self.totals = Totals()
        self._popular_written_at = 0.0

    def process(self, records: list[ConsumerRecord]) -> BatchReport:
        """Apply one batch of records; returns once its effects are in Redis and the DLQ."""
        started = time.perf_counter()
        events, rejects = split_records(records, self.settings.max_event_bytes)
        for reject in rejects:
            self._dead_letter(reject)
        if events:
            self.model.learn_many(events)
            if self.popularity is not self.model:
                self.popularity.learn_many(events)
            for event in events:
                self.seen.setdefault(event.user_id, set()).add(event.item_id)
        users = list(dict.fromkeys(e.user_id for e in events))
        lists = self.model.recommend_many(users, self.settings.top_k, {u: self.seen[u] for u in users})
        now = time.time()
        popular = None
        if now - self._popular_written_at >= self.settings.popular_refresh_s and events:
            popular = self.popularity.top(self.settings.top_k)
            self._popular_written_at = now
        report = BatchReport(len(records), len(events), len(rejects), len(users))
        self.store.write_batch(
            lists, self.model.name, now, popular,
            {"consumed": report.consumed, "applied": report.applied, "dead_lettered": report.dead_lettered},
        )
        if rejects:
            self.dlq.flush()
        report.seconds = time.perf_counter() - started
        return report

    def _dead_letter(self, reject: Reject) -> None:
        record = reject.record
        headers = [
            ("reason", reject.reason.encode()),
            ("source", f"{record.topic}/{record.partition}/{record.offset}".encode()),
        ]
        self.dlq.send(self.settings.dlq_topic, key=record.key, value=record.value, headers=headers)

    def poll_once(self) -> BatchReport | None:
        """Poll one batch, apply it, commit its offsets; None when nothing came."""
        batches = self.consumer.poll(
            timeout_ms=self.settings.poll_timeout_ms, max_records=self.settings.max_poll_records
        )
        records = [r for partition_records in batches.values() for r in partition_records]
        if not records:
            return None
        report = self.process(records)
        self.consumer.commit()
        self.totals.add(report)
        return report

    def run(self, stop: threading.Event | None = None) -> Totals:
        """Consume until ``stop`` is set; Redis outages block (with backoff) rather than lose events."""
        stop = stop or threading.Event()
        log.info("worker consuming %s as group %s, model %s", self.settings.topic, self.settings.group_id,
                 self.model.name)
        while not stop.is_set():
            report = self.poll_once()
            if report:
                log.debug("batch: %s", report)
        return self.totals

    def close(self) -> None:
        self.consumer.close()
        self.dlq.flush()
        self.dlq.close()
        self.store.close()
