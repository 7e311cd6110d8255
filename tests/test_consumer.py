"""The worker's confluent-kafka consumer (``stream.consumer``): records as the pipeline reads
them, partition by partition; start offsets set inside the assignment callback; commits; and a
fenced static member that joins again. Against a real broker (the fixtures')."""

from __future__ import annotations

import time
from types import SimpleNamespace
from typing import ClassVar

import pytest
from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer
from confluent_kafka import TopicPartition as Assigned

import stream.consumer as consumer_module
from core.errors import StreamrecError
from core.kafka import ensure_topics, make_producer
from stream.consumer import (
    CommitError,
    CommitFailed,
    ConsumedRecord,
    ConsumedRecordWithHeaders,
    Partition,
    Reader,
    wait_for_partitions,
)
from tests.helpers import wait_for


def test_a_consumed_record_holds_what_the_pipeline_reads() -> None:
    message = Message(topic="t", partition=2, offset=7, key=b"u", value=b"{}", timestamp=(1, 1234),
                      headers=[("source", b"w1")])
    record = ConsumedRecord(message)
    assert (record.topic, record.partition, record.offset, record.timestamp, record.key, record.value) == \
        ("t", 2, 7, 1234, b"u", b"{}")
    assert not hasattr(record, "headers")
    assert ConsumedRecordWithHeaders(message).headers == [("source", b"w1")]
    assert ConsumedRecordWithHeaders(Message(topic="t", partition=0, offset=0)).headers == ()


def _fill(settings, per_partition: int, partitions: int = 3) -> None:
    ensure_topics(settings.kafka_bootstrap, {settings.topic: partitions})
    producer = make_producer(settings.kafka_bootstrap)
    for p in range(partitions):
        for i in range(per_partition):
            producer.send(settings.topic, key=b"k", value=f"{p}:{i}".encode(), partition=p)
    producer.flush()
    producer.close()


def _config(settings, **extra) -> dict:
    return {"bootstrap.servers": settings.kafka_bootstrap, "group.id": settings.group_id,
            "auto.offset.reset": "earliest", **extra}


def _drain(reader: Reader, expected: int, timeout_s: float = 30.0) -> dict[Partition, list[ConsumedRecord]]:
    got: dict[Partition, list[ConsumedRecord]] = {}
    deadline = time.monotonic() + timeout_s
    while sum(map(len, got.values())) < expected:
        assert time.monotonic() < deadline, f"{sum(map(len, got.values()))} of {expected} records in time"
        for tp, records in reader.poll(timeout_ms=200, max_records=7).items():
            assert all(r.topic == tp.topic and r.partition == tp.partition for r in records)
            got.setdefault(tp, []).extend(records)
    return got


def test_an_assigned_reader_reads_each_partition_in_order_from_the_offsets_given(settings) -> None:
    _fill(settings, per_partition=20)
    reader = Reader(_config(settings), max_records=50)
    try:
        partitions = [Partition(settings.topic, p) for p in sorted(wait_for_partitions(reader, settings.topic))]
        reader.assign(partitions, {Partition(settings.topic, 1): 15})
        got = _drain(reader, 20 + 5 + 20)
        assert {tp: [r.offset for r in rs] for tp, rs in got.items()} == {
            Partition(settings.topic, 0): list(range(20)), Partition(settings.topic, 1): list(range(15, 20)),
            Partition(settings.topic, 2): list(range(20))}
        assert got[Partition(settings.topic, 2)][3].value == b"2:3" and got[Partition(settings.topic, 2)][3].key == b"k"
        assert reader.assignment() == set(partitions)
        assert reader.highwater(Partition(settings.topic, 0)) == 20
        assert reader.poll(timeout_ms=100) == {}
    finally:
        reader.close()


def test_a_poll_returns_what_is_fetched_without_waiting_for_a_full_batch(settings) -> None:
    _fill(settings, per_partition=1, partitions=1)
    reader = Reader(_config(settings), max_records=1000)
    try:
        reader.assign([Partition(settings.topic, 0)])
        got = []
        for _ in range(50):  # the first polls may come before the first fetch
            started = time.monotonic()
            got = [r.value for rs in reader.poll(timeout_ms=4000).values() for r in rs]
            waited = time.monotonic() - started
            if got:
                break
        assert got == [b"0:0"]
        assert waited < 2.0  # not the whole timeout, waiting for 999 more
        started = time.monotonic()
        assert reader.poll(timeout_ms=300) == {}
        assert time.monotonic() - started >= 0.25  # nothing came: the whole timeout
    finally:
        reader.close()


