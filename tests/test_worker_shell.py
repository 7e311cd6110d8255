"""The worker shell's ordering duties, with recording stand-ins for Kafka and Redis (a pure
unit test; the integration tests run the same shell against real ones)."""

from __future__ import annotations

import gc
from collections import namedtuple

import orjson

from core.settings import Settings
from online_models.cooc import Cooc
from stream.checkpoint import FileCheckpointStore
from stream.pipeline import Record
from stream.worker import Worker

Partition = namedtuple("Partition", "topic partition")


class Calls(list):
    """One log of calls shared by the stand-ins, so their order can be checked."""


class Consumer:
    def __init__(self, calls: Calls, batches: list[list[Record]]):
        self.calls, self.batches = calls, batches

    def poll(self, timeout_ms=0, max_records=None):
        batch = self.batches.pop(0) if self.batches else []
        by_partition: dict = {}
        for record in batch:
            by_partition.setdefault(Partition(record.topic, record.partition), []).append(record)
        return by_partition

    def assignment(self):
        return set()

    def commit(self, offsets=None):
        self.calls.append("commit")

    def close(self):
        self.calls.append("consumer.close")


class Producer:
    def __init__(self, calls: Calls):
        self.calls, self.sent = calls, []

    def send(self, topic, key=None, value=None, headers=None):
        self.calls.append(f"send {topic}")
        self.sent.append((topic, value, dict(headers or [])))

    def flush(self):
        self.calls.append("flush")

    def close(self):
        pass


class Sink:
    def __init__(self, calls: Calls):
        self.calls, self.batches = calls, []

    def write_batch(self, lists, model, updated_at, popular=None, counters=None, similar=None, worker_metrics=None,
                    *rest, **for_the_dashboard):
        self.calls.append("write_batch")
        self.batches.append({"lists": lists, "counters": counters, "metrics": worker_metrics and worker_metrics[1]})

    def add_series(self, series, exposures, now=None):
        self.calls.append("add_series")

    def delete_users(self, user_ids):
        if user_ids:
            self.calls.append(f"delete_users {list(user_ids)}")

    def close(self):
        pass


def view(topic: str, offset: int, user: str, item: str) -> Record:
    return Record(topic, 0, offset, 0, user.encode(),
                  orjson.dumps({"user_id": user, "item_id": item, "type": "view", "ts": 1.0}))


def make_worker(tmp_path, batches, **settings):
    calls = Calls()
    settings = Settings(_env_file=None, state_dir=tmp_path, topic="t", **settings)
    worker = Worker(settings, model=Cooc(), sink=Sink(calls), consumer=Consumer(calls, batches),
                    dlq_producer=Producer(calls), checkpoints=FileCheckpointStore(tmp_path / "checkpoints", worker="w"))
    return worker, calls


def test_offsets_are_committed_only_after_dead_letters_are_flushed_and_effects_written(tmp_path) -> None:
    batch = [view("t", 0, "u", "a"), Record("t", 0, 1, 0, b"u", b"{oops"),
             Record("t.control", 0, 0, 0, b"", orjson.dumps({"action": "forget_user", "user_id": "gone"}))]
    worker, calls = make_worker(tmp_path, [batch])
    counts = worker.poll_once()
    assert (counts.consumed, counts.applied, counts.dead_lettered) == (2, 1, 1)
    assert calls == ["send t.dlq", "flush", "write_batch", "delete_users ['gone']", "commit"]
    topic, value, headers = worker.producer.sent[0]
    assert value == b"{oops" and headers["source"] == b"t/0/1" and headers["reason"]
    assert worker.sink.batches[0]["counters"]["dead_lettered:0"] == 1


def test_a_checkpoint_follows_when_due_and_a_restarted_worker_resumes_from_it(tmp_path) -> None:
    worker, calls = make_worker(tmp_path, [[view("t", 0, "u", "a"), view("t", 1, "u", "b")], [view("t", 2, "v", "a")]],
                                checkpoint_every_events=2)
    worker.poll_once()
    assert FileCheckpointStore(tmp_path / "checkpoints").summaries() == {"w": {0: 2}}
    worker.poll_once()  # one more event: not due yet; close() saves it
    worker.close()
    assert FileCheckpointStore(tmp_path / "checkpoints").summaries() == {"w": {0: 3}}
    again, _ = make_worker(tmp_path, [])
    assert again.totals.applied == 3 and again.pipeline.partitions[0].next_offset == 3
    assert again.model.recommend("u", 5) == worker.model.recommend("u", 5)


def test_a_checkpoint_takes_the_long_lived_state_out_of_the_collectors_view(tmp_path) -> None:
    """After a checkpoint the heap is frozen, so full collections stop walking the models'
    state again and again; it is still freed by reference counting."""
    gc.unfreeze()
    try:
        worker, _ = make_worker(tmp_path, [[view("t", 0, "u", "a")], [view("t", 1, "u", "b"), view("t", 2, "v", "a")]],
                                checkpoint_every_events=2)
        worker.poll_once()  # one event: no checkpoint yet
        assert gc.get_freeze_count() == 0
        worker.poll_once()
        assert gc.get_freeze_count() > 0
        assert not any(o is worker.pipeline.partitions for o in gc.get_objects())  # frozen: not in a generation
    finally:
        gc.unfreeze()


def test_a_checkpoint_is_reported_at_once(tmp_path) -> None:
    """The metrics go out after a checkpoint too, not only with the next batch (peers and
    tests read when a worker's learning went out in a delta, and which deltas it holds)."""
    worker, calls = make_worker(tmp_path, [[view("t", 0, "u", "a"), view("t", 1, "u", "b")]],
                                checkpoint_every_events=2)
    worker.poll_once()
    assert calls == ["write_batch", "commit", "write_batch"]
    batch, report = (b["metrics"] for b in worker.sink.batches)
    assert batch["last_checkpoint_at"] is None and batch["last_batch_at"] is not None
    assert report["last_checkpoint_at"] >= report["last_batch_at"] == batch["last_batch_at"]
    assert report["deltas_merged_through"] == dict(worker.sharing.log.merged)


def test_a_worker_with_no_batch_writes_and_commits_nothing(tmp_path) -> None:
    worker, calls = make_worker(tmp_path, [])
    assert worker.poll_once() is None and calls == []


def test_in_a_group_a_bad_side_record_is_dead_lettered_by_its_partitions_owner_only(tmp_path) -> None:
    worker, calls = make_worker(tmp_path, [[view("t", 0, "u", "a")]])
    worker.poll_once()  # this worker now owns event partition 0
    worker.in_group = True  # as a group member: side topics are read whole, by every member
    bad_here, bad_elsewhere = (Record("t.impressions", p, 0, 0, b"", b"{") for p in (0, 1))
    worker.consumer.batches.append([bad_here, bad_elsewhere])
    worker.poll_once()
    assert [(topic, headers["source"]) for topic, _, headers in worker.producer.sent] == [("t.dlq", b"t.impressions/0/0")]
