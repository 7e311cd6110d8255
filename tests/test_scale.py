"""Three worker processes in one consumer group on a 6-partition topic; one is killed
mid-stream. Its partitions move with their users, nothing is lost or learned twice, and
every user's state, with the item state the survivors share, equals that of one model that
learned each event once. With the kafka checkpoint store the workers share no folder: each
has its own, and every hand-over goes through the topic ``<topic>.checkpoints``."""

from __future__ import annotations

import random
import signal
import threading
import time

import pytest
import redis

from core.kafka import EventProducer, ensure_topics
from core.schema import Event
from online_models.cooc import Cooc
from serving.store import RecommendationStore
from stream.checkpoint import make_checkpoint_store
from tests.helpers import item_deltas_settled, read_topic, wait_for
from tests.test_reliability import counters, start_worker_process, synthetic_events

pytestmark = [pytest.mark.integration, pytest.mark.scale]
PARTITIONS = 6


@pytest.mark.parametrize(("checkpoint_store", "joins_late"), [
    ("file", False),  # three workers from the start, one shared state folder
    ("kafka", True),  # two from the start, the third after the kill; a state folder each
])
def test_killing_one_of_three_workers_moves_its_partitions_and_loses_nothing(settings, tmp_path, checkpoint_store,
                                                                           joins_late):
    settings = settings.model_copy(update={"topic_partitions": PARTITIONS, "checkpoint_store": checkpoint_store})
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

    def produce(start: int, stop: int):
        with EventProducer(settings.kafka_bootstrap, settings.topic) as producer:
            for i in range(start, stop):
                item = stream[i]
                producer.send(item) if isinstance(item, Event) else producer.send_raw(item, key=str(i).encode())
                if i % 200 == 199:
                    producer.flush()
                    time.sleep(0.2)

    logs = [tmp_path / f"w{n}.log" for n in range(3)]
    env = {"TOPIC_PARTITIONS": str(PARTITIONS), "SESSION_TIMEOUT_MS": "6000", "CHECKPOINT_STORE": checkpoint_store}

    def start(n: int):
        own = {"STATE_DIR": str(tmp_path / f"w{n}-state")} if checkpoint_store == "kafka" else {}
        return start_worker_process(settings, logs[n], {**env, "WORKER_INSTANCE_ID": f"w{n}", **own})

    def wait_until_logged(n: int, line: bytes) -> None:
        wait_for(lambda: logs[n].exists() and line in logs[n].read_bytes(), 90, f"w{n} to log {line!r}")

    workers = [start(n) for n in range(2 if joins_late else 3)]
    before_join = 2 * len(stream) // 3 if joins_late else len(stream)
    try:
        for n in range(len(workers)):
            wait_until_logged(n, b"worker consuming")
        producer = threading.Thread(target=produce, args=(0, before_join))
        producer.start()
        time.sleep(2.5)
        workers[0].send_signal(signal.SIGKILL)  # mid-stream, without a goodbye
        workers[0].wait()
        producer.join()
        if joins_late:  # the survivor lets partitions go to the newcomer, which learns the rest of the stream
            workers.append(start(2))
            wait_until_logged(2, b"serving partitions")
            produce(before_join, len(stream))
        started = time.monotonic()
        wait_for(lambda: counters(settings).get("consumed") == len(stream), 120,
                 lambda: f"all {len(stream)} records served, got {counters(settings)}")
        moved_s = time.monotonic() - started
        wait_for(lambda: item_deltas_settled(settings, ["w1", "w2"]), 60,
                 "the survivors' last item deltas to reach each other")
    finally:
        for worker in workers[1:]:
            worker.send_signal(signal.SIGTERM)
        for worker in workers[1:]:
            worker.wait(timeout=60)
    assert [w.returncode for w in workers[1:]] == [0, 0], [log.read_text()[-2000:] for log in logs[1:]]
    survivors_served = [log.read_text().count("serving partitions") for log in logs[1:]]
    assert all(survivors_served), "each survivor took ownership at least once"
    if joins_late:
        newcomer = logs[2].read_text()  # it starts from the group's newest checkpoint, or adopts a newer one
        assert "restored checkpoint" in newcomer or "users over" in newcomer, "the newcomer took state from a peer"
    if checkpoint_store == "kafka":
        assert not list(tmp_path.rglob("checkpoint-*.bin")), "no checkpoint files: the topic holds them"

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
    checkpoints = make_checkpoint_store(settings)
    owners: dict[str, int] = {}
    for n in (1, 2):
        state = checkpoints.load(f"w{n}")
        replica, mine = state["model"], set().union(*(s.users for s in state["partitions"].values()))
        assert not mine & owners.keys(), "a user has one owner"
        owners.update(dict.fromkeys(mine, n))
        for user in sorted(mine):
            got, want = dict(replica.recommend(user, k=1000)), dict(reference.recommend(user, k=1000))
            assert got.keys() == want.keys(), user
            assert [got[i] for i in want] == pytest.approx(list(want.values()), rel=1e-9, abs=1e-12)
        assert replica.state_sizes()["users"] == len(mine), "a survivor keeps only its own users"
    assert owners.keys() == set(users)
    assert set(owners.values()) == {1, 2}, "both survivors own users"
    checkpoints.close()
    print(f"\n{checkpoint_store} checkpoints, 3 workers{' (one joining late)' if joins_late else ''}, 6 partitions, "
          f"one killed: sent {len(stream)}, applied {len(good)}, dead-lettered {bad}, "
          f"deduplicated {duplicates}, lost 0, applied twice 0; all served {moved_s:.1f} s after the last send")


