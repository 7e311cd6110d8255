"""The API's Kafka producers, connected in the background so the API starts (and reads
keep working) while Kafka is away: one for writes, one for impressions (``ImpressionQueue``)."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import orjson
from kafka import KafkaProducer
from kafka.errors import KafkaError, KafkaTimeoutError

from core.kafka import EventProducer, make_producer

log = logging.getLogger("streamrec.api")


class Publisher:
    """Holds an ``EventProducer`` (or what ``factory`` makes), created on first need in a
    background thread."""

    def __init__(self, bootstrap: str, topic: str, factory: Callable[[], Any] | None = None):
        self.bootstrap = bootstrap
        self.topic = topic
        self._factory = factory or (lambda: EventProducer(bootstrap, topic))
        self._producer: EventProducer | None = None
        self._lock = threading.Lock()
        self._connecting: threading.Thread | None = None
        self.last_error: str | None = None

    def _connect(self) -> None:
        try:
            producer = self._factory()
        except KafkaError as exc:
            self.last_error = str(exc)
            log.warning("Kafka producer not connected: %s", exc)
        else:
            self._producer, self.last_error = producer, None
        finally:
            self._connecting = None

    def _start_connecting(self) -> threading.Thread:
        with self._lock:
            thread = self._connecting
            if thread is None:
                # held locally: a quick connect clears self._connecting before this returns
                thread = self._connecting = threading.Thread(target=self._connect, daemon=True)
                thread.start()
            return thread

    def nowait(self) -> EventProducer | None:
        """The producer if connected; otherwise start connecting and answer None at once."""
        if self._producer is None:
            self._start_connecting()
        return self._producer

    def wait(self, timeout_s: float = 15.0) -> EventProducer | None:
        """The producer, connecting first if need be (None if that failed)."""
        if self._producer is None:
            thread = self._start_connecting()
            thread.join(timeout_s)
        return self._producer

    def connected(self) -> EventProducer | None:
        """The producer if connected, without starting to connect."""
        return self._producer

    def close(self) -> None:
        if self._producer is not None:
            self._producer.close()


def impression_producer(bootstrap: str, topic: str, *, linger_ms: int = 20, max_block_ms: int = 200,
                        metadata_wait_s: float = 10.0) -> KafkaProducer:
    """A producer for impressions, with the topic's metadata fetched before it is used: a send
    that must wait for metadata blocks the event loop, so sends may block ``max_block_ms`` at
    most, and only once the metadata is there. Lingering ``linger_ms`` lets many answers
    share a produce request (kafka-python spends about a millisecond on each); longer batches
    are longer bursts of pure-Python CRC for a waiting request to sit behind."""
    producer = make_producer(bootstrap, linger_ms=linger_ms, max_block_ms=max_block_ms)
    deadline = time.monotonic() + metadata_wait_s
    while True:
        try:
            producer.partitions_for(topic)
            return producer
        except KafkaTimeoutError:
            if time.monotonic() > deadline:
                producer.close(timeout=1)
                raise


class ImpressionQueue:
    """What each GET served, sent to the impressions topic after the answer, in batches.

    ``put`` only appends to a deque: the request itself does no JSON and no Kafka work. A
    callback on the event loop, ``interval_s`` after the first impression queued, serialises
    them and hands them to the producer (``impression_producer``), ``chunk`` at a time with
    requests in between: on the loop rather than in a thread of its own, because a busy
    second thread costs the loop a GIL hand-over at each of its socket calls. Each chunk is
    one record, a JSON array of impressions (no more than ``max_record_bytes`` of them, well
    under the producer's 1 MiB request limit however long the pages are): kafka-python's cost
    is per record (about 150 µs of Python in ``send``) and per produce request (its network
    thread, about a millisecond each), so ``interval_s`` is long enough for a drain to fill
    few large records that share one request (at 3,000 answers/s, 0.1 s makes about one
    record and one request per drain, where 0.02 s and chunks of 64 made a partial record
    after each chunk and five times the requests: in ``bench serve`` the server spent about
    20 µs more CPU per answer). Every worker reads every
    partition of the topic, so no key is needed. Impressions are best-effort, as before:
    while the producer connects they wait, no more than ``max_queued`` of them; beyond that,
    and for ``pause_s`` after a send failed, they are dropped and counted in ``dropped``.
    """

    def __init__(self, bootstrap: str, topic: str, *, interval_s: float = 0.1, chunk: int = 512,
                 max_record_bytes: int = 512 * 1024, max_queued: int = 10_000, pause_s: float = 5.0,
                 publisher: Publisher | None = None):
        self.topic = topic
        self.publisher = publisher or Publisher(bootstrap, topic, lambda: impression_producer(bootstrap, topic))
        self.interval_s = interval_s
        self.chunk = chunk
        self.max_record_bytes = max_record_bytes
        self.max_queued = max_queued
        self.pause_s = pause_s
        self.dropped = 0
        self.sent = 0
        self._queue: deque[tuple] = deque()
        self._loop = asyncio.get_running_loop()
        self._scheduled: asyncio.TimerHandle | asyncio.Handle | None = None
        self._paused_until = float("-inf")
        self.publisher.nowait()  # connect now: the first answers' impressions should not wait for it

    def put(self, recomm_id: str, user_id: str, offset: int, page: list[dict]) -> None:
        """Queue one answer: its id, the user, where the page starts, its entries (``item_id``, ``strategy``)."""
        if len(self._queue) >= self.max_queued:
            self.dropped += 1
            return
        self._queue.append((recomm_id, user_id, time.time(), offset, page))
        if self._scheduled is None:
            self._scheduled = self._loop.call_later(self.interval_s, self._drain)

    def _drain(self) -> None:
        self._scheduled = None
        if self._loop.time() < self._paused_until:  # Kafka failed a moment ago: do not block on it again
            self.dropped += len(self._queue)
            self._queue.clear()
            return
        producer = self.publisher.nowait()
        if producer is None:  # connecting (again, every pause_s, after a failure): they wait
            retry_s = self.pause_s if self.publisher.last_error else self.interval_s * 10
            self._scheduled = self._loop.call_later(retry_s, self._drain)
            return
        self._send(producer, self.chunk)
        if self._queue:  # the rest after the requests waiting now
            self._scheduled = self._loop.call_soon(self._drain)

    def _send(self, producer: KafkaProducer, count: int) -> None:
        """Send up to ``count`` queued impressions, in records of at most ``max_record_bytes``."""
        queue = self._queue
        count = min(count, len(queue))
        while count:
            parts, size = [], 0
            while count and size < self.max_record_bytes:
                recomm_id, user_id, ts, offset, page = queue.popleft()
                count -= 1
                part = orjson.dumps({"recomm_id": recomm_id, "user_id": user_id, "ts": ts,
                                     "items": [{"item_id": e["item_id"], "position": position, "strategy": e["strategy"]}
                                               for position, e in enumerate(page, offset)]})
                parts.append(part)
                size += len(part) + 1
            try:
                # the same JSON array orjson.dumps(list) writes, joined from the parts
                producer.send(self.topic, value=b"[" + b",".join(parts) + b"]")
                self.sent += len(parts)
            except KafkaError as exc:  # buffer full, metadata gone: drop what waits, pause
                self.dropped += len(queue) + len(parts)
                queue.clear()
                self._paused_until = self._loop.time() + self.pause_s
                log.warning("impressions dropped, paused for %.0f s: %s", self.pause_s, exc)
                return

    def close(self, timeout_s: float = 5.0) -> None:
        """Send what is queued, then flush and stop the producer."""
        if self._scheduled is not None:
            self._scheduled.cancel()
            self._scheduled = None
        # still connecting: wait for it a little, for what is queued
        producer = self.publisher.wait(timeout_s) if self._queue else self.publisher.connected()
        if producer is not None:
            self._send(producer, len(self._queue))
            producer.flush(timeout=timeout_s)
        self.publisher.close()
