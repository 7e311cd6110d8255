"""The consumer worker: Kafka events in, model updates, fresh top-k lists out to Redis.

One loop, one micro-batch at a time (bytewax-style: errors are data):

1. ``poll()`` a batch of records;
2. split it into valid events, duplicates (an ``event_id`` seen recently on the same
   partition) and rejects (each carrying its reason);
3. send the rejects to the dead-letter topic ``<topic>.dlq`` with the original bytes;
4. the model learns the valid events (``learn_many``);
5. once the DLQ sends are flushed, the touched users' fresh lists, the popular list and
   the counters go to Redis in one transaction;
6. only then are the batch's offsets committed.

Exactly-once effect on model state: every ``checkpoint_every_events`` events or
``checkpoint_interval_s`` seconds, and on shutdown, the worker saves its whole state
(model, seen items, dedupe windows, counters) together with the next offset of each
partition it applied (``stream.checkpoint``). On start it loads the newest valid
checkpoint and seeks each partition to its checkpointed offset: events after the
checkpoint are applied once more, to the state they were missing from, and events before
it never again. Counters travel inside that
state and are written to Redis as absolute values, so they reconcile after any crash:
consumed = applied + dead-lettered + deduplicated.

Several workers (scale-out, ``docs/scaling.md``): each worker learns from *every*
partition (a consumer assigned all of them), so every worker holds a whole replica of the
model, kept coherent by construction: the same log, applied exactly once per replica.
*Serving* is partitioned by a consumer group (a second consumer, whose partitions stay
paused): a worker writes lists, counters and dead letters, and commits offsets, only for
the partitions the group gives it. When a worker dies its partitions move to another
worker, which already knows those users; it re-reads from the dead owner's committed
offset without learning again (``serve_only_until``), so the lists the dead worker never
wrote are written, and no event is learned twice.
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
from kafka.structs import OffsetAndMetadata

from online_models import Recommender, make_model, set_torch_threads
from online_models.agent import Agent
from online_models.trending import Trending
from serving.store import RecommendationStore, make_client
from stream.checkpoint import CheckpointStore
from stream.metrics import WorkerMetrics
from stream.producer import make_producer
from stream.schema import ITEM_TYPE, Event, parse_event
from stream.topics import ensure_topics
from streamrec.errors import InvalidEvent, StreamrecError
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


def parse_record(record: ConsumerRecord, max_event_bytes: int) -> Event:
    return parse_event(
        record.value,
        default_ts=record.timestamp / 1000.0 if record.timestamp and record.timestamp > 0 else None,
        default_event_id=f"{record.topic}/{record.partition}/{record.offset}",
        max_bytes=max_event_bytes,
    )


def wait_for_partitions(consumer: KafkaConsumer, topic: str, timeout_s: float = 30.0) -> set[int]:
    """The topic's partitions, once the metadata has them."""
    deadline = time.monotonic() + timeout_s
    while True:
        found = consumer.partitions_for_topic(topic)
        if found:
            return found
        if time.monotonic() > deadline:
            raise StreamrecError(f"topic {topic!r} has no partitions after {timeout_s:.0f} s")
        time.sleep(0.1)


def _idle(last_active: dict[str, float], expiry_s: float | None, newest: float | None = None) -> list[str]:
    """The ids whose newest event is more than ``expiry_s`` older than ``newest`` (default:
    the newest of all)."""
    if expiry_s is None or not last_active:
        return []
    horizon = (max(last_active.values()) if newest is None else newest) - expiry_s
    return [key for key, ts in last_active.items() if ts < horizon]


def _newest_first(store: CheckpointStore) -> float:
    files = list(store.directory.glob("checkpoint-*.bin"))
    return -max((f.stat().st_mtime for f in files), default=0.0)


class _Ownership(ConsumerRebalanceListener):
    """The consumer group decides which partitions this worker serves.

    The callbacks run inside the client's network loop, where no blocking call may be made:
    they only note the change, and the worker acts on it after the poll returns.
    """

    def __init__(self, worker: Worker):
        self.worker = worker

    def on_partitions_revoked(self, revoked):
        self.worker.owned -= {tp.partition for tp in revoked}

    def on_partitions_assigned(self, assigned):
        self.worker.newly_assigned.extend(assigned)


