"""The consumer worker: the shell that owns Kafka and Redis and drives the parts.

One loop, one micro-batch at a time:

1. ``poll()`` a batch of event records, and whatever the side topics brought (control
   commands, impressions, peers' item deltas);
2. the pipeline (``stream.pipeline``, no I/O) learns it and returns its effects;
3. the dead letters go to ``<topic>.dlq`` with the original bytes, and are flushed;
4. the effects go to Redis in one transaction (``stream.sink``), on a writer thread
   (``stream.write_behind``): the loop goes on with steps 1-3 of the next batch meanwhile,
   and waits for this write before it hands the next one over;
5. only once the write is done are the batch's offsets committed;
6. when one is due, a checkpoint (``stream.ownership``): the state is taken at once, and
   made durable once the write in flight is done (at the next batch's wait for it, so the
   loop does not stand idle for it), then its item delta is published (``stream.sharing``).

Several workers share one consumer group: see ``stream.ownership`` and ``docs/scaling.md``.
"""

from __future__ import annotations

import dataclasses
import gc
import logging
import threading
import time
from collections.abc import Callable, Sequence
from operator import attrgetter

import numpy as np
from kafka import KafkaProducer

from core.kafka import ensure_topics, make_producer
from core.keys import encode_lists, make_client
from core.metrics import WorkerMetrics, increments
from core.settings import Settings
from online_models import Recommender, make_model, set_scoring, set_torch_threads
from stream.checkpoint import CheckpointStore
from stream.consumer import (
    CommitError,
    CommitFailed,
    Partition,
    Reader,
    wait_for_partitions,
)
from stream.ownership import Ownership
from stream.pipeline import Counts, Pipeline, RecordLike, Reject
from stream.sharing import MAX_DELTA_BYTES, ItemSharing
from stream.sink import ListSink
from stream.write_behind import WriteBehind

log = logging.getLogger("streamrec.worker")
_timestamp = attrgetter("timestamp")

YOUNG_OBJECTS_PER_COLLECTION = 50_000
"""The collector's first threshold in a worker process (Python's default: 700). A batch's
records, events and their dicts live until the batch ends and then go by reference counting;
collected every 700 allocations they were walked again, promoted, and counted towards full
collections: about 8% of a trending worker's CPU, against under 2% at this threshold
(measured on the ingest bench's 20k events)."""


