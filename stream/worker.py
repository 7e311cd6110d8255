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
it never again. Counters travel inside that state and are written to Redis as absolute
values, so they reconcile after any crash: consumed = applied + dead-lettered + deduplicated.

Several workers (scale-out, ``docs/scaling.md``) share one consumer group. User state is
partitioned like the topic (events are keyed by user): a worker learns and serves only
the partitions the group gives it. On a rebalance it checkpoints before letting
partitions go; a worker given a partition takes its users from the newest checkpoint that
holds it (``export_users`` / ``import_users``) and resumes at that checkpoint's offset.
Item state is shared: each checkpoint publishes what this worker's own learning changed
in it (``item_delta``) to ``<topic>.item-deltas``, and every worker adds the others'
deltas (``merge_item_delta``). A delta is numbered per worker and kept in the checkpoint
that it goes with, so whoever restores that checkpoint publishes it again, and a delta is
merged once however often it is published: the item effect of every event is counted once.
"""

from __future__ import annotations

import dataclasses
import fcntl
import logging
import os
import socket
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Iterable
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np
import orjson
from kafka import (
    ConsumerRebalanceListener,
    KafkaConsumer,
    KafkaProducer,
    TopicPartition,
)
from kafka.consumer.fetcher import ConsumerRecord
from kafka.structs import OffsetAndMetadata

from core.errors import InvalidEvent, StreamrecError
from core.kafka import ensure_topics, make_producer
from core.keys import make_client
from core.metrics import WorkerMetrics
from core.schema import ITEM_TYPE, Event, parse_event
from core.settings import Settings
from online_models import Recommender, make_model, set_torch_threads
from online_models.agent import Agent
from online_models.trending import Trending
from stream.checkpoint import CheckpointStore
from stream.sharing import DeltaLog, decode, encode, is_empty
from stream.sharing import headers as sharing_headers
from stream.sink import ListSink

log = logging.getLogger("streamrec.worker")

MAX_DELTA_BYTES = 64 * 1024 * 1024  # one checkpoint's item delta: the topic, producer and reader allow it


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
    """What the worker knows of one partition: where to resume, its counts, recent ids, and
    its users (whose state moves with the partition)."""

    next_offset: int = 0
    counts: Counts = field(default_factory=Counts)
    recent_ids: deque = field(default_factory=deque)
    recent_set: set = field(default_factory=set)
    users: set = field(default_factory=set)

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


def _claim(directory: Path, name: str) -> tuple[Path, int]:
    """This process's checkpoint folder under ``directory``, locked for its lifetime: ``name``
    if no live process holds it, else ``name-<pid>`` (two workers on one host, no instance id)."""
    for candidate in (name, f"{name}-{os.getpid()}"):
        path = directory / candidate
        path.mkdir(parents=True, exist_ok=True)
        fd = os.open(path / ".lock", os.O_CREAT | os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return path, fd
        except BlockingIOError:
            os.close(fd)
    raise StreamrecError(f"cannot lock a checkpoint folder under {directory}")


class _Ownership(ConsumerRebalanceListener):
    """The consumer group decides which partitions this worker learns and serves.

    The client calls these from inside ``poll()``, in the worker's own thread, before
    leaving and after joining the group: the worker checkpoints before partitions go, and
    takes over the users of the partitions it gets before their records are fetched.
    """

    def __init__(self, worker: Worker):
        self.worker = worker

    def on_partitions_revoked(self, revoked):
        self.worker.release([tp.partition for tp in revoked])

    def on_partitions_assigned(self, assigned):
        self.worker.take_over([tp.partition for tp in assigned])


class Worker:
    """Consumes the event topic and keeps every touched user's list in Redis fresh.

    The collaborators can be passed in (tests, benchmarks); by default they are built
    from ``settings``. A passed-in consumer must already be assigned its partitions; the
    worker then learns and serves all of them (no consumer group, no peers).
    """

    def __init__(
        self,
        settings: Settings,
        model: Recommender | None = None,
        sink: ListSink | None = None,
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
        self.group_dir = settings.state_dir / "checkpoints" / settings.group_id / settings.topic
        self._lock_fd = None
        if checkpoints is None:
            folder, self._lock_fd = _claim(self.group_dir / "workers", settings.worker_instance_id or socket.gethostname())
            checkpoints = CheckpointStore(folder)
        self.checkpoints = checkpoints
        # also the static group membership id: a restarted worker rejoins at once, without
        # waiting for its previous run's session to time out
        self.worker_id = settings.worker_instance_id or checkpoints.directory.name
        self.deltas = DeltaLog(f"{self.worker_id}@{time.time_ns()}")  # this run
        self.shares_items = self._shares_items()
        self._delta_items: dict[str, float] = {}  # items this worker's events touched since its last delta
        self._delta_metadata: dict[str, dict] = {}  # item metadata it learned since then
        self._first_learned_at: float | None = None  # wall time of the first event in the next delta
        self.metrics = WorkerMetrics()
        self._restore()
        self.sink = sink or ListSink(
            make_client(settings.redis_url, retries=-1), settings.redis_prefix, settings.user_list_ttl_s
        )
        self.dlq = dlq_producer or make_producer(settings.kafka_bootstrap, max_request_size=MAX_DELTA_BYTES)
        self.side: KafkaConsumer | None = None  # control, impressions and item deltas: every partition
        self.in_group = consumer is None
        if consumer is None:
            consumer, self.side = self._connect()
        self.consumer = consumer
        self._publish_pending(self.deltas.pending)
        self._popular_written_at = 0.0
        self._similar_written_at = 0.0
        self._items_touched: set[str] = set()
        self._has_similarity = True  # until the model says it has none
        self._dlq_unflushed = False
        self._events_since_checkpoint = 0
        self._checkpointed_at = time.monotonic()

    def _shares_items(self) -> bool:
        """Whether the model can share item state (``item_delta``); without it, each of
        several workers learns items only from its own partitions' events."""
        try:
            for model in {id(m): m for m in (self.model, self.popularity)}.values():
                model.clone().item_delta()
        except NotImplementedError:
            log.warning("model %s does not share item state: with several workers, each learns items only "
                        "from the events of its own partitions", self.model.name)
            return False
        return True

    def _connect(self) -> tuple[KafkaConsumer, KafkaConsumer]:
        """The group member (the partitions of the event topic this worker owns) and the side
        reader (every partition of the control, impression and item-delta topics)."""
        settings = self.settings
        side_topics = (settings.control_topic, settings.impressions_topic, settings.item_deltas_topic)
        ensure_topics(settings.kafka_bootstrap,
                      {name: settings.topic_partitions for name in (settings.topic, settings.dlq_topic, *side_topics)},
                      configs={settings.item_deltas_topic: {
                          "max.message.bytes": str(MAX_DELTA_BYTES),
                          # a worker restores the group's newest checkpoint: it needs only the deltas since
                          "retention.ms": str(24 * 3600 * 1000)}})
        side = KafkaConsumer(
            bootstrap_servers=settings.kafka_bootstrap,
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            fetch_max_bytes=2 * MAX_DELTA_BYTES,
            max_partition_fetch_bytes=MAX_DELTA_BYTES,
        )
        partitions = []
        for topic in side_topics:
            partitions += [TopicPartition(topic, p) for p in sorted(wait_for_partitions(side, topic))]
        side.assign(partitions)
        for tp in partitions:
            offset = self.control_offsets.get(tp.topic, {}).get(tp.partition)
            if offset is not None:
                side.seek(tp, offset)
        member = KafkaConsumer(
            bootstrap_servers=settings.kafka_bootstrap,
            group_id=settings.group_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_poll_records=settings.max_poll_records,
            fetch_max_bytes=32 * 1024 * 1024,
            max_partition_fetch_bytes=8 * 1024 * 1024,
            session_timeout_ms=settings.session_timeout_ms,
            heartbeat_interval_ms=max(settings.session_timeout_ms // 5, 500),
            group_instance_id=self.worker_id,
            max_poll_interval_ms=max(settings.session_timeout_ms * 3, 30_000),  # a stuck loop loses its partitions
        )
        member.subscribe([settings.topic], listener=_Ownership(self))
        return member, side

    # -- ownership ---------------------------------------------------------------------
    def release(self, partitions: list[int]) -> None:
        """Before the group moves partitions: checkpoint, so their next owner resumes here.

        The users stay until the new assignment is known (it often gives them back)."""
        if partitions and self.partitions:
            self.checkpoint()

    def take_over(self, assigned: list[int]) -> None:
        """Own exactly ``assigned``: drop the other partitions' users, and for each assigned
        partition keep what this worker has, unless a checkpoint in the group holds it
        further on: then adopt the users from that checkpoint, and publish its pending delta
        again."""
        for p in [p for p in self.partitions if p not in assigned]:
            self._drop_partition(p)
        # each checkpoint's partition -> offset, read once; this worker's own too: it may have restored a peer's
        held = {folder: (CheckpointStore(folder).summary() or {}).get("partitions") or {}
                for folder in self.group_dir.glob("workers/*")}
        peers: dict[Path, dict | None] = {}
        for p in sorted(assigned):
            best, source = self.partitions[p].next_offset if p in self.partitions else -1, None
            for folder, offsets in held.items():
                if offsets.get(p, -1) > best:
                    best, source = offsets[p], folder
            if source is not None:
                if source not in peers:
                    peers[source] = CheckpointStore(source).load()
                self._adopt_partition(p, peers[source])
            state = self.partitions.setdefault(p, PartitionState())
            self.consumer.seek(TopicPartition(self.settings.topic, p), state.next_offset)
        for state in peers.values():
            if state is not None:
                self._publish_pending(state["deltas"].pending)
        log.info("serving partitions %s", sorted(assigned))

    def _adopt_partition(self, p: int, peer: dict | None) -> None:
        """Take partition ``p``'s users and position from a peer's checkpoint."""
        if p in self.partitions:
            self._drop_partition(p)
        if peer is None:
            return
        self._check_model(peer["model"], "a peer's checkpoint")
        state = peer["partitions"][p]
        self.model.import_users(peer["model"].export_users(state.users))
        if self.popularity is not self.model:
            self.popularity.import_users(peer["popularity"].export_users(state.users))
        for user_id in state.users:
            if user_id in peer["seen"]:
                self.seen[user_id] = peer["seen"][user_id]
            if user_id in peer["last_active"]:
                self.last_active[user_id] = peer["last_active"][user_id]
        self.partitions[p] = state
        log.info("partition %d: took %d users over at offset %d", p, len(state.users), state.next_offset)

    def _drop_partition(self, p: int) -> None:
        for user_id in self.partitions.pop(p).users:
            self.forget_user(user_id)

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
            "deltas": self.deltas,
        }

    def _check_model(self, saved: Recommender, where: str) -> None:
        if type(saved) is not type(self.model) or saved._get_params() != self.model._get_params():
            raise StreamrecError(
                f"{where} in {self.group_dir} holds {saved!r}, not {self.model!r}: "
                "serve the same model, or move the checkpoints away to start afresh"
            )

    def _restore(self) -> None:
        """The group's newest checkpoint, this worker's or a peer's: its item state is the
        freshest, so the fewest item deltas are needed after it. Users whose partitions
        this worker is not given are dropped at the first assignment."""
        files = sorted(self.group_dir.glob("workers/*/checkpoint-*.bin"), key=lambda f: f.stat().st_mtime)
        if self.checkpoints.directory not in {f.parent for f in files}:  # a store passed in (tests)
            files += sorted(self.checkpoints.directory.glob("checkpoint-*.bin"))
        state = next((s for s in (CheckpointStore(f.parent).load() for f in reversed(files)) if s), None)
        if state is None:
            return
        source = self.deltas.source
        self._check_model(state["model"], "the checkpoint")
        self.model = state["model"]
        self.popularity = self.model if state["popularity"] is None else state["popularity"]
        self.seen = state["seen"]
        self.last_active = state["last_active"]
        self.item_last_active = state["item_last_active"]
        self.partitions = state["partitions"]
        self.control_offsets = state["control_offsets"]
        self.impressions = state["impressions"]
        self.deltas = state["deltas"]
        self.deltas.adopt(source)
        log.info("restored checkpoint: offsets %s", {p: s.next_offset for p, s in self.partitions.items()})

    def checkpoint(self) -> None:
        """Save the state and the offsets it reflects (atomically; see ``stream.checkpoint``),
        then publish the item delta that goes with it."""
        self.expire_idle()
        pending = self._make_delta()
        self.checkpoints.save(self._state(), summary={
            "worker": self.worker_id, "partitions": {p: s.next_offset for p, s in self.partitions.items()}})
        self._publish_pending(pending)
        self._events_since_checkpoint = 0
        self._checkpointed_at = time.monotonic()

    # -- item deltas -------------------------------------------------------------------
    def _make_delta(self) -> tuple[str, int, bytes] | None:
        """Number and encode what this worker's own learning changed in item state."""
        if not self.shares_items:
            return None
        parts = {"model": self.model.item_delta()}  # drained even without peers, so tallies stay small
        if self.popularity is not self.model:
            parts["popularity"] = self.popularity.item_delta()
        if not self.in_group or (all(is_empty(part) for part in parts.values()) and not self._delta_metadata):
            return None
        items, metadata = self._delta_items, self._delta_metadata
        parts["worker"] = {
            "item_ids": np.array(list(items), dtype=str), "item_ts": np.fromiter(items.values(), float, len(items)),
            "metadata_ids": np.array(list(metadata), dtype=str),
            "metadata_json": np.array([orjson.dumps(m).decode() for m in metadata.values()], dtype=str),
            "first_learned_at": self._first_learned_at or time.time(),
        }
        self._delta_items, self._delta_metadata, self._first_learned_at = {}, {}, None
        return self.deltas.make(encode(parts))

    def _publish_pending(self, pending: tuple[str, int, bytes] | None) -> None:
        """Publish a delta (again: merging is idempotent); durable before this returns."""
        if pending is None or not self.in_group:
            return
        source, seq, payload = pending
        self.dlq.send(self.settings.item_deltas_topic, key=source.encode(), value=payload,
                      headers=sharing_headers(source, seq))
        self.dlq.flush()
        self.metrics.deltas_published += 1
        self.metrics.delta_bytes_published += len(payload)

    def _merge_deltas(self, records: list[ConsumerRecord]) -> None:
        """Add the peers' item deltas not merged yet; a malformed one goes to the DLQ."""
        for record in records:
            self.control_offsets.setdefault(record.topic, {})[record.partition] = record.offset + 1
            try:
                head = {key: value.decode() for key, value in record.headers}
                source, seq = head["source"], int(head["seq"])
                if not self.deltas.take(source, seq):
                    continue
                parts = decode(record.value)
                self.model.merge_item_delta(parts.get("model", {}))
                if self.popularity is not self.model:
                    self.popularity.merge_item_delta(parts.get("popularity", {}))
            except (KeyError, ValueError, IndexError, TypeError, UnicodeDecodeError) as exc:
                # e.g. a peer running another model: say why, once, rather than stop every worker
                log.error("item delta %s/%d/%d not merged: %r", record.topic, record.partition, record.offset, exc)
                if self._owns_side(record.partition):
                    self._dead_letter(Reject(record, f"bad item delta: {exc!r}"))
                continue
            shared = parts.get("worker", {})
            for item_id, ts in zip(shared.get("item_ids", ()), shared.get("item_ts", ())):
                item_id = str(item_id)
                self.item_last_active[item_id] = max(float(ts), self.item_last_active.get(item_id, 0.0))
            for item_id, text in zip(shared.get("metadata_ids", ()), shared.get("metadata_json", ())):
                self.model.learn_item(str(item_id), orjson.loads(str(text)))
            self.metrics.deltas_merged += 1
            self._events_since_checkpoint += 1  # so a checkpoint follows: it holds the merge
            if "first_learned_at" in shared:
                self.metrics.item_staleness_seconds.observe(time.time() - float(shared["first_learned_at"]))

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
        for state in self.partitions.values():
            state.users.discard(user_id)
        self.model.forget_user(user_id)

    # -- the batch ---------------------------------------------------------------------
    def process(self, records: list[ConsumerRecord], commands: list[ConsumerRecord] = ()) -> Counts:
        """Apply one batch of event records and control commands; returns once their effects
        are in Redis and the DLQ."""
        started = time.perf_counter()
        batch = Counts(consumed=len(records))
        events: list[Event] = []
        item_metadata: dict[str, dict] = {}
        touched_users: dict[str, None] = {}  # in order
        touched_items: set[str] = set()
        touched_partitions = set()
        for record in records:
            p = record.partition
            state = self.partitions.get(p)
            if state is None:
                state = self.partitions[p] = PartitionState()
            touched_partitions.add(p)
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
                state.users.add(event.user_id)
                touched_users[event.user_id] = None
                touched_items.add(event.item_id)
                self._judge(event)
        if events:
            self.model.learn_many(events)
            if self.popularity is not self.model:
                self.popularity.learn_many(events)
            seen_types = self.settings.seen_types
            item_last_active = self.item_last_active
            for event in events:
                if event.type in seen_types:
                    self.seen.setdefault(event.user_id, set()).add(event.item_id)
                self.last_active[event.user_id] = max(event.ts, self.last_active.get(event.user_id, 0.0))
                item_last_active[event.item_id] = max(event.ts, item_last_active.get(event.item_id, 0.0))
            if self.shares_items:
                self._delta_items.update((item, item_last_active[item]) for item in touched_items)
                self._first_learned_at = self._first_learned_at or time.time()
        if self.shares_items:
            self._delta_metadata.update(item_metadata)
        forgotten = self._obey(commands)
        users = [u for u in touched_users if u not in forgotten and u in self.last_active]
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
        counters = self._counters(touched_partitions)
        similar = self._similar_lists(touched_items, now)
        self._measure(records, started, now)
        if self._dlq_unflushed:  # dead letters are durable before the counters claim them
            self.dlq.flush()
            self._dlq_unflushed = False
        self.sink.write_batch(lists, self.model.name, now, popular, counters, similar,
                               (self.worker_id, self.metrics.as_dict()), explanations, item_metadata, seen_flags)
        self.sink.delete_users(sorted(forgotten))
        self._events_since_checkpoint += len(records) + len(commands)
        self._commit()
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
        """Absolute counts of ``partitions``, as Redis hash fields."""
        return {f"{f.name}:{p}": getattr(self.partitions[p].counts, f.name)
                for p in partitions if p in self.partitions for f in fields(Counts)}

    def _commit(self) -> None:
        """Commit the consumed offsets (once the batch's effects are durable). They show
        the group's lag; a worker resumes from the offsets in its checkpoints."""
        if not self.in_group:
            self.consumer.commit()
        elif self.partitions:
            self.consumer.commit({TopicPartition(self.settings.topic, p): OffsetAndMetadata(s.next_offset, "", -1)
                                  for p, s in self.partitions.items()})

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
                if self._owns_side(record.partition):
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
                if self._owns_side(record.partition):
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

    def _owns_side(self, partition: int) -> bool:
        """Every worker reads the side topics whole; the owner of the event partition of the
        same number dead-letters a bad side record, so it is dead-lettered once."""
        return not self.in_group or partition in self.partitions

    def poll_once(self) -> Counts | None:
        """Poll one batch, apply it, commit its offsets; None when nothing came."""
        polled = list(self.side.poll(timeout_ms=0).items()) if self.side is not None else []
        polled += self.consumer.poll(timeout_ms=self.settings.poll_timeout_ms,
                                     max_records=self.settings.max_poll_records).items()
        records, commands, impressions, deltas = [], [], [], []
        by_topic = {self.settings.topic: records, self.settings.control_topic: commands,
                    self.settings.impressions_topic: impressions, self.settings.item_deltas_topic: deltas}
        for tp, partition_records in polled:
            by_topic[tp.topic].extend(partition_records)
        self._remember_impressions(impressions)
        self._merge_deltas(deltas)
        batch = self.process(records, commands) if records or commands else None
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
        """Checkpoint, then release the consumers, the producer, the store and the folder."""
        if self._events_since_checkpoint:
            self.checkpoint()
        self.consumer.close()
        if self.side is not None:
            self.side.close()
        self.dlq.flush()
        self.dlq.close()
        self.sink.close()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
