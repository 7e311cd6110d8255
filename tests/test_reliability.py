"""Fault injection against real processes: kill -9 the worker, stop Redis, restart Kafka.

Each scenario checks that nothing is lost and nothing is applied twice, and prints its
numbers (events sent, applied, dead-lettered, lost, duplicates applied, recovery time).
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import orjson
import pytest
from fastapi.testclient import TestClient

from core.kafka import EventProducer
from core.schema import Event
from core.settings import Settings
from online_models.cooc import Cooc
from serving.app import create_app
from stream.checkpoint import CheckpointFolder, make_checkpoint_store
from streamrec.services import LocalKafka, LocalRedis, free_port
from tests.helpers import read_topic, running_worker, served, store_of, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.reliability]


def synthetic_events(n: int, n_users: int = 150, n_items: int = 200, seed: int = 3) -> list[Event]:
    rng = random.Random(seed)
    types = ["view", "view", "click", "add_to_cart", "purchase"]
    return [
        Event(user_id=f"u{rng.randrange(n_users)}", item_id=f"i{int(rng.paretovariate(1.2)) % n_items}",
              type=rng.choice(types), ts=1_700_000_000.0 + i, event_id=f"e{i}")
        for i in range(n)
    ]


def worker_env(settings: Settings, extra: dict[str, str] | None = None) -> dict[str, str]:
    values = {
        "KAFKA_BOOTSTRAP": settings.kafka_bootstrap, "REDIS_URL": settings.redis_url, "TOPIC": settings.topic,
        "GROUP_ID": settings.group_id, "REDIS_PREFIX": settings.redis_prefix, "STATE_DIR": str(settings.state_dir),
        "MODEL": "cooc", "CHECKPOINT_EVERY_EVENTS": "300", "CHECKPOINT_INTERVAL_S": "0.5",
        "MAX_POLL_RECORDS": "200", "POLL_TIMEOUT_MS": "100", **(extra or {}),
    }
    return {**os.environ, **{f"STREAMREC_{k}": v for k, v in values.items()}}


def start_worker_process(settings: Settings, log: Path, extra: dict[str, str] | None = None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "streamrec", "worker"], env=worker_env(settings, extra),
                            stdout=open(log, "ab"), stderr=subprocess.STDOUT)


def counters(settings: Settings) -> dict[str, int]:
    import redis

    client = redis.Redis.from_url(settings.redis_url)
    totals: dict[str, int] = {}
    for field, value in client.hgetall(f"{settings.redis_prefix}:counters").items():
        name = field.decode().partition(":")[0]
        totals[name] = totals.get(name, 0) + int(value)
    client.close()
    return totals


def test_kill_9_mid_stream_loses_nothing_and_applies_nothing_twice(settings, tmp_path):
    good = synthetic_events(4000)
    rng = random.Random(5)
    stream: list[bytes | Event] = []
    duplicates = bad = 0
    for i, event in enumerate(good):
        stream.append(event)
        if i % 40 == 39:  # a producer retry re-sends an event already sent
            stream.append(rng.choice(good[: i + 1]))
            duplicates += 1
        if i % 100 == 50:
            stream.append(b"{oops" if bad % 2 else orjson.dumps({"user_id": "u1", "type": "click"}))
            bad += 1
    log = tmp_path / "worker.log"

    def produce():
        with EventProducer(settings.kafka_bootstrap, settings.topic) as producer:
            for i, item in enumerate(stream):
                if isinstance(item, Event):
                    producer.send(item)
                else:
                    producer.send_raw(item, key=b"bad")
                if i % 100 == 99:
                    producer.flush()
                    time.sleep(0.15)

    from core.kafka import ensure_topics

    ensure_topics(settings.kafka_bootstrap, {settings.topic: 3, settings.dlq_topic: 3})
    producer = threading.Thread(target=produce)
    producer.start()
    rng = random.Random(11)

    def start_and_wait() -> subprocess.Popen:
        mark = log.stat().st_size if log.exists() else 0
        process = start_worker_process(settings, log)
        wait_for(lambda: b"worker consuming" in log.read_bytes()[mark:], 60, "the worker to start")
        return process

    worker = start_and_wait()
    kills = 0
    try:
        for _ in range(3):
            time.sleep(rng.uniform(0.5, 2.0))  # mid-stream: the producer runs for about 6 s
            worker.send_signal(signal.SIGKILL)
            worker.wait()
            kills += 1
            worker = start_and_wait()
        producer.join()
        total = len(stream)
        started = time.monotonic()
        wait_for(lambda: counters(settings).get("consumed") == total, 90, f"{total} records consumed")
        caught_up_s = time.monotonic() - started
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(timeout=30)
    assert worker.returncode == 0, log.read_text()[-3000:]

    final = counters(settings)
    assert final == {"consumed": len(stream), "applied": len(good), "dead_lettered": bad,
                     "deduplicated": duplicates}
    dead = read_topic(settings.kafka_bootstrap, settings.dlq_topic, bad)
    assert len({dict(r.headers)["source"] for r in dead}) == bad  # each reject at least once

    # the model after three crashes equals one that learned every event exactly once
    folders = (settings.state_dir / "checkpoints" / settings.group_id / settings.topic / "workers").iterdir()
    recovered = CheckpointFolder(max(folders, key=lambda f: f.stat().st_mtime)).load()["model"]
    reference = Cooc()
    reference.learn_many(good)
    for user in sorted({e.user_id for e in good}):
        got, want = dict(recovered.recommend(user, k=1000)), dict(reference.recommend(user, k=1000))
        assert got.keys() == want.keys()
        assert [got[i] for i in want] == pytest.approx(list(want.values()), rel=1e-9, abs=1e-12)
    print(f"\nkill -9 x{kills}: sent {len(stream)} ({len(good)} good, {duplicates} duplicates, "
          f"{bad} bad); applied {final['applied']}, dead-lettered {final['dead_lettered']}, "
          f"deduplicated {final['deduplicated']}, lost 0, duplicates applied 0; "
          f"caught up {caught_up_s:.1f} s after the last event was sent")


@pytest.fixture
def own_redis(tmp_path):
    redis_server = LocalRedis(tmp_path / "own")
    port = free_port()
    redis_server.start(port=port)
    yield redis_server, port
    redis_server.stop()


def test_redis_outage_degrades_the_api_and_loses_nothing(settings, own_redis):
    redis_server, port = own_redis
    settings = settings.model_copy(update={"redis_url": f"redis://127.0.0.1:{port}/0"})
    events = synthetic_events(2000, seed=8)
    with running_worker(settings, model=Cooc()) as worker, TestClient(create_app(settings)) as api, \
            EventProducer(settings.kafka_bootstrap, settings.topic) as producer:
        producer.send_many(events[:1000])
        producer.flush()
        wait_for(lambda: served(worker) == 1000, 60, "the first half applied")
        user = events[0].user_id
        assert api.get(f"/users/{user}/recommendations").json()["source"] == "personal"

        redis_server.stop()
        went_down = time.monotonic()
        producer.send_many(events[1000:])
        producer.flush()
        ready = api.get("/readyz")
        assert ready.status_code == 503 and ready.json()["redis"] is False
        body = api.get(f"/users/{user}/recommendations").json()
        assert body["degraded"] is True and body["source"] == "popular" and body["items"]
        # the worker learns events of the second half and is then held up by the outage
        wait_for(lambda: worker.totals.applied > 1000, 60, "the worker to take events while Redis is down")
        down_s = time.monotonic() - went_down

        redis_server.start(port=port)
        back = time.monotonic()
        wait_for(lambda: store_of(worker.settings).counters().get("applied") == 2000, 60, "the worker to catch up")
        recovery_s = time.monotonic() - back
        assert api.get("/readyz").status_code == 200
        # the API retries Redis once its cooldown (1 s) after the last failure has passed
        body = wait_for(lambda: (b := api.get(f"/users/{user}/recommendations").json())["degraded"] is False and b,
                        10, "the API to read Redis again")
        assert body["source"] == "personal"
        assert store_of(worker.settings).counters() == {"consumed": 2000, "applied": 2000, "dead_lettered": 0, "deduplicated": 0}
    print(f"\nRedis down {down_s:.1f} s: sent 2000, applied 2000, dead-lettered 0, lost 0, duplicates applied 0; "
          f"caught up {recovery_s:.2f} s after Redis came back")


@pytest.mark.parametrize("checkpoint_store", ["file", "kafka"])
def test_kafka_broker_restart_mid_stream(settings, tmp_path, checkpoint_store):
    kafka = LocalKafka(tmp_path / "own", libs_dir=Settings(_env_file=None).state_dir / "kafka" / "libs")
    bootstrap = kafka.start(port=free_port())
    try:
        # checkpoints every 0.2 s: with the kafka store, some are being written as the broker goes
        settings = settings.model_copy(update={"kafka_bootstrap": bootstrap, "checkpoint_store": checkpoint_store,
                                               "checkpoint_interval_s": 0.2, "checkpoint_every_events": 100})
        events = synthetic_events(1000, seed=9)
        with running_worker(settings, model=Cooc()) as worker:
            with EventProducer(bootstrap, settings.topic) as producer:
                producer.send_many(events[:500])
            wait_for(lambda: worker.totals.applied == 500, 60, "the first half applied")

            kafka.stop()
            assert kafka.start() == bootstrap  # same address, same data
            back = time.monotonic()
            with EventProducer(bootstrap, settings.topic) as producer:
                producer.send_many(events[500:])
            wait_for(lambda: worker.totals.applied == 1000, 90, "the worker to resume")
            recovery_s = time.monotonic() - back
            totals = worker.totals
        assert (totals.consumed, totals.applied, totals.deduplicated) == (1000, 1000, 0)
        # the newest checkpoint (written as the worker stopped) holds each event once
        checkpoints = make_checkpoint_store(settings)
        recovered = checkpoints.load_newest()["model"]
        checkpoints.close()
        reference = Cooc()
        reference.learn_many(events)
        for user in sorted({e.user_id for e in events}):
            got, want = dict(recovered.recommend(user, k=1000)), dict(reference.recommend(user, k=1000))
            assert got.keys() == want.keys(), user
            # float32 sums in another batching; an event learned twice would move a score by far more
            assert [got[i] for i in want] == pytest.approx(list(want.values()), rel=1e-6)
    finally:
        kafka.stop()
    print(f"\n{checkpoint_store} checkpoints, Kafka restart: sent 1000, applied 1000, dead-lettered 0, lost 0, duplicates applied 0; "
          f"resumed {recovery_s:.1f} s after the broker was back")