def test_a_group_member_starts_where_on_assigned_seeks_and_commits_what_it_is_told(settings) -> None:
    _fill(settings, per_partition=10)
    events: list[tuple[str, list[int]]] = []
    reader = Reader(_config(settings, **{"group.instance.id": "member-1"}), max_records=100)

    def assigned(partitions):
        events.append(("assigned", sorted(tp.partition for tp in partitions)))
        for tp in partitions:
            reader.seek(tp, tp.partition * 3)  # inside the callback: where each partition starts

    reader.subscribe([settings.topic], on_assigned=assigned,
                     on_revoked=lambda revoked: events.append(("revoked", sorted(tp.partition for tp in revoked))))
    try:
        got = _drain(reader, 10 + 7 + 4)
        assert events == [("assigned", [0, 1, 2])]
        assert reader.assignment() == {Partition(settings.topic, p) for p in range(3)}
        assert {tp.partition: rs[0].offset for tp, rs in got.items()} == {0: 0, 1: 3, 2: 6}
        reader.commit({Partition(settings.topic, 0): 4, Partition(settings.topic, 2): 9})
        reader.commit_async({Partition(settings.topic, 1): 5})
        wait_for(lambda: _committed(settings) == {0: 4, 1: 5, 2: 9}, 10, "the commits to show")
    finally:
        reader.close()
    assert events == [("assigned", [0, 1, 2])]  # closing: the caller checkpointed already, no revoke passed on


def _committed(settings) -> dict[int, int]:
    from confluent_kafka import TopicPartition

    probe = Consumer(_config(settings))
    try:
        found = probe.committed([TopicPartition(settings.topic, p) for p in range(3)], timeout=10)
        return {tp.partition: tp.offset for tp in found if tp.offset >= 0}
    finally:
        probe.close()


def test_a_fenced_static_member_gives_its_partitions_back_and_joins_again(settings) -> None:
    """Another client with the same ``group.instance.id`` fences the member: librdkafka calls
    that fatal; the reader revokes its partitions (so the worker checkpoints) and joins again."""
    _fill(settings, per_partition=5)
    events: list[tuple[str, list[int]]] = []
    config = _config(settings, **{"group.instance.id": "member-1", "session.timeout.ms": 6000,
                                  "heartbeat.interval.ms": 500})
    reader = Reader(config, max_records=100)
    reader.subscribe([settings.topic],
                     on_assigned=lambda ps: events.append(("assigned", sorted(tp.partition for tp in ps))),
                     on_revoked=lambda ps: events.append(("revoked", sorted(tp.partition for tp in ps))))
    try:
        _drain(reader, 15)
        rival = Consumer(config)  # same instance id: the broker hands the member's place over to it
        rival.subscribe([settings.topic])
        wait_for(lambda: rival.poll(0.2) is not None or rival.assignment(), 30, "the rival to join")
        rival.close()  # a static member leaves nothing behind: the first one must join again
        wait_for(lambda: reader.poll(timeout_ms=200) is not None and events[-1][0] == "assigned"
                 and len(events) >= 3, 60, "the fenced member to join again")
        assert events == [("assigned", [0, 1, 2]), ("revoked", [0, 1, 2]), ("assigned", [0, 1, 2])]
        _fill(settings, per_partition=2)
        assert sum(map(len, _drain(reader, 6).values())) >= 6  # and it reads on
        assert reader.assignment() == {Partition(settings.topic, p) for p in range(3)}
    finally:
        reader.close()


class StandIn:
    """A stand-in ``confluent_kafka.Consumer`` (pure unit tests): ``poll`` gives ``first``;
    each ``consume`` call takes the next of ``consumed``: a list of messages is returned, else
    it is called (a rebalance, an error) and its answer returned; ``commit`` answers from
    ``commit_answers`` (an exception is raised, a list returned)."""

    made: ClassVar[list[StandIn]] = []

    def __init__(self, config: dict):
        self.config, self.first, self.consumed = config, None, []
        self.commit_answers: list = []
        self.commits = 0
        self.on_assign = self.on_revoke = None
        StandIn.made.append(self)

    def subscribe(self, topics, on_assign=None, on_revoke=None):
        self.on_assign, self.on_revoke = on_assign, on_revoke

    def assign(self, partitions):
        pass

    def poll(self, timeout):
        first, self.first = self.first, None
        return first

    def consume(self, num_messages=1, timeout=-1):
        answer = self.consumed.pop(0) if self.consumed else []
        return answer if isinstance(answer, list) else answer(self)

    def commit(self, offsets=None, asynchronous=True):
        self.commits += 1
        answer = self.commit_answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    def close(self):
        pass


@pytest.fixture
def stand_in(monkeypatch):
    StandIn.made = []
    monkeypatch.setattr(consumer_module, "Consumer", StandIn)
    monkeypatch.setattr(consumer_module, "COMMIT_BACKOFF_S", 0.0)
    monkeypatch.setattr(consumer_module, "REJOIN_BACKOFF_S", 0.0)
    return StandIn


def _message(partition: int, offset: int) -> Message:
    return Message(topic="t", partition=partition, offset=offset, key=b"k", value=b"v", timestamp=(1, 1))


