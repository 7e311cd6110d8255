"""The worker's confluent-kafka consumer (``stream.consumer``): records as the pipeline reads
them, partition by partition; start offsets set inside the assignment callback; commits; and a
fenced static member that joins again. Against a real broker (the fixtures')."""

from __future__ import annotations

import time

from confluent_kafka import Consumer, Message

from core.kafka import ensure_topics, make_producer
from stream.consumer import (
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
