"""Three worker processes in one consumer group on a 6-partition topic; one is killed
mid-stream. Its partitions move, nothing is lost or learned twice, and every survivor's
model equals one that learned each event once."""

from __future__ import annotations

import random
import signal
import threading
import time

import pytest
import redis

from online_models.cooc import Cooc
from serving.store import RecommendationStore
from stream.checkpoint import CheckpointStore
from stream.producer import EventProducer
from stream.schema import Event
from stream.topics import ensure_topics
from tests.helpers import read_topic, wait_for
from tests.test_reliability import counters, start_worker_process, synthetic_events

pytestmark = [pytest.mark.integration, pytest.mark.scale]
PARTITIONS = 6


def test_killing_one_of_three_workers_moves_its_partitions_and_loses_nothing(settings, tmp_path):
    settings = settings.model_copy(update={"topic_partitions": PARTITIONS})
    ensure_topics(settings.kafka_bootstrap, {name: PARTITIONS for name in (
        settings.topic, settings.dlq_topic, settings.control_topic, settings.impressions_topic)})
    good = synthetic_events(6000, n_users=300, seed=21)
    rng = random.Random(4)
    stream: list[Event | bytes] = []
    duplicates = bad = 0
    for i, event in enumerate(good):
        stream.append(event)
        if i % 60 == 59:
            stream.append(rng.choice(good[: i + 1]))
            duplicates += 1
        if i % 150 == 75:
            stream.append(b"{broken")
            bad += 1

    def produce():
        with EventProducer(settings.kafka_bootstrap, settings.topic) as producer:
            for i, item in enumerate(stream):
                producer.send(item) if isinstance(item, Event) else producer.send_raw(item, key=str(i).encode())
                if i % 200 == 199:
                    producer.flush()
                    time.sleep(0.2)

    logs = [tmp_path / f"w{n}.log" for n in range(3)]
    env = {"TOPIC_PARTITIONS": str(PARTITIONS), "SESSION_TIMEOUT_MS": "6000"}
    workers = [start_worker_process(settings, log, {**env, "WORKER_INSTANCE_ID": f"w{n}"})
               for n, log in enumerate(logs)]
    try:
        for log in logs:
            wait_for(lambda log=log: log.exists() and b"worker consuming" in log.read_bytes(), 90, f"{log.name} to start")
        producer = threading.Thread(target=produce)
        producer.start()
        time.sleep(2.5)
        workers[0].send_signal(signal.SIGKILL)  # mid-stream, without a goodbye
        workers[0].wait()
        producer.join()
        started = time.monotonic()
        wait_for(lambda: counters(settings).get("consumed") == len(stream), 120,
                 lambda: f"all {len(stream)} records served, got {counters(settings)}")
        moved_s = time.monotonic() - started
    finally:
        for worker in workers[1:]:
            worker.send_signal(signal.SIGTERM)
        for worker in workers[1:]:
            worker.wait(timeout=60)
    assert [w.returncode for w in workers[1:]] == [0, 0], [log.read_text()[-2000:] for log in logs[1:]]
    survivors_served = [log.read_text().count("serving partitions") for log in logs[1:]]
    assert all(survivors_served), "each survivor took ownership at least once"

    assert counters(settings) == {"consumed": len(stream), "applied": len(good), "dead_lettered": bad,
                                  "deduplicated": duplicates}
    dead = read_topic(settings.kafka_bootstrap, settings.dlq_topic, bad, allow_fewer=True)
    sources = {dict(r.headers)["source"].decode() for r in dead}
    if len(sources) != bad:  # say which ones are missing, and what the workers said then
        sent = read_topic(settings.kafka_bootstrap, settings.topic, len(stream))
        missing = sorted(f"{r.topic}/{r.partition}/{r.offset}" for r in sent if r.value == b"{broken")
        missing = [m for m in missing if m not in sources]
        raise AssertionError(f"dead letters missing: {missing}")

    store = RecommendationStore(redis.Redis.from_url(settings.redis_url), settings.redis_prefix)
    users = sorted({e.user_id for e in good})
    assert all(store.user_list(u) is not None for u in users), "every user's list was written by some owner"

    reference = Cooc()
    reference.learn_many(good)
    for n in (1, 2):
        state = CheckpointStore(settings.state_dir / "checkpoints" / settings.group_id / settings.topic / f"w{n}").load()
        replica = state["model"]
        for user in users[::10]:
            got, want = dict(replica.recommend(user, k=1000)), dict(reference.recommend(user, k=1000))
            assert got.keys() == want.keys()
            assert [got[i] for i in want] == pytest.approx(list(want.values()), rel=1e-9, abs=1e-12)
    print(f"\n3 workers, 6 partitions, one killed: sent {len(stream)}, applied {len(good)}, dead-lettered {bad}, "
          f"deduplicated {duplicates}, lost 0, applied twice 0; all served {moved_s:.1f} s after the last send")
