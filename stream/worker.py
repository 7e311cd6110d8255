"""The consumer worker: Kafka events in, model updates, fresh top-k lists out to Redis.

One loop, one micro-batch at a time (bytewax-style: errors are data):

1. ``poll()`` a batch of records from the consumer group;
2. split it into valid events, duplicates (an ``event_id`` seen recently on the same
   partition) and rejects (each carrying its reason);
3. send the rejects to the dead-letter topic ``<topic>.dlq`` with the original bytes;
4. the model learns the valid events (``learn_many``);
5. the touched users' fresh lists, the popular list and the counters go to Redis in one
   transaction;
6. only then are the batch's offsets committed (after the DLQ sends are flushed).

Exactly-once effect on model state: every ``checkpoint_every_events`` events or
``checkpoint_interval_s`` seconds (and when partitions are revoked, and on shutdown) the
worker saves its whole state (model, seen items, dedupe windows, counters) together with
the next offset of each partition it applied (``stream.checkpoint``). On start it loads
the newest valid checkpoint and, as partitions are assigned, seeks each one to its
checkpointed offset: events after the checkpoint are applied once more, to the state
they were missing from, and events before it never again. Counters travel inside that
state and are written to Redis as absolute values, so they reconcile after any crash:
consumed = applied + dead-lettered + deduplicated.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import socket
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Iterable
from dataclasses import dataclass, field, fields

import numpy as np
import orjson
from kafka import ConsumerRebalanceListener, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.consumer.fetcher import ConsumerRecord

from online_models import Recommender, make_model
from online_models.agent import Agent
from online_models.trending import Trending
from serving.store import RecommendationStore, make_client
from stream.checkpoint import CheckpointStore
from stream.metrics import WorkerMetrics
from stream.producer import make_producer
from stream.schema import ITEM_TYPE, Event, parse_event
from stream.topics import ensure_topics
from streamrec.errors import InvalidEvent
from streamrec.settings import Settings

log = logging.getLogger("streamrec.worker")


@dataclass
class Reject:
    record: ConsumerRecord
    reason: str


@dataclass
class Counts:
    consumed: int = 0
    applied: int = 0
    dead_lettered: int = 0
    deduplicated: int = 0

    def add(self, other: Counts) -> None:
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))


@dataclass
class PartitionState:
    """What the worker knows of one partition: where to resume, its counts, recent ids."""

    next_offset: int = 0
    counts: Counts = field(default_factory=Counts)
    recent_ids: deque = field(default_factory=deque)
    recent_set: set = field(default_factory=set)

    def is_duplicate(self, event_id: str, window: int) -> bool:
        """True when ``event_id`` came within the last ``window`` ids; remembers it otherwise."""
        if event_id in self.recent_set:
            return True
        if window:
            self.recent_ids.append(event_id)
            self.recent_set.add(event_id)
            if len(self.recent_ids) > window:
                self.recent_set.discard(self.recent_ids.popleft())
        return False


def split_records(records: Iterable[ConsumerRecord], max_event_bytes: int) -> tuple[list[Event], list[Reject]]:
    """Valid events and rejects, in record order."""
    events: list[Event] = []
    rejects: list[Reject] = []
    for record in records:
        try:
            events.append(parse_record(record, max_event_bytes))
        except InvalidEvent as exc:
            rejects.append(Reject(record, exc.reason))
    return events, rejects


def parse_record(record: ConsumerRecord, max_event_bytes: int) -> Event:
    return parse_event(
        record.value,
        default_ts=record.timestamp / 1000.0 if record.timestamp and record.timestamp > 0 else None,
        default_event_id=f"{record.topic}/{record.partition}/{record.offset}",
        max_bytes=max_event_bytes,
    )


class _HandOver(ConsumerRebalanceListener):
    """Checkpoint before partitions leave; resume from the checkpoint when they arrive."""

    def __init__(self, worker: Worker):
        self.worker = worker

    def on_partitions_revoked(self, revoked):
        if revoked:
            self.worker.checkpoint()

    def on_partitions_assigned(self, assigned):
        self.worker.seek_to_checkpoint(assigned)


class Worker:
    """Consumes the event topic and keeps every touched user's list in Redis fresh.

    The collaborators can be passed in (tests, benchmarks); by default they are built
    from ``settings``. A passed-in consumer must already be subscribed or assigned.
    """

    def __init__(
        self,
        settings: Settings,
        model: Recommender | None = None,
        store: RecommendationStore | None = None,
        consumer: KafkaConsumer | None = None,
        dlq_producer: KafkaProducer | None = None,
        checkpoints: CheckpointStore | None = None,
    ):
        self.settings = settings
        self.model = model if model is not None else make_model(settings.model)
        self.popularity = self.model if isinstance(self.model, Trending) else Trending()
        self.seen: dict[str, set[str]] = {}
        self.last_active: dict[str, float] = {}
        self.partitions: dict[int, PartitionState] = {}
        self.control_offsets: dict[str, dict[int, int]] = {}  # side topic -> partition -> next offset
        self.impressions: OrderedDict[str, dict[str, tuple[str, int]]] = OrderedDict()
        self.checkpoints = checkpoints or CheckpointStore(
            settings.state_dir / "checkpoints" / settings.group_id / settings.topic
        )
        self._restore()
        self.store = store or RecommendationStore(
            make_client(settings.redis_url, retries=-1), settings.redis_prefix, settings.user_list_ttl_s
        )
        self.dlq = dlq_producer or make_producer(settings.kafka_bootstrap)
        if consumer is None:
            ensure_topics(
                settings.kafka_bootstrap,
                {name: settings.topic_partitions for name in
                 (settings.topic, settings.dlq_topic, settings.control_topic, settings.impressions_topic)},
            )
            consumer = KafkaConsumer(
                bootstrap_servers=settings.kafka_bootstrap,
                group_id=settings.group_id,
                enable_auto_commit=False,
                auto_offset_reset="earliest",
                max_poll_records=settings.max_poll_records,
                session_timeout_ms=settings.session_timeout_ms,
                heartbeat_interval_ms=max(settings.session_timeout_ms // 5, 500),
                group_instance_id=settings.worker_instance_id,
                fetch_max_bytes=32 * 1024 * 1024,
                max_partition_fetch_bytes=8 * 1024 * 1024,
            )
            # same partition count and key: a user's events, commands and impressions reach the same worker
            consumer.subscribe([settings.topic, settings.control_topic, settings.impressions_topic],
                               listener=_HandOver(self))
        self.consumer = consumer
        self._popular_written_at = 0.0
        self._similar_written_at = 0.0
        self._items_touched: set[str] = set()
        self._has_similarity = True  # until the model says it has none
        self._dlq_unflushed = False
        self.metrics = WorkerMetrics()
        self.worker_id = settings.worker_instance_id or f"{socket.gethostname()}-{os.getpid()}"
        self._events_since_checkpoint = 0
        self._checkpointed_at = time.monotonic()

    # -- state and checkpoints ---------------------------------------------------------
    @property
    def totals(self) -> Counts:
        totals = Counts()
        for state in self.partitions.values():
            totals.add(state.counts)
        return totals

    def _state(self) -> dict:
        return {
            "model": self.model.state_dict(),
            "popularity": None if self.popularity is self.model else self.popularity.state_dict(),
            "seen": self.seen,
            "last_active": self.last_active,
            "partitions": self.partitions,
            "control_offsets": self.control_offsets,
            "impressions": self.impressions,
        }

    def _restore(self) -> None:
        state = self.checkpoints.load()
        if state is None:
            return
        self.model.load_state_dict(state["model"])
        if state["popularity"] is not None and self.popularity is not self.model:
            self.popularity.load_state_dict(state["popularity"])
        self.seen = state["seen"]
        self.last_active = state["last_active"]
        self.partitions = state["partitions"]
        self.control_offsets = state["control_offsets"]
        self.impressions = state["impressions"]
        log.info("restored checkpoint: offsets %s", {p: s.next_offset for p, s in self.partitions.items()})

    def checkpoint(self) -> None:
        """Save the state and the offsets it reflects (atomically; see ``stream.checkpoint``)."""
        self.expire_idle_users()
        self.checkpoints.save(self._state())
        self._events_since_checkpoint = 0
        self._checkpointed_at = time.monotonic()

    def seek_to_checkpoint(self, assigned: Iterable[TopicPartition]) -> None:
        for tp in assigned:
            if tp.topic == self.settings.topic and tp.partition in self.partitions:
                self.consumer.seek(tp, self.partitions[tp.partition].next_offset)
            elif tp.partition in self.control_offsets.get(tp.topic, {}):
                self.consumer.seek(tp, self.control_offsets[tp.topic][tp.partition])

    def expire_idle_users(self) -> None:
        """Forget users idle longer than ``user_idle_expiry_s`` (event time), bounding memory."""
        ttl = self.settings.user_idle_expiry_s
        if ttl is None or not self.last_active:
            return
        horizon = max(self.last_active.values()) - ttl
        idle = [u for u, ts in self.last_active.items() if ts < horizon]
        for user_id in idle:
            self.forget_user(user_id)
        if idle:
            log.info("forgot %d idle users", len(idle))

    def forget_user(self, user_id: str) -> None:
        """Drop what the worker and its model know of one user (not their list in Redis)."""
        self.last_active.pop(user_id, None)
        self.seen.pop(user_id, None)
        self.model.forget_user(user_id)

    # -- the batch ---------------------------------------------------------------------
    def process(self, records: list[ConsumerRecord], commands: list[ConsumerRecord] = ()) -> Counts:
        """Apply one batch of event records and control commands; returns once their effects
        are in Redis and the DLQ."""
        started = time.perf_counter()
        batch = Counts(consumed=len(records))
        events: list[Event] = []
        item_metadata: dict[str, dict] = {}
        touched_partitions = set()
        for record in records:
            state = self.partitions.get(record.partition)
            if state is None:
                state = self.partitions[record.partition] = PartitionState()
            touched_partitions.add(record.partition)
            state.counts.consumed += 1
            state.next_offset = record.offset + 1
            try:
                event = parse_record(record, self.settings.max_event_bytes)
            except InvalidEvent as exc:
                self._dead_letter(Reject(record, exc.reason))
                state.counts.dead_lettered += 1
                batch.dead_lettered += 1
                continue
            if state.is_duplicate(event.event_id, self.settings.dedupe_window):
                state.counts.deduplicated += 1
                batch.deduplicated += 1
                continue
            state.counts.applied += 1
            batch.applied += 1
            event = self._attribute(event)
            if event.type == ITEM_TYPE:
                item_metadata[event.item_id] = event.context or {}
                self.model.learn_item(event.item_id, item_metadata[event.item_id])
            else:
                events.append(event)
        if events:
            self.model.learn_many(events)
            if self.popularity is not self.model:
                self.popularity.learn_many(events)
            for event in events:
                self.seen.setdefault(event.user_id, set()).add(event.item_id)
                self.last_active[event.user_id] = max(event.ts, self.last_active.get(event.user_id, 0.0))
        forgotten = self._obey(commands)
        users = [u for u in dict.fromkeys(e.user_id for e in events) if u not in forgotten]
        lists = self.model.recommend_many(users, self.settings.top_k, {u: self.seen[u] for u in users})
        explanations = {}
        for user_id, items in lists.items():
            explained = self.model.explain_items(user_id, [item for item, _ in items])
            if explained is not None:
                explanations[user_id] = explained
        now = time.time()
        popular = None
        if events and now - self._popular_written_at >= self.settings.popular_refresh_s:
            popular = self.popularity.top(self.settings.top_k)
            self._popular_written_at = now
        counters = {
            f"{f.name}:{p}": getattr(self.partitions[p].counts, f.name)
            for p in touched_partitions
            for f in fields(Counts)
        }
        similar = self._similar_lists(events, now)
        self._measure(records, started, now)
        self.store.write_batch(lists, self.model.name, now, popular, counters, similar,
                               (self.worker_id, self.metrics.as_dict()), explanations, item_metadata)
        for user_id in forgotten:
            self.store.delete_user(user_id)
        if self._dlq_unflushed:
            self.dlq.flush()
            self._dlq_unflushed = False
        self._events_since_checkpoint += len(records) + len(commands)
        return batch

    def _measure(self, records: list[ConsumerRecord], started: float, now: float) -> None:
        """Batch latency (up to the Redis write), per-event freshness, consumer lag."""
        self.metrics.batch_seconds.observe(time.perf_counter() - started)
        produced_at = np.fromiter((r.timestamp for r in records if r.timestamp and r.timestamp > 0), float)
        self.metrics.freshness_seconds.observe_many(now - produced_at / 1000.0)
        lag = 0
        for tp in self.consumer.assignment():
            highwater = self.consumer.highwater(tp)
            state = self.partitions.get(tp.partition)
            if tp.topic == self.settings.topic and highwater is not None and state is not None:
                lag += max(highwater - state.next_offset, 0)
        self.metrics.consumer_lag = lag
        if isinstance(self.model, Agent):
            arms = self.model.stats()["arms"]
            self.metrics.bandit_arms = {a: {k: arms[a][k] for k in ("pulls", "rewards", "share")} for a in arms}

    def _remember_impressions(self, records: list[ConsumerRecord]) -> None:
        """Keep the recent impressions (recomm_id -> item -> (strategy, position)), bounded."""
        for record in records:
            self.control_offsets.setdefault(record.topic, {})[record.partition] = record.offset + 1
            try:
                impression = orjson.loads(record.value or b"")
                served = {i["item_id"]: (i["strategy"], i["position"]) for i in impression["items"]}
                self.impressions[impression["recomm_id"]] = served
            except (ValueError, KeyError, TypeError) as exc:
                self._dead_letter(Reject(record, f"bad impression: {exc}"))
                continue
            if len(self.impressions) > self.settings.impressions_window:
                self.impressions.popitem(last=False)

    def _attribute(self, event: Event) -> Event:
        """An event that names the answer it came from learns which strategy served its item."""
        recomm_id = (event.context or {}).get("recomm_id")
        served = self.impressions.get(recomm_id) if isinstance(recomm_id, str) else None
        if served is None or event.item_id not in served:
            return event
        strategy, position = served[event.item_id]
        self.metrics.attributed += 1
        return dataclasses.replace(event, context={**event.context, "strategy": strategy, "slot": position})

    def _obey(self, commands: list[ConsumerRecord]) -> set[str]:
        """Apply control commands (``{"action": "forget_user", "user_id": ...}``); returns the
        users forgotten. A malformed command goes to the DLQ like a malformed event."""
        forgotten = set()
        for record in commands:
            self.control_offsets.setdefault(record.topic, {})[record.partition] = record.offset + 1
            try:
                command = orjson.loads(record.value or b"")
                if not isinstance(command, dict) or command.get("action") != "forget_user":
                    raise ValueError("unknown command")
                user_id = command["user_id"]
                if not isinstance(user_id, str):
                    raise ValueError("user_id must be a string")
            except (ValueError, KeyError) as exc:
                self._dead_letter(Reject(record, f"bad control command: {exc}"))
                continue
            self.forget_user(user_id)
            forgotten.add(user_id)
        return forgotten

    def _similar_lists(self, events: list[Event], now: float) -> dict[str, list] | None:
        """Similar-item lists of the items touched since the last refresh, when one is due."""
        if not (self.settings.similar_k and self._has_similarity):
            return None
        self._items_touched.update(e.item_id for e in events)
        if not self._items_touched or now - self._similar_written_at < self.settings.similar_refresh_s:
            return None
        try:
            similar = {i: self.model.similar_items(i, self.settings.similar_k) for i in self._items_touched}
        except NotImplementedError:
            log.warning("model %s has no item similarity: no similar-item lists", self.model.name)
            self._has_similarity = False
            return None
        self._items_touched = set()
        self._similar_written_at = now
        return similar

    def _dead_letter(self, reject: Reject) -> None:
        record = reject.record
        headers = [
            ("reason", reject.reason.encode()),
            ("source", f"{record.topic}/{record.partition}/{record.offset}".encode()),
        ]
        self.dlq.send(self.settings.dlq_topic, key=record.key, value=record.value, headers=headers)
        self._dlq_unflushed = True

    def poll_once(self) -> Counts | None:
        """Poll one batch, apply it, commit its offsets; None when nothing came."""
        batches = self.consumer.poll(
            timeout_ms=self.settings.poll_timeout_ms, max_records=self.settings.max_poll_records
        )
        records, commands, impressions = [], [], []
        for tp, partition_records in batches.items():
            if tp.topic == self.settings.topic:
                records.extend(partition_records)
            elif tp.topic == self.settings.control_topic:
                commands.extend(partition_records)
            else:
                impressions.extend(partition_records)
        self._remember_impressions(impressions)
        if records or commands:
            batch = self.process(records, commands)
            self.consumer.commit()
        else:
            batch = None
        if self._events_since_checkpoint and (
            self._events_since_checkpoint >= self.settings.checkpoint_every_events
            or time.monotonic() - self._checkpointed_at >= self.settings.checkpoint_interval_s
        ):
            self.checkpoint()
        return batch

    def run(self, stop: threading.Event | None = None) -> Counts:
        """Consume until ``stop`` is set; Redis outages block (with backoff) rather than lose events."""
        stop = stop or threading.Event()
        log.info("worker consuming %s as group %s, model %s", self.settings.topic, self.settings.group_id,
                 self.model.name)
        while not stop.is_set():
            self.poll_once()
        return self.totals

    def close(self) -> None:
        """Checkpoint, then release the consumer, the DLQ producer and the store."""
        if self._events_since_checkpoint:
            self.checkpoint()
        self.consumer.close()
        self.dlq.flush()
        self.dlq.close()
        self.store.close()
