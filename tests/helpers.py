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
