"""The event consumer alone: kafka-python's ``poll`` against confluent-kafka's ``consume``.

One topic is filled with the ingest bench's events; then, in a fresh process each and in
alternating rounds, a bare loop drains it with each client, reading each record's value,
offset and partition: kafka-python's ``poll``, confluent-kafka's ``consume``, and the latter
through ``stream.consumer.Reader``, as the worker reads. Reported: records per CPU-second of
the process (librdkafka's own threads included; counted from the consumer's creation, since
librdkafka fetches and decodes ahead on its thread) and wall records/s (from the first batch).

    python -m bench.consumer_cpu [--events 100000] [--pairs 3]
"""

from __future__ import annotations

import argparse
import statistics
import time

from bench.common import bench_settings, in_process, services
from bench.ingest import LARGE_FETCHES, _produce_proc, assigned_reader


def _drain_kafka_python(settings, n: int, out) -> None:
    from kafka import KafkaConsumer, TopicPartition

    from stream.consumer import wait_for_partitions

    cpu_started = time.process_time()
    consumer = KafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap, group_id=None,
        enable_auto_commit=False, auto_offset_reset="earliest", max_poll_records=settings.max_poll_records,
        fetch_max_bytes=32 * 1024 * 1024, max_partition_fetch_bytes=8 * 1024 * 1024,
    )
    consumer.assign([TopicPartition(settings.topic, p) for p in sorted(wait_for_partitions(consumer, settings.topic))])
    seen, first, started, checksum = 0, 0, 0.0, 0
    while seen < n:
        for records in consumer.poll(timeout_ms=settings.poll_timeout_ms,
                                     max_records=settings.max_poll_records).values():
            for record in records:
                _ = record.value, record.partition
                checksum += record.offset
            seen += len(records)
        if not first and seen:
            first, started = seen, time.perf_counter()
    out.put({"events": seen - first, "seconds": time.perf_counter() - started,
             "cpu_seconds": time.process_time() - cpu_started, "cpu_events": seen, "checksum": checksum})
    consumer.close()


def _drain_confluent(settings, n: int, as_worker: bool, out) -> None:
    """``as_worker``: through ``stream.consumer.Reader``, as the worker reads (records built
    and grouped by partition); else confluent-kafka's messages read as they come."""
    from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

    cpu_started = time.process_time()
    if as_worker:
        reader = assigned_reader(settings, settings.group_id)
    else:
        consumer = Consumer({"bootstrap.servers": settings.kafka_bootstrap, "group.id": settings.group_id,
                             **LARGE_FETCHES, "enable.auto.commit": False})
        partitions = consumer.list_topics(settings.topic, timeout=10).topics[settings.topic].partitions
        consumer.assign([TopicPartition(settings.topic, p, OFFSET_BEGINNING) for p in sorted(partitions)])
    seen, first, started, checksum = 0, 0, 0.0, 0
    while seen < n:
        if as_worker:
            for records in reader.poll(settings.poll_timeout_ms).values():
                for record in records:
                    _ = record.value, record.partition
                    checksum += record.offset
                seen += len(records)
        else:
            messages = consumer.consume(num_messages=settings.max_poll_records,
                                        timeout=settings.poll_timeout_ms / 1000)
            for message in messages:
                _ = message.value(), message.partition()
                checksum += message.offset()
            seen += len(messages)
        if not first and seen:
            first, started = seen, time.perf_counter()
    out.put({"events": seen - first, "seconds": time.perf_counter() - started,
             "cpu_seconds": time.process_time() - cpu_started, "cpu_events": seen, "checksum": checksum})
    (reader if as_worker else consumer).close()


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--pairs", type=int, default=3)
    args = parser.parse_args(argv)
    with services() as svc:
        settings = bench_settings(svc)
        in_process(_produce_proc, settings, args.events)
        runs = {"kafka-python": [], "confluent": [], "confluent Reader": []}
        for pair in range(args.pairs):
            for name, target, extra in (("kafka-python", _drain_kafka_python, ()),
                                        ("confluent", _drain_confluent, (False,)),
                                        ("confluent Reader", _drain_confluent, (True,))):
                r = in_process(target, bench_settings(svc, topic=settings.topic), args.events, *extra)
                runs[name].append(r)
                print(f"pair {pair + 1} {name:16s} {r['cpu_events'] / r['cpu_seconds']:>10,.0f} per CPU-s "
                      f"{r['events'] / r['seconds']:>10,.0f} wall/s  ({r['events']} records)", flush=True)
        for name, rs in runs.items():
            cpu = statistics.median(r["cpu_seconds"] / r["cpu_events"] * 1e6 for r in rs)
            wall = statistics.median(r["events"] / r["seconds"] for r in rs)
            print(f"median {name:16s} {cpu:6.2f} us CPU per record ({1e6 / cpu:,.0f} per CPU-s), {wall:,.0f} wall/s")


if __name__ == "__main__":
    main()
