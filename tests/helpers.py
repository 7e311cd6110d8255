"""Shared test helpers: a worker in a background thread, bounded waits, reading a topic back."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from contextlib import contextmanager
from typing import TypeVar

from kafka import KafkaConsumer

from core.keys import make_client
from core.settings import Settings
from serving.store import RecommendationStore
from stream.worker import Worker

T = TypeVar("T")


def wait_for(check: Callable[[], T], timeout_s: float, what: str, interval_s: float = 0.1) -> T:
    """Poll ``check`` until it returns something truthy; fail with ``what`` after ``timeout_s``.

    ``what`` may be a callable, evaluated on failure to describe the state reached.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            what = what() if callable(what) else what
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}; last check gave {result!r}")
        time.sleep(interval_s)


def store_of(settings: Settings) -> RecommendationStore:
    """The API's view of what the workers of ``settings`` wrote to Redis."""
    return RecommendationStore(make_client(settings.redis_url, retries=2), settings.redis_prefix)


def served(worker: Worker) -> int:
    """Events applied *and* written to Redis (the counters travel with the lists)."""
    return store_of(worker.settings).counters().get("applied", 0)


@contextmanager
def running_worker(settings: Settings, **kwargs):
    """A real worker consuming ``settings.topic`` in a thread; stopped and closed on exit."""
    worker = Worker(settings, **kwargs)
    stop = threading.Event()
    failure: list[BaseException] = []

    def target():
        try:
            worker.run(stop)
        except BaseException as exc:  # surfaced to the test below
            failure.append(exc)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    try:
        yield worker
    except BaseException as exc:
        if failure:  # the worker's own error explains the test's failure
            raise failure[0] from exc
        raise
    finally:
        stop.set()
        thread.join(timeout=10)
        worker.close()
    if failure:
        raise failure[0]


def read_topic(bootstrap: str, topic: str, expected: int, timeout_s: float = 20.0, allow_fewer: bool = False) -> list:
    """Read ``expected`` records from the start of ``topic`` (fails if fewer arrive in time,
    unless ``allow_fewer``: then the caller says what is missing)."""
    consumer = KafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                             enable_auto_commit=False, group_id=None, consumer_timeout_ms=500)
    records: list = []
    deadline = time.monotonic() + timeout_s
    try:
        while len(records) < expected and time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=500).values():
                records.extend(batch)
    finally:
        consumer.close()
    assert allow_fewer or len(records) >= expected, f"{topic}: {len(records)} of {expected} records arrived"
    return records


def newest_item_deltas(bootstrap: str, topic: str) -> dict[str, int]:
    """Each source's newest item delta number on ``topic`` (the ``seq`` header), read to the end."""
    from kafka import TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, group_id=None)
    newest: dict[str, int] = {}
    try:
        partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        consumer.assign(partitions)
        consumer.seek_to_beginning(*partitions)
        ends = consumer.end_offsets(partitions)
        while any(consumer.position(tp) < end for tp, end in ends.items()):
            for batch in consumer.poll(timeout_ms=500).values():
                for record in batch:
                    head = {key: value.decode() for key, value in record.headers}
                    newest[head["source"]] = max(newest.get(head["source"], 0), int(head["seq"]))
    finally:
        consumer.close()
    return newest


def item_deltas_settled(settings: Settings, worker_ids: list[str]) -> bool:
    """Whether, as their last reports say, each of ``worker_ids`` checkpointed after its last
    batch of events (so what it learned went out in a delta) and holds every item delta on
    the topic, from every source, up to the newest: once no more events come, nothing is on
    its way between these workers any more."""
    reports = {m.get("worker"): m for m in store_of(settings).workers_metrics()}
    for w in worker_ids:
        report = reports.get(w) or {}
        checkpointed, learned = report.get("last_checkpoint_at"), report.get("last_batch_at") or 0.0
        if checkpointed is None or checkpointed < learned:
            return False
    newest = newest_item_deltas(settings.kafka_bootstrap, settings.item_deltas_topic)
    return all(reports[w].get("deltas_merged_through", {}).get(source, 0) >= seq
               for w in worker_ids for source, seq in newest.items())