@dataclasses.dataclass
class _Written:
    """What the loop does once a write is done: commit ``offsets``; for an event batch's,
    observe the latency since ``started`` (``perf_counter``) and the freshness of the events
    ``produced_at`` (ms)."""

    offsets: dict[Partition, int]
    started: float | None = None  # None: not an event batch's write (served items counted while idle)
    produced_at: np.ndarray | None = None


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
        consumer: Reader | None = None,
        dlq_producer: KafkaProducer | None = None,
        checkpoints: CheckpointStore | None = None,
    ):
        self.settings = settings
        gc.set_threshold(YOUNG_OBJECTS_PER_COLLECTION, *gc.get_threshold()[1:])
        model = model if model is not None else make_model(settings.model, **settings.model_params)
        set_torch_threads(settings.torch_threads)
        set_scoring(settings.torch_device, settings.candidate_index_min_items)
        self.metrics = WorkerMetrics()
        self.pipeline = Pipeline(settings, model, self.metrics)
        self.in_group = consumer is None
        self.sharing = ItemSharing(self.pipeline, self.metrics, with_peers=self.in_group)
        self.ownership = Ownership(settings, self.pipeline, self.sharing, checkpoints)  # restores
        self.worker_id = self.ownership.worker_id
        self.sink = sink or ListSink(make_client(settings.redis_url, retries=-1), settings.redis_prefix,
                                     settings.user_list_ttl_s, history_events=settings.user_history_events)
        self._metrics_written = self.metrics.as_dict()  # what the per-minute series last took from it
        self.producer = dlq_producer or make_producer(settings.kafka_bootstrap, max_request_size=MAX_DELTA_BYTES)
        self.side: Reader | None = None  # control, impressions and item deltas: every partition
        if consumer is None:
            consumer, self.side = self._connect()
        self.consumer = consumer
        self._publish(self.sharing.log.pending)
        self._dlq_unflushed = False
        self._writes: WriteBehind[_Written] = WriteBehind()  # Redis is written from its thread only
        self._uncommitted: dict[Partition, int] = {}  # written, not committed yet
        # a checkpoint's state taken (when), made durable once the write in flight is
        self._checkpoint_taken: tuple[Callable[[], object], float] | None = None
        self._checkpoint_unreported = False  # made durable, not yet in a write's metrics
        self._learned_unwritten = False  # a batch learned, its write not handed over (an error came between)

    @property
    def model(self) -> Recommender:
        return self.pipeline.model

    @property
    def totals(self) -> Counts:
        return self.pipeline.totals

    def _connect(self) -> tuple[Reader, Reader]:
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
        side = Reader({
            "bootstrap.servers": settings.kafka_bootstrap,
            # librdkafka wants a group id; assigned, not subscribed, this reader never joins it nor commits
            "group.id": f"{settings.group_id}.side",
            "auto.offset.reset": "earliest",
            "fetch.max.bytes": 2 * MAX_DELTA_BYTES,
            "max.partition.fetch.bytes": MAX_DELTA_BYTES,
            "receive.message.max.bytes": 2 * MAX_DELTA_BYTES + 1024 * 1024,  # a fetch's answer, with room to spare
        }, with_headers=True)  # item deltas carry their source and number in headers
        partitions = [Partition(topic, p) for topic in side_topics for p in sorted(wait_for_partitions(side, topic))]
        control_offsets = self.pipeline.control_offsets
        side.assign(partitions, {tp: control_offsets[tp.topic][tp.partition] for tp in partitions
                                 if tp.partition in control_offsets.get(tp.topic, {})})
        member = Reader({
            "bootstrap.servers": settings.kafka_bootstrap,
            "group.id": settings.group_id,
            "auto.offset.reset": "earliest",
            "fetch.max.bytes": 32 * 1024 * 1024,
            "max.partition.fetch.bytes": 8 * 1024 * 1024,
            "session.timeout.ms": settings.session_timeout_ms,
            "heartbeat.interval.ms": max(settings.session_timeout_ms // 5, 500),
            "group.instance.id": self.worker_id,
            "max.poll.interval.ms": max(settings.session_timeout_ms * 3, 30_000),  # a stuck loop loses its partitions
        }, max_records=settings.max_poll_records)
        member.subscribe([settings.topic],
                         on_assigned=lambda assigned: self.take_over([tp.partition for tp in assigned]),
                         on_revoked=lambda revoked: self.release([tp.partition for tp in revoked]))
        return member, side

    # -- ownership (called from inside poll) -------------------------------------------
    def release(self, partitions: list[int]) -> None:
        """Before the group moves partitions: the write in flight done (their next owner's
        lists go after it), and a checkpoint, so their next owner resumes here."""
        self._await_write()
        if self.ownership.must_release(partitions):
            self.checkpoint()

    def take_over(self, assigned: list[int]) -> None:
        """Own exactly ``assigned``: resume each where its newest checkpoint left it."""
        resume_at, pending = self.ownership.take_over(assigned)
        for p, offset in resume_at.items():
            self.consumer.seek(Partition(self.settings.topic, p), offset)
        for delta in pending:
            self._publish(delta)
        gc.freeze()  # the state just restored is long-lived too (see checkpoint)

    def checkpoint(self) -> None:
        """Save the state and the offsets it reflects (durable once the batches it holds
        are in Redis), then publish the item delta that goes with it."""
        self._take_checkpoint()
        self._await_write()

    def _take_checkpoint(self) -> None:
        """Take the state for a checkpoint now (serialized as it is); ``_await_write`` makes
        it durable and publishes its delta once the write in flight is done, since the state
        holds that write's batch."""
        if self._checkpoint_taken is not None:  # the one before first (it holds older offsets)
            self._await_write()
        self._checkpoint_taken = self.ownership.prepare_checkpoint(), time.time()
        # The models' state is millions of long-lived, acyclic Python objects that each full
        # collection would walk again (about a fifth of the worker's CPU): what exists now
        # leaves the collector's view; it is still freed by reference counting.
        gc.freeze()

    def _finish_checkpoint(self) -> None:
        """The checkpoint taken made durable (every batch it holds is written), its delta published."""
        (finish, taken_at), self._checkpoint_taken = self._checkpoint_taken, None
        self._publish(finish())
        self.metrics.last_checkpoint_at = taken_at  # it holds what was learned by then
        self._checkpoint_unreported = True

    def _publish(self, pending) -> None:
        self.sharing.publish(self.producer, self.settings.item_deltas_topic, pending)

    # -- the batch ---------------------------------------------------------------------
    def process(self, records: Sequence[RecordLike], commands: Sequence[RecordLike] = ()) -> Counts:
        """Apply one batch of event records and control commands; returns once their effects
        are in Redis and the DLQ, and their offsets' commit sent (acknowledged outside a group)."""
        counts = self._apply(records, commands)
        self.settle()
        return counts

    def _apply(self, records: Sequence[RecordLike], commands: Sequence[RecordLike] = (),
               consumed: Sequence[RecordLike] = ()) -> Counts:
        """Learn one batch and hand its write over; the previous batch's write is waited for
        (and its offsets committed) first, and this one's is left in flight. ``consumed``:
        what else was read with it (committed with it when the worker is not in a group)."""
        started = time.perf_counter()
        self._learned_unwritten = True
        effects = self.pipeline.process(records, commands)
        self.sharing.note(effects.touched_items, effects.item_metadata)
        self._dead_letter(effects.dead_letters)
        if self._dlq_unflushed:  # dead letters are durable before the counters claim them
            self.producer.flush()
            self._dlq_unflushed = False
        offsets = self._offsets((*records, *commands, *consumed))  # this batch's, not the pipeline's by then
        self.settle()
        self._observe(effects.written_at)
        series = {name: n for name, n in dataclasses.asdict(effects.counts).items() if n}
        series.update(self._metrics_grown())
        self._checkpoint_unreported = False  # this write's metrics say it
        exposures, forgotten = self.pipeline.exposures.drain(), sorted(effects.forgotten)
        stamps = np.array(list(map(_timestamp, records)), dtype=float)  # None: nan
        produced_at = stamps[stamps > 0]
        sink, worker_metrics = self.sink, (self.worker_id, self._metrics_written)
        # encoded here, not on the writer thread: while the loop holds the interpreter, the
        # writer would wait for it at each step, and the write (which the next batch waits for) with it
        encoded = encode_lists(effects.lists, effects.model, effects.written_at, effects.explanations)

        def write() -> tuple[float, float]:
            sink.write_batch(effects.lists, effects.model, effects.written_at, effects.popular, effects.counters,
                             effects.similar, worker_metrics, effects.explanations, effects.item_metadata,
                             history=effects.history, series=series, exposures=exposures, encoded=encoded)
            sink.delete_users(forgotten)
            return time.time(), time.perf_counter()  # when it was durable: freshness, latency

        self._writes.hand_over(write, _Written(offsets, started, produced_at))
        self._learned_unwritten = False
        self.ownership.note(len(records) + len(commands))
        return effects.counts

    def settle(self, commit_wait: bool = False) -> None:
        """Wait for the write in flight, then commit the offsets of what is written: on
        return every batch handed over is in Redis, and its commit sent (``commit_wait``:
        acknowledged). Raises the write's error."""
        self._await_write()
        offsets, self._uncommitted = self._uncommitted, {}
        self._commit(offsets, commit_wait)

    def _await_write(self) -> None:
        """Wait for the write in flight (its error raised here); its offsets wait for ``settle``
        (not committed from inside ``poll()``, where ``release`` calls this). Then a
        checkpoint taken meanwhile is made durable."""
        done = self._writes.wait()
        if done is not None:
            written, result = done
            if written.started is not None:  # an event batch's
                durable_at, durable_perf = result
                self.metrics.batch_seconds.observe(durable_perf - written.started)
                self.metrics.freshness_seconds.observe_many(durable_at - written.produced_at / 1000.0)
            self._uncommitted.update(written.offsets)
        if self._checkpoint_taken is not None:
            self._finish_checkpoint()

    def _offsets(self, records: Sequence[RecordLike]) -> dict[Partition, int]:
        """The offsets to commit once this batch is durable: in a group, where the pipeline
        stands on each of its partitions now; otherwise past the records consumed."""
        if self.in_group:
            return {Partition(self.settings.topic, p): s.next_offset
                    for p, s in self.pipeline.partitions.items()}
        return {Partition(r.topic, r.partition): r.offset + 1 for r in records}

    def _commit(self, offsets: dict[Partition, int], wait: bool = False) -> None:
        """Commit a durable batch's offsets. In a group they only show its lag (a worker
        resumes from the offsets in its checkpoints), so the loop does not wait for the
        broker's answer: a failed commit is logged, and the next batch's commit goes past it."""
        if self.in_group:  # not the partitions the group moved away meanwhile: their new owner's now
            offsets = {tp: at for tp, at in offsets.items() if tp.partition in self.pipeline.partitions}
        if not offsets:
            return
        try:
            if not self.in_group:
                self.consumer.commit(offsets)
            elif wait:  # once: a retry would only hold a stopping worker (and its checkpoint) up
                self.consumer.commit(offsets, attempts=1)
            else:
                self.consumer.commit_async(offsets)
        except CommitFailed as exc:
            # the group moved on while this worker was held up (a broker restart, a long
            # checkpoint): the next poll rejoins, and the checkpoints say where to resume
            log.warning("offsets not committed: %s", exc)
        except CommitError as exc:
            if not self.in_group:  # outside a group the committed offsets are where a reader resumes
                raise
            log.error("%s (a worker resumes from its checkpoints; the next commit goes past it)", exc)

    def _observe(self, now: float) -> None:
        """The metrics a batch reports with its write: consumer lag, partitions, table sizes.
        (Its latency and freshness are observed once the write is done: ``settle``.)"""
        lag = 0
        partitions = self.pipeline.partitions
        for tp in self.consumer.assignment():
            highwater = self.consumer.highwater(tp)
            state = partitions.get(tp.partition)
            if tp.topic == self.settings.topic and highwater is not None and state is not None:
                lag += max(highwater - state.next_offset, 0)
        self.metrics.consumer_lag = lag
        self.metrics.partitions = sorted(partitions)
        self.metrics.users, self.metrics.items = len(self.pipeline.last_active), len(self.pipeline.item_last_active)
        self.metrics.deltas_merged_through = dict(self.sharing.log.merged)
        self.metrics.last_batch_at = now

    def _report(self) -> None:
        """Write this worker's metrics outside an event batch: what it merged and published
        (``deltas_merged_through``, ``last_checkpoint_at``) shows without waiting for events."""
        self.settle()
        self.metrics.deltas_merged_through = dict(self.sharing.log.merged)
        series = self._metrics_grown()
        self._checkpoint_unreported = False
        sink, model, now, metrics = self.sink, self.model.name, time.time(), (self.worker_id, self._metrics_written)
        self._writes.hand_over(lambda: sink.write_batch({}, model, now, worker_metrics=metrics, series=series),
                              _Written({}))  # a report: nothing to commit

    def _metrics_grown(self) -> dict[str, float]:
        """What the metrics gained since they were last written (the dashboard's per-minute series)."""
        now = self.metrics.as_dict()
        grown, self._metrics_written = increments(self._metrics_written, now), now
        return grown

    def _owns_side(self, partition: int) -> bool:
        """Every worker reads the side topics whole; the owner of the event partition of the
        same number answers for a side record (dead-letters it, counts its exposure)."""
        return not self.in_group or partition in self.pipeline.partitions

    def _dead_letter(self, rejects: list[Reject]) -> None:
        """Send rejects to the DLQ: the event records' all, a side record's only by its owner
        (``_owns_side``), so that it is dead-lettered once."""
        for reject in rejects:
            record = reject.record
            if record.topic != self.settings.topic and not self._owns_side(record.partition):
                continue
            headers = [
                ("reason", reject.reason.encode()),
                ("source", f"{record.topic}/{record.partition}/{record.offset}".encode()),
            ]
            self.producer.send(self.settings.dlq_topic, key=record.key, value=record.value, headers=headers)
            self._dlq_unflushed = True

    def poll_once(self) -> Counts | None:
        """Poll one batch, learn it and hand its write over (the previous batch's write ran
        while this one was polled and learned); None when nothing came. Its offsets are
        committed once its write is done: at the next batch, or ``settle``."""
        polled = list(self.side.poll(timeout_ms=0).items()) if self.side is not None else []
        polled += self.consumer.poll(timeout_ms=self.settings.poll_timeout_ms,
                                     max_records=self.settings.max_poll_records).items()
        records, commands, impressions, deltas = [], [], [], []
        by_topic = {self.settings.topic: records, self.settings.control_topic: commands,
                    self.settings.impressions_topic: impressions, self.settings.item_deltas_topic: deltas}
        for tp, partition_records in polled:
            by_topic[tp.topic].extend(partition_records)
        self._dead_letter(self.pipeline.remember_impressions(impressions, self._owns_side))
        merged, rejects = self.sharing.merge(deltas)
        self._dead_letter(rejects)
        self.ownership.note(merged)  # so a checkpoint follows: it holds the merge
        batch = self._apply(records, commands, impressions + deltas) if records or commands else None
        # no events: commit what is written, but do not wait for a write under way (a Redis
        # outage holds the loop up at the next batch, once it is learned, or at a checkpoint
        # or report due); served items are counted while no events come too, or go with the
        # next write
        if batch is None and not self._writes.busy:
            self.settle()
            # outside a group the consumed offsets are committed (in a group the checkpoints hold them)
            consumed = {} if self.in_group else self._offsets(impressions + deltas)
            if impressions:
                series, exposures, sink = self._metrics_grown(), self.pipeline.exposures.drain(), self.sink
                self._writes.hand_over(lambda: sink.add_series(series, exposures), _Written(consumed))
            elif consumed:
                self._commit(consumed)
        if self.ownership.due():
            if batch is None:  # nothing to learn while the write in flight goes on: at once
                self.checkpoint()
            else:  # durable once this batch's write is, at the next batch's wait for it
                self._take_checkpoint()
        # a checkpoint done, or deltas merged, are reported while no events come too (the
        # next batch's write carries them otherwise)
        if batch is None and (merged or self._checkpoint_unreported):
            self._report()
        return batch

    def run(self, stop: threading.Event | None = None) -> Counts:
        """Consume until ``stop`` is set; Redis outages block (with backoff) rather than lose events."""
        stop = stop or threading.Event()
        log.info("worker consuming %s as group %s, model %s", self.settings.topic, self.settings.group_id,
                 self.model.name)
        while not stop.is_set():
            self.poll_once()
        self.settle(commit_wait=True)
        return self.totals

    def close(self) -> None:
        """The write in flight done and committed, a checkpoint, then release the consumers,
        the producer, the store and the folder (a write that failed: no checkpoint, and its
        error raised once all is released)."""
        try:
            self.settle(commit_wait=True)
            if self._learned_unwritten:  # a checkpoint now would claim a batch Redis never got
                log.warning("no checkpoint at close: a batch was learned but its write never started; "
                            "the next owner resumes from the last checkpoint")
            elif self.ownership.events_since_checkpoint:
                self.checkpoint()
        finally:
            self._writes.close()
            self._release_clients()

    def _release_clients(self) -> None:
        self.consumer.close()
        if self.side is not None:
            self.side.close()
        self.producer.flush()
        self.producer.close()
        self.sink.close()
        self.ownership.close()