class Worker:
    """Consumes the event topic and keeps every touched user's list in Redis fresh.

    The collaborators can be passed in (tests, benchmarks); by default they are built
    from ``settings``. A passed-in consumer must already be assigned its partitions; the
    worker then serves all of them (no consumer group).
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
        set_torch_threads(settings.torch_threads)
        self.popularity = self.model if isinstance(self.model, Trending) else Trending()
        self.seen: dict[str, set[str]] = {}
        self.last_active: dict[str, float] = {}  # user -> newest event time
        self.item_last_active: dict[str, float] = {}  # item -> newest event time
        self._items_expired_at = float("-inf")  # event time of the last item expiry
        self.partitions: dict[int, PartitionState] = {}
        self.control_offsets: dict[str, dict[int, int]] = {}  # side topic -> partition -> next offset
        self.impressions: OrderedDict[str, dict[str, tuple[str, int]]] = OrderedDict()
        self._last_lists: dict[str, set[str]] = {}  # for online evaluation; not checkpointed
        self.owned: set[int] = set()
        self.newly_assigned: list[TopicPartition] = []
        self.serve_only_until: dict[int, int] = {}
        self.worker_id = settings.worker_instance_id or f"{socket.gethostname()}-{os.getpid()}"
        group_dir = settings.state_dir / "checkpoints" / settings.group_id / settings.topic
        self.checkpoints = checkpoints or CheckpointStore(group_dir / (settings.worker_instance_id or "worker"))
        self._restore()
        self.store = store or RecommendationStore(
            make_client(settings.redis_url, retries=-1), settings.redis_prefix, settings.user_list_ttl_s
        )
        self.dlq = dlq_producer or make_producer(settings.kafka_bootstrap)
        self.membership: KafkaConsumer | None = None
        if consumer is None:
            consumer, self.membership = self._connect()
        self.consumer = consumer
        self._popular_written_at = 0.0
        self._similar_written_at = 0.0
        self._items_touched: set[str] = set()
        self._has_similarity = True  # until the model says it has none
        self._dlq_unflushed = False
        self.metrics = WorkerMetrics()
        self._events_since_checkpoint = 0
        self._checkpointed_at = time.monotonic()

    def _connect(self) -> tuple[KafkaConsumer, KafkaConsumer]:
        """The learner (every partition of the event, control and impression topics) and the
        group member (which partitions of the event topic this worker serves)."""
        settings = self.settings
        side_topics = (settings.control_topic, settings.impressions_topic)
        ensure_topics(settings.kafka_bootstrap,
                      {name: settings.topic_partitions for name in (settings.topic, settings.dlq_topic, *side_topics)})
        learner = KafkaConsumer(
            bootstrap_servers=settings.kafka_bootstrap,
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_poll_records=settings.max_poll_records,
            fetch_max_bytes=32 * 1024 * 1024,
            max_partition_fetch_bytes=8 * 1024 * 1024,
        )
        partitions = []
        for topic in (settings.topic, *side_topics):
            found = wait_for_partitions(learner, topic)
            partitions += [TopicPartition(topic, p) for p in sorted(found)]
        learner.assign(partitions)
        for tp in partitions:
            offset = self._learned_offset(tp)
            if offset is not None:
                learner.seek(tp, offset)
        membership = KafkaConsumer(
            bootstrap_servers=settings.kafka_bootstrap,
            group_id=settings.group_id,
            enable_auto_commit=False,
            session_timeout_ms=settings.session_timeout_ms,
            heartbeat_interval_ms=max(settings.session_timeout_ms // 5, 500),
            group_instance_id=settings.worker_instance_id,
            max_poll_interval_ms=max(settings.session_timeout_ms * 3, 30_000),  # a stuck loop loses its partitions
        )
        membership.subscribe([settings.topic], listener=_Ownership(self))
        return learner, membership

    def _learned_offset(self, tp: TopicPartition) -> int | None:
        if tp.topic == self.settings.topic:
            state = self.partitions.get(tp.partition)
            return state.next_offset if state else None
        return self.control_offsets.get(tp.topic, {}).get(tp.partition)

    def owns(self, partition: int) -> bool:
        """Whether this worker serves the partition (all of them without a consumer group)."""
        return self.membership is None or partition in self.owned

    def poll_membership(self, timeout_ms: int | None = None) -> None:
        """Heartbeat the group; take over the partitions it has just assigned.

        A rebalance revokes every partition first (the eager protocol), and a join needs a
        poll that waits: while this worker serves nothing, the poll waits up to 100 ms.
        """
        if timeout_ms is None:
            timeout_ms = 0 if self.owned else 100
        self.membership.poll(timeout_ms=timeout_ms)  # records never come: every partition is paused
        if self.newly_assigned:
            assigned, self.newly_assigned = self.newly_assigned, []
            self.membership.pause(*assigned)
            self.take_ownership(tp.partition for tp in assigned)

    def take_ownership(self, partitions: Iterable[int]) -> None:
        """Serve newly assigned partitions from where their last owner committed.

        What lies between that commit and what this replica has learned is re-read to be
        served (lists, dead letters, counters) but not learned again.
        """
        caught_up = []
        for p in partitions:
            tp = TopicPartition(self.settings.topic, p)
            committed = self.membership.committed(tp) or 0
            learned = self._learned_offset(tp) or 0
            if committed < learned:
                log.info("partition %d: serving again from %d (learned up to %d)", p, committed, learned)
                self.consumer.seek(tp, committed)
                self.serve_only_until[p] = learned
            else:
                caught_up.append(p)
            self.owned.add(p)
        log.info("serving partitions %s", sorted(self.owned))
        # counts of a partition reach Redis once all it counts has been served
        self.store.write_batch({}, self.model.name, time.time(), counters=self._counters(caught_up))

    def wait_for_ownership(self, timeout_s: float) -> None:
        """Join the group before learning, so the first events are served as they are learned."""
        deadline = time.monotonic() + timeout_s
        while self.membership is not None and not self.owned and time.monotonic() < deadline:
            self.poll_membership(timeout_ms=100)

    # -- state and checkpoints ---------------------------------------------------------
    @property
    def totals(self) -> Counts:
        totals = Counts()
        for state in self.partitions.values():
            totals.add(state.counts)
        return totals

    def _state(self) -> dict:
        """Everything the worker has learned, as live objects: ``CheckpointStore.save``
        pickles them at once, so no extra deep copy is needed."""
        return {
            "model": self.model,
            "popularity": None if self.popularity is self.model else self.popularity,
            "seen": self.seen,
            "last_active": self.last_active,
            "item_last_active": self.item_last_active,
            "partitions": self.partitions,
            "control_offsets": self.control_offsets,
            "impressions": self.impressions,
        }

    def _restore(self) -> None:
        """This worker's newest checkpoint; a new worker starts from a peer's (state transfer)."""
        state = self.checkpoints.load()
        if state is None:
            peers = [CheckpointStore(d) for d in self.checkpoints.directory.parent.glob("*") if d.is_dir()]
            state = next((s for s in (p.load() for p in sorted(peers, key=_newest_first)) if s), None)
        if state is None:
            return
        saved = state["model"]
        if type(saved) is not type(self.model) or saved._get_params() != self.model._get_params():
            raise StreamrecError(
                f"the checkpoint in {self.checkpoints.directory} holds {saved!r}, not {self.model!r}: "
                "serve the same model, or move the checkpoint away to start afresh"
            )
        self.model = saved
        self.popularity = saved if state["popularity"] is None else state["popularity"]
        self.seen = state["seen"]
        self.last_active = state["last_active"]
        self.item_last_active = state.get("item_last_active", {})  # absent from older checkpoints
        self.partitions = state["partitions"]
        self.control_offsets = state["control_offsets"]
        self.impressions = state["impressions"]
        log.info("restored checkpoint: offsets %s", {p: s.next_offset for p, s in self.partitions.items()})

    def checkpoint(self) -> None:
        """Save the state and the offsets it reflects (atomically; see ``stream.checkpoint``)."""
        self.expire_idle()
        self.checkpoints.save(self._state())
        self._events_since_checkpoint = 0
        self._checkpointed_at = time.monotonic()

    def expire_idle(self) -> None:
        """Forget users idle longer than ``user_idle_expiry_s`` and items idle longer than
        ``item_idle_expiry_s`` (event time), so memory stays bounded on an endless stream.

        Items go in one batch at most every tenth of their expiry time: forgetting items
        costs the model a pass over its users, however many items go.
        """
        users = _idle(self.last_active, self.settings.user_idle_expiry_s)
        for user_id in users:
            self.forget_user(user_id)
        items: list[str] = []
        expiry_s = self.settings.item_idle_expiry_s
        newest = max(self.item_last_active.values(), default=None)
        if expiry_s is not None and newest is not None and newest - self._items_expired_at >= expiry_s / 10:
            items = _idle(self.item_last_active, expiry_s, newest)
            self._items_expired_at = newest
            self.forget_items(items)
        if users or items:
            log.info("forgot %d idle users and %d idle items", len(users), len(items))

    def forget_items(self, item_ids: list[str]) -> None:
        """Drop what the model learned of these items (their similar-item lists expire in Redis)."""
        if not item_ids:
            return
        for item_id in item_ids:
            self.item_last_active.pop(item_id, None)
        self.model.forget_items(item_ids)
        if self.popularity is not self.model:
            self.popularity.forget_items(item_ids)

    def state_sizes(self) -> dict[str, int]:
        """How many ids each of the worker's tables holds (what expiry bounds)."""
        return {"users": len(self.last_active), "items": len(self.item_last_active),
                "seen_entries": sum(map(len, self.seen.values())), "impressions": len(self.impressions),
                **{f"model_{name}": n for name, n in self.model.state_sizes().items()}}

    def forget_user(self, user_id: str) -> None:
        """Drop what the worker and its model know of one user (not their list in Redis)."""
        self.last_active.pop(user_id, None)
        self.seen.pop(user_id, None)
        self._last_lists.pop(user_id, None)
        self.model.forget_user(user_id)

    # -- the batch ---------------------------------------------------------------------
    def process(self, records: list[ConsumerRecord], commands: list[ConsumerRecord] = ()) -> Counts:
        """Apply one batch of event records and control commands; returns once their effects
        are in Redis and the DLQ."""
        started = time.perf_counter()
        batch = Counts(consumed=len(records))
        events: list[Event] = []
        item_metadata: dict[str, dict] = {}
        served_users: dict[str, None] = {}  # users of served partitions, in order
        served_items: set[str] = set()
        touched_partitions = set()
        commit: dict[int, int] = {}
        for record in records:
            p, owned = record.partition, self.owns(record.partition)
            if owned:
                commit[p] = record.offset + 1
            if record.offset < self.serve_only_until.get(p, -1):
                self._serve_again(record, served_users)  # learned already, never served
                if record.offset + 1 == self.serve_only_until[p]:
                    touched_partitions.add(p)  # served up to what was counted
                continue
            self.serve_only_until.pop(p, None)
            state = self.partitions.get(p)
            if state is None:
                state = self.partitions[p] = PartitionState()
            touched_partitions.add(p)
            state.counts.consumed += 1
            state.next_offset = record.offset + 1
            try:
                event = parse_record(record, self.settings.max_event_bytes)
            except InvalidEvent as exc:
                if owned:
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
                if owned:
                    served_users[event.user_id] = None
                    served_items.add(event.item_id)
                    self._judge(event)
        if events:
            self.model.learn_many(events)
            if self.popularity is not self.model:
                self.popularity.learn_many(events)
            seen_types = self.settings.seen_types
            for event in events:
                if event.type in seen_types:
                    self.seen.setdefault(event.user_id, set()).add(event.item_id)
                self.last_active[event.user_id] = max(event.ts, self.last_active.get(event.user_id, 0.0))
                self.item_last_active[event.item_id] = max(event.ts, self.item_last_active.get(event.item_id, 0.0))
        forgotten = self._obey(commands)
        users = [u for u in served_users if u not in forgotten and u in self.last_active]
        lists, seen_flags = self._rank(users)
        explanations = {}
        for user_id, items in lists.items():
            explained = self.model.explain_items(user_id, [item for item, _ in items])
            if explained is None:  # a model explains every list or none
                break
            explanations[user_id] = explained
        now = time.time()
        popular = None
        if events and now - self._popular_written_at >= self.settings.popular_refresh_s:
            popular = self.popularity.top(self.settings.top_k)
            self._popular_written_at = now
        counters = self._counters(touched_partitions)  # not mid-replay: those counts are not served yet
        similar = self._similar_lists(served_items, now)
        self._measure(records, started, now)
        if self._dlq_unflushed:  # dead letters are durable before the counters claim them
            self.dlq.flush()
            self._dlq_unflushed = False
        self.store.write_batch(lists, self.model.name, now, popular, counters, similar,
                               (self.worker_id, self.metrics.as_dict()), explanations, item_metadata, seen_flags)
        for user_id in forgotten:
            self.store.delete_user(user_id)
        self._events_since_checkpoint += len(records) + len(commands)
        self._commit(commit)
        return batch

    def _rank(self, users: list[str]) -> tuple[dict[str, list], dict[str, list[bool]]]:
        """Each user's ranking with their seen items left in but flagged, so a request can
        include or exclude them: ``top_k`` unseen items, and the seen ones ranked among them."""
        top_k, eval_k = self.settings.top_k, self.settings.online_eval_k
        depth = top_k + max((min(len(self.seen.get(u, ())), top_k) for u in users), default=0)
        lists, flags = {}, {}
        for user_id, ranked in self.model.recommend_many(users, depth).items():
            seen = self.seen.get(user_id)
            if seen and not seen.isdisjoint([item for item, _ in ranked]):
                marks = [item in seen for item, _ in ranked]
                unseen_at = [n for n, is_seen in enumerate(marks) if not is_seen]
                cut = unseen_at[top_k - 1] + 1 if len(unseen_at) >= top_k else len(ranked)
                kept, marks = ranked[:cut], marks[:cut]
                shown = [kept[n][0] for n in unseen_at[:eval_k]]
            else:  # nothing seen among them: the common case on a busy stream
                kept = ranked[:top_k]
                marks = [False] * len(kept)
                shown = [item for item, _ in kept[:eval_k]]
            lists[user_id], flags[user_id] = kept, marks
            if eval_k:
                self._last_lists[user_id] = set(shown)
        return lists, flags

    def _judge(self, event: Event) -> None:
        """Online HR@k: was the event's item in the list this worker last wrote for the user?"""
        last = self._last_lists.get(event.user_id)
        if last is not None:
            self.metrics.online_evaluated += 1
            self.metrics.online_hits += event.item_id in last

    def _counters(self, partitions: Iterable[int]) -> dict[str, int]:
        """Absolute counts of the served ones among ``partitions``, as Redis hash fields."""
        return {
            f"{f.name}:{p}": getattr(self.partitions[p].counts, f.name)
            for p in partitions
            if self.owns(p) and p in self.partitions
            for f in fields(Counts)
        }

    def _serve_again(self, record: ConsumerRecord, served_users: dict[str, None]) -> None:
        """A record this replica learned while another worker served its partition."""
        try:
            event = parse_record(record, self.settings.max_event_bytes)
        except InvalidEvent as exc:
            self._dead_letter(Reject(record, exc.reason))  # at least once: the old owner may have too
            return
        if event.type != ITEM_TYPE:
            served_users[event.user_id] = None

    def _commit(self, offsets: dict[int, int]) -> None:
        """Commit the served partitions' offsets (once the batch's effects are durable)."""
        if self.membership is None:
            self.consumer.commit()
        elif offsets:
            self.membership.commit({TopicPartition(self.settings.topic, p): OffsetAndMetadata(o, "", -1)
                                    for p, o in offsets.items() if p in self.owned})

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
                payload = orjson.loads(record.value or b"")
                for impression in payload if isinstance(payload, list) else [payload]:  # the API sends arrays
                    served = {i["item_id"]: (i["strategy"], i["position"]) for i in impression["items"]}
                    self.impressions[impression["recomm_id"]] = served
            except (ValueError, KeyError, TypeError) as exc:
                if self.owns(record.partition):
                    self._dead_letter(Reject(record, f"bad impression: {exc}"))
            while len(self.impressions) > self.settings.impressions_window:
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
                if self.owns(record.partition):
                    self._dead_letter(Reject(record, f"bad control command: {exc}"))
                continue
            self.forget_user(user_id)
            forgotten.add(user_id)
        return forgotten

    def _similar_lists(self, items: set[str], now: float) -> dict[str, list] | None:
        """Similar-item lists of the items touched since the last refresh, when one is due."""
        if not (self.settings.similar_k and self._has_similarity):
            return None
        self._items_touched.update(items)
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
        if self.membership is not None:
            self.poll_membership()
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
        self.wait_for_ownership(self.settings.session_timeout_ms / 1000.0)
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
        if self.membership is not None:
            self.membership.close()
        self.dlq.flush()
        self.dlq.close()
        self.store.close()