def test_a_record_polled_before_its_partition_is_revoked_in_the_same_poll_is_not_returned(stand_in) -> None:
    """The revoke checkpointed partition 0 without the record ``poll`` returned first: the next
    owner resumes before it, so this member must not apply it; partition 1 stays, its records too."""
    revoked: list[list[int]] = []
    reader = Reader({"group.id": "g"})
    reader.subscribe(["t"], on_assigned=lambda ps: None,
                     on_revoked=lambda ps: revoked.append(sorted(tp.partition for tp in ps)))
    client = stand_in.made[0]
    client.on_assign(client, [Assigned("t", 0), Assigned("t", 1)])

    def revoke_0(client) -> list[Message]:  # librdkafka: the callback, then the messages kept
        client.on_revoke(client, [Assigned("t", 0)])
        return [_message(1, 8)]

    client.first, client.consumed = _message(0, 5), [[], revoke_0]  # nothing fetched yet, then a revoke
    got = reader.poll(timeout_ms=100)
    assert revoked == [[0]]
    assert {tp.partition: [r.offset for r in rs] for tp, rs in got.items()} == {1: [8]}
    client.first, client.consumed = _message(1, 9), [[], [_message(1, 10)]]  # no revoke: the first is kept
    assert [r.offset for r in reader.poll(timeout_ms=100)[Partition("t", 1)]] == [9, 10]


def test_a_retriable_commit_failure_is_retried_and_the_others_raise_streamrec_errors(stand_in) -> None:
    reader = Reader({"group.id": "g"})
    client, offsets = stand_in.made[0], {Partition("t", 0): 4}
    no_coordinator = KafkaException(KafkaError(KafkaError._WAIT_COORD))
    client.commit_answers = [no_coordinator, no_coordinator, [Assigned("t", 0, 4)]]
    reader.commit(offsets)
    assert client.commits == 3
    client.commits, client.commit_answers = 0, [no_coordinator] * 5
    with pytest.raises(CommitError, match="attempt 3 of 3") as raised:
        reader.commit(offsets)
    assert isinstance(raised.value, StreamrecError) and client.commits == 3  # bounded
    # one partition's answer (a TopicPartition's error is read-only: a stand-in)
    refused = SimpleNamespace(topic="t", partition=0, offset=4, error=KafkaError(KafkaError.OFFSET_METADATA_TOO_LARGE))
    client.commits, client.commit_answers = 0, [[refused]]
    with pytest.raises(CommitError, match="attempt 1 of 3"):
        reader.commit(offsets)
    moved_on = SimpleNamespace(topic="t", partition=0, offset=4, error=KafkaError(KafkaError.ILLEGAL_GENERATION))
    client.commit_answers = [[moved_on]]
    with pytest.raises(CommitFailed):
        reader.commit(offsets)


def test_a_reader_reads_the_records_of_a_transaction_still_open(settings) -> None:
    """As kafka-python did (read_uncommitted): librdkafka's default stops at an open transaction."""
    ensure_topics(settings.kafka_bootstrap, {settings.topic: 1})
    producer = Producer({"bootstrap.servers": settings.kafka_bootstrap, "transactional.id": "open-one"})
    producer.init_transactions(30)
    producer.begin_transaction()
    producer.produce(settings.topic, key=b"k", value=b"in a transaction", partition=0)
    producer.flush(10)
    reader = Reader(_config(settings))
    try:
        reader.assign([Partition(settings.topic, 0)])
        assert [r.value for r in _drain(reader, 1, timeout_s=15)[Partition(settings.topic, 0)]] == [b"in a transaction"]
    finally:
        reader.close()
        producer.abort_transaction(10)


def test_a_member_fenced_again_and_again_backs_off_then_gives_up(stand_in, monkeypatch) -> None:
    waits: list[float] = []
    monkeypatch.setattr(consumer_module, "REJOIN_BACKOFF_S", 1.0)
    monkeypatch.setattr(consumer_module.time, "sleep", waits.append)
    reader = Reader({"group.id": "g"})
    reader.subscribe(["t"], on_assigned=lambda ps: None, on_revoked=lambda ps: None)

    def fence(client):
        raise KafkaException(KafkaError(KafkaError._FATAL, "fenced", fatal=True))

    for joins in range(consumer_module.REJOINS_MAX):
        stand_in.made[-1].consumed = [fence]
        assert reader.poll() == {}
        assert len(stand_in.made) == joins + 2  # a new client joined
    assert waits == [1.0, 2.0, 4.0, 8.0]  # the first at once, then longer each time
    stand_in.made[-1].consumed = [fence]
    with pytest.raises(StreamrecError, match="rejoins"):
        reader.poll()


def test_waiting_for_partitions_asks_again_after_a_metadata_timeout() -> None:
    class Metadata:
        def __init__(self):
            self.answers = [KafkaException(KafkaError(KafkaError._TIMED_OUT)), None, {0, 1}]

        def partitions_for_topic(self, topic):
            answer = self.answers.pop(0)
            if isinstance(answer, Exception):
                raise answer
            return answer

    assert wait_for_partitions(Metadata(), "t", timeout_s=5) == {0, 1}
