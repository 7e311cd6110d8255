"""Publishing events to the topic, keyed by ``user_id`` so each user's events stay in order."""

from __future__ import annotations

from collections.abc import Iterable

from kafka import KafkaProducer

from stream.schema import Event


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