def _survivor_states(settings, names: list[str]) -> dict[str, dict]:
    checkpoints = make_checkpoint_store(settings)
    try:
        return {name: checkpoints.load(name) for name in names}
    finally:
        checkpoints.close()


def test_a_worker_that_joins_takes_over_users_with_their_state(settings, tmp_path):
    """A clean rebalance: the first worker checkpoints as it lets partitions go, the newcomer
    takes their users from that checkpoint; both end with each user's exact state."""
    settings = settings.model_copy(update={"topic_partitions": PARTITIONS})
    ensure_topics(settings.kafka_bootstrap, {name: PARTITIONS for name in (
        settings.topic, settings.dlq_topic, settings.control_topic, settings.impressions_topic)})
    events = synthetic_events(3000, n_users=200, seed=31)
    env = {"TOPIC_PARTITIONS": str(PARTITIONS), "SESSION_TIMEOUT_MS": "6000"}
    logs = [tmp_path / f"w{n}.log" for n in range(2)]
    first = start_worker_process(settings, logs[0], {**env, "WORKER_INSTANCE_ID": "w0"})
    workers = [first]
    try:
        wait_for(lambda: logs[0].exists() and b"serving partitions" in logs[0].read_bytes(), 90, "w0 to join")
        with EventProducer(settings.kafka_bootstrap, settings.topic) as producer:
            producer.send_many(events[:1500])
        wait_for(lambda: counters(settings).get("applied") == 1500, 60, "the first half served by w0")
        workers.append(start_worker_process(settings, logs[1], {**env, "WORKER_INSTANCE_ID": "w1"}))
        wait_for(lambda: logs[1].exists() and b"serving partitions" in logs[1].read_bytes(), 90, "w1 to join")
        with EventProducer(settings.kafka_bootstrap, settings.topic) as producer:
            producer.send_many(events[1500:])
        wait_for(lambda: counters(settings).get("applied") == 3000, 60,
                 lambda: f"all 3000 served, got {counters(settings)}")
        wait_for(lambda: item_deltas_settled(settings, ["w0", "w1"]), 60,
                 "the workers' last item deltas to reach each other")
    finally:
        for worker in workers:
            worker.send_signal(signal.SIGTERM)
        for worker in workers:
            worker.wait(timeout=60)
    assert [w.returncode for w in workers] == [0, 0], [log.read_text()[-2000:] for log in logs]
    assert counters(settings) == {"consumed": 3000, "applied": 3000, "dead_lettered": 0, "deduplicated": 0}

    reference = Cooc()
    reference.learn_many(events)
    states = _survivor_states(settings, ["w0", "w1"])
    owned = [set().union(*(s.users for s in state["partitions"].values())) for state in states.values()]
    assert owned[0] and owned[1] and not owned[0] & owned[1]
    assert owned[0] | owned[1] == {e.user_id for e in events}
    for state, users in zip(states.values(), owned):
        for user in sorted(users):
            got, want = dict(state["model"].recommend(user, k=1000)), dict(reference.recommend(user, k=1000))
            assert got.keys() == want.keys(), user
            assert [got[i] for i in want] == pytest.approx(list(want.values()), rel=1e-9, abs=1e-12)
