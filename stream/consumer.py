"""The worker's Kafka consumers, on confluent-kafka (librdkafka).

librdkafka fetches and decodes record batches in C, on its own thread, ahead of the loop:
about 1.3 µs of the process's CPU per record wrapped for the pipeline, against about 6 µs for
kafka-python's pure-Python decoding (``python -m bench.consumer_cpu``). Only the worker's two
hot consumers use it; kafka-python stays where a record's cost does not matter (the DLQ and
item-delta producer, topic administration, the Kafka checkpoint store, replay, the API's
publisher).

``Reader`` wraps one ``confluent_kafka.Consumer`` with the small kafka-python-shaped
interface the worker calls (``poll`` by partition, ``seek``, ``commit``/``commit_async``,
``assignment``, ``highwater``), so that tests can pass stand-ins of the same shape.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from typing import NamedTuple

from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
)
from confluent_kafka import TopicPartition as _Assigned

from core.errors import StreamrecError

log = logging.getLogger("streamrec.consumer")
client_log = logging.getLogger("streamrec.kafka")  # librdkafka's own log lines, served by poll()

# a commit the group refused because it moved on (a rebalance, this member fenced or expired)
_GROUP_MOVED_ON = frozenset({KafkaError.ILLEGAL_GENERATION, KafkaError.UNKNOWN_MEMBER_ID,
                             KafkaError.REBALANCE_IN_PROGRESS, KafkaError.FENCED_INSTANCE_ID,
                             KafkaError._ASSIGNMENT_LOST, KafkaError._STATE})


class Partition(NamedTuple):
    """One partition of one topic."""

    topic: str
    partition: int


# a commit that may go through if sent again: no coordinator known yet, a broker down or busy
_COMMIT_RETRIABLE = frozenset({KafkaError._WAIT_COORD, KafkaError._TIMED_OUT, KafkaError._TRANSPORT,
                               KafkaError.COORDINATOR_NOT_AVAILABLE, KafkaError.NOT_COORDINATOR,
                               KafkaError.COORDINATOR_LOAD_IN_PROGRESS, KafkaError.REQUEST_TIMED_OUT})
COMMIT_ATTEMPTS = 3
COMMIT_BACKOFF_S = 0.5  # doubled after each retriable failure

# a fatal error in a group (e.g. fenced) joins it again, waiting longer each time; this many
# within REJOIN_WINDOW_S end the worker (two workers with one worker_id fence each other for ever)
REJOINS_MAX = 5
REJOIN_WINDOW_S = 600.0
REJOIN_BACKOFF_S = 1.0  # before the second rejoin in the window, doubled for each next one


class CommitError(StreamrecError):
    """Offsets not committed: refused, or the broker could not be reached in the retries."""


class CommitFailed(CommitError):
    """The group refused a commit: it moved on (a rebalance) while this member was held up."""


class ConsumedRecord:
    """One consumed message as the pipeline reads it (``stream.pipeline.RecordLike``).

    Built once per message (a slots class: about 0.3 µs, the cheapest to build and read of
    those measured), so that the pipeline reads attributes, not librdkafka's method calls.
    """

    __slots__ = ("key", "offset", "partition", "timestamp", "topic", "value")

    def __init__(self, message: Message):
        self.topic = message.topic()
        self.partition = message.partition()
        self.offset = message.offset()
        self.timestamp = message.timestamp()[1]  # ms; -1 when the message has none
        self.key = message.key()
        self.value = message.value()


class ConsumedRecordWithHeaders(ConsumedRecord):
    """A consumed message with its headers (the side topics': item deltas carry theirs)."""

    __slots__ = ("headers",)

    def __init__(self, message: Message):
        super().__init__(message)
        self.headers = message.headers() or ()


class Reader:
    """A ``confluent_kafka.Consumer`` behind the calls the worker makes.

    ``config`` is librdkafka's (``bootstrap.servers``, ``group.id``, ...); commits are the
    caller's (auto-commit off). ``with_headers``: records carry their headers too.
    """

    def __init__(self, config: dict, max_records: int = 500, with_headers: bool = False):
        self.max_records = max_records
        self._record = ConsumedRecordWithHeaders if with_headers else ConsumedRecord
        self._assigning: dict[Partition, _Assigned] | None = None  # inside on_assign: seeks set start offsets
        self._on_assigned: Callable[[list[Partition]], None] | None = None
        self._on_revoked: Callable[[list[Partition]], None] | None = None
        self._topics: list[str] = []  # subscribed to
        # what it reads now: as assigned, or as the callbacks were told in a group (kept here, since
        # librdkafka's assignment() waits for its main thread, ~4 ms a call, and a fenced client's is empty)
        self._owned: list[Partition] = []
        self._revoked_in_poll: set[Partition] = set()  # what the callbacks revoked while poll() ran
        self._rejoined_at: list[float] = []  # monotonic times of recent rejoins
        # read_uncommitted as kafka-python did (librdkafka's default, read_committed, stops at an open transaction)
        self._config = {"isolation.level": "read_uncommitted", **config, "enable.auto.commit": False,
                        "enable.auto.offset.store": False, "on_commit": _log_failed_commit, "logger": client_log}
        self._consumer = Consumer(self._config)

    # -- partitions ----------------------------------------------------------------------
    def partitions_for_topic(self, topic: str) -> set[int] | None:
        """The topic's partitions from the cluster's metadata (None while it has none)."""
        found = self._consumer.list_topics(topic, timeout=10.0).topics.get(topic)
        if found is None or found.error is not None or not found.partitions:
            return None
        return set(found.partitions)

    def assign(self, partitions: Iterable[Partition], offsets: dict[Partition, int] | None = None) -> None:
        """Read exactly ``partitions``, outside any group: each from ``offsets`` where given,
        else from its start."""
        offsets, self._owned = offsets or {}, list(partitions)
        self._consumer.assign([_Assigned(tp.topic, tp.partition, offsets.get(tp, OFFSET_BEGINNING))
                               for tp in self._owned])

    def subscribe(self, topics: list[str], on_assigned: Callable[[list[Partition]], None],
                  on_revoked: Callable[[list[Partition]], None]) -> None:
        """Join the group (``group.id``) for ``topics``. The callbacks run inside ``poll()``, in
        the caller's thread: ``on_revoked`` before partitions leave this member (lost ones
        too), ``on_assigned`` once it is given its new ones, where ``seek`` sets where each
        starts (else: the group's committed offset, or ``auto.offset.reset``)."""
        self._on_assigned, self._on_revoked, self._topics = on_assigned, on_revoked, list(topics)
        self._consumer.subscribe(self._topics, on_assign=self._assign_in_group, on_revoke=self._revoke_in_group)

    def _assign_in_group(self, consumer: Consumer, partitions: list[_Assigned]) -> None:
        self._assigning = {Partition(tp.topic, tp.partition): tp for tp in partitions}
        self._owned = list(self._assigning)
        try:
            if self._on_assigned is not None:
                self._on_assigned(list(self._assigning))
        finally:
            self._assigning = None
        consumer.assign(partitions)  # with the offsets that seek set meanwhile

    def _revoke_in_group(self, consumer: Consumer, partitions: list[_Assigned]) -> None:
        if consumer is not self._consumer:  # a replaced one's, closing
            return
        revoked, self._owned = [Partition(tp.topic, tp.partition) for tp in partitions], []
        self._revoked_in_poll.update(revoked)
        if self._on_revoked is not None:
            self._on_revoked(revoked)

    def _rejoin(self, error: KafkaError) -> None:
        """After a fatal error (this static member fenced: librdkafka gives up on a member
        whose session timed out, e.g. through a broker restart, and that rejoined under the same
        ``group.instance.id``), leave its partitions as a rebalance would, and join again as a
        new client, as kafka-python's consumer does on its own: at once the first time, then
        after a growing wait; ``REJOINS_MAX`` within ``REJOIN_WINDOW_S`` raise ``StreamrecError``."""
        now = time.monotonic()
        self._rejoined_at = [at for at in self._rejoined_at if now - at < REJOIN_WINDOW_S]
        if len(self._rejoined_at) >= REJOINS_MAX:
            raise StreamrecError(f"kafka consumer: {error}; {len(self._rejoined_at)} rejoins within "
                                 f"{REJOIN_WINDOW_S:.0f} s (another worker with this worker_id?)")
        log.error("kafka consumer: %s; joining the group again", error)
        fenced, revoked, self._owned = self._consumer, self._owned, []
        self._revoked_in_poll.update(revoked)
        self._consumer = Consumer(self._config)  # before closing the old one: its revoke is not passed on
        try:
            fenced.close()
        except KafkaException as exc:
            log.warning("closing the fenced consumer: %s", exc)
        if revoked and self._on_revoked is not None:
            self._on_revoked(revoked)
        if self._rejoined_at:  # fenced again soon after: give the other member's session time to end
            time.sleep(REJOIN_BACKOFF_S * 2 ** (len(self._rejoined_at) - 1))
        self._rejoined_at.append(time.monotonic())
        self.subscribe(self._topics, self._on_assigned, self._on_revoked)

    def seek(self, tp: Partition, offset: int) -> None:
        """Read ``tp`` from ``offset`` on (inside ``on_assigned``: where it starts)."""
        if self._assigning is not None and tp in self._assigning:
            self._assigning[tp].offset = offset
        else:
            self._consumer.seek(_Assigned(tp.topic, tp.partition, offset))

    def assignment(self) -> set[Partition]:
        """The partitions it reads now."""
        return set(self._owned)

    def highwater(self, tp: Partition) -> int | None:
        """The partition's end offset as the last fetch saw it (no request); None before one."""
        high = self._consumer.get_watermark_offsets(_Assigned(tp.topic, tp.partition), cached=True)[1]
        return None if high < 0 else high

    # -- records -------------------------------------------------------------------------
    def poll(self, timeout_ms: int = 0, max_records: int | None = None) -> dict[Partition, list[ConsumedRecord]]:
        """Up to ``max_records`` records, by partition, each partition's in offset order;
        waits up to ``timeout_ms`` for the first, not for more (the rebalance callbacks run
        in here)."""
        consumer, most = self._consumer, max_records or self.max_records
        try:
            # consume() with a timeout waits for a full batch: take what is fetched already, and
            # when nothing is, wait for one message and take what came with it
            messages = consumer.consume(num_messages=most, timeout=0)
            if not messages and timeout_ms > 0:
                first = consumer.poll(timeout_ms / 1000)
                if first is not None:
                    self._revoked_in_poll.clear()
                    messages = consumer.consume(num_messages=most - 1, timeout=0) if most > 1 else []
                    # librdkafka drops a revoked partition's messages within one call only: a revoke
                    # in this one checkpointed that partition without `first`, its next owner's now
                    if first.error() is not None or \
                            Partition(first.topic(), first.partition()) not in self._revoked_in_poll:
                        messages.insert(0, first)
        except KafkaException as exc:
            self._on_error(exc.args[0])
            return {}
        by_partition: dict[Partition, list[ConsumedRecord]] = {}
        make, topic, partition, run = self._record, None, None, None
        for message in messages:
            if message.error() is not None:
                self._on_error(message.error())
                if self._consumer is not consumer:  # joined again: its partitions resume from their checkpoints
                    return {}
                continue
            record = make(message)
            if record.partition != partition or record.topic != topic:  # messages come in runs per partition
                topic, partition = record.topic, record.partition
                run = by_partition.get(Partition(topic, partition))
                if run is None:
                    run = by_partition[Partition(topic, partition)] = []
            run.append(record)
        return by_partition

    def _on_error(self, error: KafkaError) -> None:
        """An error the client reports: a fatal one in a group, join again (``_rejoin``); else
        fatal ones end the worker, and the rest (a broker down, a topic not there yet) the
        client retries on its own."""
        if error.fatal() or error.code() == KafkaError._FATAL:
            if not self._topics:
                raise KafkaException(error)
            self._rejoin(error)
        else:
            log.warning("kafka consumer: %s", error)

    # -- offsets -------------------------------------------------------------------------
    def commit(self, offsets: dict[Partition, int], attempts: int = COMMIT_ATTEMPTS) -> None:
        """Commit ``offsets`` (the next offset to read, per partition) and wait for the broker;
        a retriable failure is sent again (``attempts`` in all, with a doubling wait).
        Raises ``CommitFailed`` when the group moved on meanwhile, else ``CommitError``."""
        for attempt in range(1, attempts + 1):
            error = self._commit_once(offsets)
            if error is None:
                return
            if error.code() in _GROUP_MOVED_ON:
                raise CommitFailed(str(error))
            if not (error.retriable() or error.code() in _COMMIT_RETRIABLE) or attempt == attempts:
                raise CommitError(f"offsets not committed (attempt {attempt} of {attempts}): {error}")
            log.warning("offsets not committed (attempt %d of %d): %s", attempt, attempts, error)
            time.sleep(COMMIT_BACKOFF_S * 2 ** (attempt - 1))

    def _commit_once(self, offsets: dict[Partition, int]) -> KafkaError | None:
        """One synchronous commit: its error, the request's or the first partition's."""
        try:
            committed = self._consumer.commit(offsets=_as_assigned(offsets), asynchronous=False)
        except KafkaException as exc:
            return _kafka_error(exc)
        return next((tp.error for tp in committed or () if tp.error is not None), None)

    def commit_async(self, offsets: dict[Partition, int]) -> None:
        """Send ``offsets``' commit without waiting; a failure is logged when its answer
        comes (inside a later ``poll``)."""
        try:
            self._consumer.commit(offsets=_as_assigned(offsets), asynchronous=True)
        except KafkaException as exc:  # refused before it was sent (no group joined now)
            log.warning("offsets not committed: %s", exc)

    def close(self) -> None:
        """Leave (a static member: only close); the caller has checkpointed already, so the
        revoke that closing runs is not passed on."""
        self._on_assigned = self._on_revoked = None
        self._consumer.close()


def _as_assigned(offsets: dict[Partition, int]) -> list[_Assigned]:
    return [_Assigned(tp.topic, tp.partition, offset) for tp, offset in offsets.items()]


def _kafka_error(exc: KafkaException) -> KafkaError:
    found = exc.args[0] if exc.args else None
    return found if isinstance(found, KafkaError) else KafkaError(KafkaError._FAIL, str(exc))


def _log_failed_commit(error: KafkaError | None, partitions: list[_Assigned]) -> None:
    if error is not None:
        log.warning("offsets not committed: %s", error)
    for tp in partitions:
        if tp.error is not None:
            log.warning("offset of %s/%d not committed: %s", tp.topic, tp.partition, tp.error)


def wait_for_partitions(consumer, topic: str, timeout_s: float = 30.0) -> set[int]:
    """The topic's partitions, once the metadata has them (a ``Reader`` or a kafka-python consumer)."""
    deadline = time.monotonic() + timeout_s
    failed = None
    while True:
        try:
            found = consumer.partitions_for_topic(topic)
        except KafkaException as exc:  # the metadata request timed out (a Reader's): ask again
            found, failed = None, exc
        if found:
            return found
        if time.monotonic() > deadline:
            raise StreamrecError(f"topic {topic!r} has no partitions after {timeout_s:.0f} s"
                                 + (f" ({failed})" if failed is not None else ""))
        time.sleep(0.1)

