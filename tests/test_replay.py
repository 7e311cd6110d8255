"""Replaying logs into Kafka: pacing (unit, fake clock) and every row arriving once, in order per user."""

from __future__ import annotations

import random
from collections import Counter, defaultdict
from pathlib import Path

import orjson
import pytest

from core.errors import StreamrecError
from core.schema import Event
from stream.logs import read_log
from stream.replay import parse_speed, replay, replay_to_kafka
from streamrec.cli import main

FIXTURES = Path(__file__).parent / "fixtures"


class FakeClock:
    def __init__(self):
        self.now = 100.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(round(seconds, 6))
        self.now += seconds


class ListProducer:
    def __init__(self, clock=None):
        self.sent: list[tuple[float, Event]] = []
        self.clock = clock
        self.flushed = False

    def send(self, event):
        self.sent.append((self.clock() if self.clock else 0.0, event))

    def flush(self, timeout_s=None):
        self.flushed = True


def ev(user, item, ts):
    return Event(user_id=user, item_id=item, type="click", ts=float(ts), event_id=f"{user}-{item}-{ts}")


def test_speed_divides_the_original_gaps():
    clock = FakeClock()
    producer = ListProducer(clock)
    events = [ev("a", "x", 1000), ev("b", "y", 1010), ev("a", "z", 1010), ev("c", "w", 1030)]
    stats = replay(events, producer, speed=10, clock=clock, sleep=clock.sleep)
    assert clock.sleeps == [1.0, 2.0]
    assert [t - 100.0 for t, _ in producer.sent] == [0.0, 1.0, 1.0, 3.0]
    assert [e for _, e in producer.sent] == events and producer.flushed
    assert stats.sent == 4 and stats.log_span_s == 30 and stats.elapsed_s == pytest.approx(3.0)
    assert "4 events" in stats.summary("t")


def test_max_speed_never_sleeps_and_backwards_time_is_sent_at_once():
    clock = FakeClock()
    events = [ev("a", "x", 50), ev("a", "y", 10), ev("a", "z", 5000)]
    replay(events, ListProducer(), speed=None, clock=clock, sleep=clock.sleep)
    assert clock.sleeps == []
    replay(events, ListProducer(), speed=1.0, clock=clock, sleep=clock.sleep)
    assert clock.sleeps == [4950.0]


def test_parse_speed():
    assert parse_speed("max") is None and parse_speed("60") == 60.0 and parse_speed("0.5") == 0.5
    for bad in ("0", "-2", "fast"):
        with pytest.raises(StreamrecError):
            parse_speed(bad)


# -- real Kafka ------------------------------------------------------------------------------


def consume_all(bootstrap: str, topic: str, expected: int, timeout_s: float = 30.0) -> list:
    """Every record of ``topic`` from the start, reading a little past ``expected`` to catch extras."""
    import time

    from kafka import KafkaConsumer

    consumer = KafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                             enable_auto_commit=False, group_id=None)
    records: list = []
    deadline = time.monotonic() + timeout_s
    quiet_until = None
    try:
        while time.monotonic() < deadline:
            batch = consumer.poll(timeout_ms=300)
            for part in batch.values():
                records.extend(part)
            if len(records) >= expected:
                quiet_until = quiet_until or time.monotonic() + 1.5  # then wait for any duplicates
                if time.monotonic() > quiet_until:
                    break
    finally:
        consumer.close()
    return records


def interleaved_log(n_users: int = 25, per_user: int = 20, seed: int = 11) -> list[Event]:
    rng = random.Random(seed)
    rows = [(f"user{u}", n) for u in range(n_users) for n in range(per_user)]
    rng.shuffle(rows)
    count: dict[str, int] = defaultdict(int)
    events = []
    for t, (user, _) in enumerate(rows):
        events.append(Event(user_id=user, item_id=f"item{rng.randrange(50)}", type="view", ts=1_600_000_000 + t,
                            event_id=f"{user}#{count[user]}"))
        count[user] += 1
    return events


def check_arrived(records, events):
    ids = [orjson.loads(r.value)["event_id"] for r in records]
    assert Counter(ids) == Counter(e.event_id for e in events), "each row must arrive exactly once"
    for r in records:
        assert r.key.decode() == orjson.loads(r.value)["user_id"]  # keyed by user
    by_user: dict[str, list[str]] = defaultdict(list)
    for r in sorted(records, key=lambda r: (r.partition, r.offset)):
        by_user[r.key.decode()].append(orjson.loads(r.value)["event_id"])
    sent: dict[str, list[str]] = defaultdict(list)
    for e in events:
        sent[e.user_id].append(e.event_id)
    assert by_user == sent, "each user's events must arrive in the order they were sent"


@pytest.mark.integration
def test_replay_into_kafka_every_row_once_in_order_per_user(settings):
    from core.kafka import ensure_topics

    ensure_topics(settings.kafka_bootstrap, {settings.topic: 3})
    events = interleaved_log()
    stats = replay_to_kafka(events, settings.kafka_bootstrap, settings.topic, speed=None)
    assert stats.sent == len(events) and stats.failed == 0
    records = consume_all(settings.kafka_bootstrap, settings.topic, len(events))
    assert len({r.partition for r in records}) > 1  # the test means something only across partitions
    check_arrived(records, events)
    first = orjson.loads(records[0].value)
    assert set(first) >= {"user_id", "item_id", "type", "ts", "event_id"}


@pytest.mark.integration
def test_replay_command_sends_a_log_file(settings, monkeypatch, capsys):
    monkeypatch.setenv("STREAMREC_KAFKA_BOOTSTRAP", settings.kafka_bootstrap)  # Settings() reads it
    path = FIXTURES / "ml-100k-sample.inter"
    code = main(["replay", str(path), "--format", "movielens", "--topic", settings.topic, "--speed", "max"])
    assert code == 0
    out = capsys.readouterr().out
    assert "sent 12 events" in out and "events/s" in out
    events = read_log(path, "movielens").events
    records = consume_all(settings.kafka_bootstrap, settings.topic, len(events))
    check_arrived(records, events)
    assert {orjson.loads(r.value)["value"] for r in records} == {e.value for e in events}


@pytest.mark.integration
def test_replay_command_limit_and_paced(settings, monkeypatch, capsys):
    monkeypatch.setenv("STREAMREC_KAFKA_BOOTSTRAP", settings.kafka_bootstrap)
    path = FIXTURES / "yoochoose"
    # the first 3 clicks in time span 36.15 s; at 60x that is about 0.6 s
    code = main(["replay", str(path), "--format", "yoochoose", "--topic", settings.topic, "--speed", "60",
                 "--limit", "3"])
    assert code == 0
    out = capsys.readouterr().out
    assert "sent 3 events" in out and "60x" in out
    events = read_log(path, "yoochoose", limit=3).events
    check_arrived(consume_all(settings.kafka_bootstrap, settings.topic, 3), events)
