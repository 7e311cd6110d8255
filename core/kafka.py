"""The Kafka clients both sides use: the event producer (keyed by ``user_id``, so each user's
events stay in order), topic administration and broker reachability."""

from __future__ import annotations

import socket
from collections.abc import Iterable

from kafka import KafkaAdminClient, KafkaProducer
from kafka.admin import NewTopic
from kafka.errors import TopicAlreadyExistsError

from core.schema import Event


def ensure_topics(bootstrap: str, topics: dict[str, int], configs: dict[str, dict[str, str]] | None = None) -> None:
    """Create each topic (name -> partitions, with its ``configs``) unless it exists already."""
    configs = configs or {}
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10_000)
    try:
        existing = set(admin.list_topics())
        missing = [NewTopic(name, n, 1, topic_configs=configs.get(name, {}))
                   for name, n in topics.items() if name not in existing]
        if missing:
            try:
                admin.create_topics(missing)
            except TopicAlreadyExistsError:
                pass  # created by another process meanwhile
    finally:
        admin.close()


def kafka_reachable(bootstrap: str, timeout_s: float = 1.0) -> bool:
    """True when at least one bootstrap broker accepts a TCP connection."""
    for address in bootstrap.split(","):
        host, _, port = address.strip().rpartition(":")
        try:
            with socket.create_connection((host or "localhost", int(port)), timeout=timeout_s):
                return True
        except (OSError, ValueError):
            continue
    return False


def make_producer(bootstrap: str, **overrides) -> KafkaProducer:
    """An idempotent producer (retries neither duplicate nor reorder a user's events)."""
    config = dict(
        bootstrap_servers=bootstrap,
        acks="all",
        enable_idempotence=True,
        linger_ms=5,
        batch_size=256 * 1024,
    )
    config.update(overrides)
    return KafkaProducer(**config)


class EventProducer:
    """Sends ``Event`` objects (or raw, unchecked payloads) to one topic.

    Use as a context manager; leaving it flushes and closes the producer.
    """

    def __init__(self, bootstrap: str, topic: str, **producer_config):
        self.topic = topic
        self._producer = make_producer(bootstrap, **producer_config)

    def send(self, event: Event):
        """Queue one event, keyed by its user (an item event, which has none, by its item)."""
        return self._producer.send(self.topic, key=(event.user_id or event.item_id).encode(), value=event.to_json())

    def send_raw(self, value: bytes, key: bytes | None = None, topic: str | None = None):
        """Queue bytes as they are (commands, or testing what the worker does with bad input)."""
        return self._producer.send(topic or self.topic, key=key, value=value)

    def send_many(self, events: Iterable[Event]) -> int:
        count = 0
        for event in events:
            self.send(event)
            count += 1
        return count

    def flush(self, timeout_s: float | None = None) -> None:
        self._producer.flush(timeout=timeout_s)

    def close(self) -> None:
        self._producer.close()

    def __enter__(self) -> EventProducer:
        return self

    def __exit__(self, *exc) -> None:
        self.flush()
        self.close()
