"""Replaying a historical log into Kafka, as if it were happening again.

Events go out keyed by ``user_id`` (so each user's events stay in order in one partition),
in time order, at ``speed`` times their original pace: the gap between two events is
their original gap divided by ``speed`` (``None`` sends as fast as the producer can).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from typing import Protocol

from core.errors import StreamrecError
from core.schema import Event

_MIN_SLEEP_S = 0.002


class ReplayError(StreamrecError):
    """Events that Kafka did not accept during a replay."""


class _Sender(Protocol):
    def send(self, event: Event): ...

    def flush(self, timeout_s: float | None = None) -> None: ...


@dataclass
class ReplayStats:
    sent: int
    failed: int
    elapsed_s: float
    events_per_s: float
    log_span_s: float
    speed: float | None

    def as_dict(self) -> dict:
        return asdict(self)

    def summary(self, topic: str) -> str:
        pace = "as fast as possible" if self.speed is None else f"at {self.speed:g}x the original pace"
        text = (f"sent {self.sent:,} events to {topic!r} in {self.elapsed_s:.2f}s "
                f"({self.events_per_s:,.0f} events/s, {pace}; the log spans {self.log_span_s:,.0f}s)")
        if self.failed:
            text += f"; {self.failed:,} failed"
        return text


def parse_speed(text: str | float | None) -> float | None:
    """``"max"`` (or ``None``) means no pacing; otherwise a positive speed-up factor.

    >>> parse_speed("max") is None, parse_speed("60")
    (True, 60.0)
    """
    if text is None or (isinstance(text, str) and text.strip().lower() in ("max", "inf", "")):
        return None
    try:
        speed = float(text)
    except ValueError:
        raise StreamrecError(f"speed must be a positive number or 'max', got {text!r}") from None
    if not speed > 0:
        raise StreamrecError(f"speed must be a positive number or 'max', got {text!r}")
    return None if speed == float("inf") else speed


def replay(
    events: Iterable[Event],
    producer: _Sender,
    *,
    speed: float | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], object] = time.sleep,
    progress: Callable[[int], object] | None = None,
    flush_timeout_s: float | None = 60.0,
) -> ReplayStats:
    """Send ``events`` through ``producer`` (an ``EventProducer``), paced by ``speed``.

    Events whose timestamp goes backwards (a log not in time order) are sent at once.
    Returns once every event has been flushed to the broker.
    """
    failed = 0

    def on_error(_exc) -> None:
        nonlocal failed
        failed += 1

    sent = 0
    first_ts = last_ts = None
    start = clock()
    for event in events:
        if first_ts is None:
            first_ts = event.ts
        last_ts = event.ts
        if speed is not None:
            delay = start + (event.ts - first_ts) / speed - clock()
            if delay >= _MIN_SLEEP_S:
                sleep(delay)
        future = producer.send(event)
        if future is not None and hasattr(future, "add_errback"):
            future.add_errback(on_error)
        sent += 1
        if progress is not None:
            progress(1)
    producer.flush(flush_timeout_s)
    elapsed = clock() - start
    span = (last_ts - first_ts) if first_ts is not None else 0.0
    return ReplayStats(sent=sent, failed=failed, elapsed_s=elapsed,
                       events_per_s=sent / elapsed if elapsed > 0 else 0.0, log_span_s=span, speed=speed)


def replay_to_kafka(
    events: Iterable[Event], bootstrap: str, topic: str, *, speed: float | None = None,
    progress: Callable[[int], object] | None = None, partitions: int | None = None, **producer_config,
) -> ReplayStats:
    """``replay`` through a fresh ``EventProducer`` on ``bootstrap``/``topic``.

    With ``partitions``, the topic is created with that many partitions when it is missing.
    """
    from kafka.errors import KafkaError

    from core.kafka import EventProducer, ensure_topics

    try:
        if partitions:
            ensure_topics(bootstrap, {topic: partitions})
        producer = EventProducer(bootstrap, topic, **producer_config)
    except (KafkaError, OSError) as exc:
        raise ReplayError(f"cannot reach Kafka at {bootstrap}: {type(exc).__name__}: {exc}") from None
    with producer:
        stats = replay(events, producer, speed=speed, progress=progress)
    if stats.failed:
        raise ReplayError(f"{stats.failed:,} of {stats.sent:,} events were not accepted by Kafka at {bootstrap}")
    return stats
