"""The worker shell's ordering duties, with recording stand-ins for Kafka and Redis (a pure
unit test; the integration tests run the same shell against real ones)."""

from __future__ import annotations

import gc
import threading
from collections import namedtuple

import orjson
import pytest

from core.errors import StoreUnavailable
from core.settings import Settings
from online_models.cooc import Cooc
from stream.checkpoint import FileCheckpointStore
from stream.consumer import CommitError
from stream.pipeline import Record
from stream.worker import Worker

Partition = namedtuple("Partition", "topic partition")


class Calls(list):
    """One log of calls shared by the stand-ins, so their order can be checked."""


class Consumer:
    def __init__(self, calls: Calls, batches: list[list[Record]]):
        self.calls, self.batches, self.committed = calls, batches, []

    def poll(self, timeout_ms=0, max_records=None):
        batch = self.batches.pop(0) if self.batches else []
        by_partition: dict = {}
        for record in batch:
            by_partition.setdefault(Partition(record.topic, record.partition), []).append(record)
        return by_partition

    def assignment(self):
        return set()

    def commit(self, offsets=None, attempts=3):
        self.calls.append("commit")
        self.committed.append({(tp.topic, tp.partition): at for tp, at in (offsets or {}).items()})

    def commit_async(self, offsets=None):
        self.commit(offsets)

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
        self.batches.append({"lists": lists, "counters": counters, "metrics": worker_metrics and worker_metrics[1],
                             "exposures": for_the_dashboard.get("exposures")})

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
    worker.settle()  # the write went on in the background
    assert (counts.consumed, counts.applied, counts.dead_lettered) == (2, 1, 1)
    assert calls == ["send t.dlq", "flush", "write_batch", "delete_users ['gone']", "commit"]
    topic, value, headers = worker.producer.sent[0]
    assert value == b"{oops" and headers["source"] == b"t/0/1" and headers["reason"]
    assert worker.sink.batches[0]["counters"]["dead_lettered:0"] == 1


def test_a_checkpoint_follows_when_due_and_a_restarted_worker_resumes_from_it(tmp_path) -> None:
    worker, calls = make_worker(tmp_path, [[view("t", 0, "u", "a"), view("t", 1, "u", "b")], [view("t", 2, "v", "a")]],
                                checkpoint_every_events=2)
    worker.poll_once()  # due: the state is taken, durable once the batch's write in flight is
    assert FileCheckpointStore(tmp_path / "checkpoints").summaries() == {}
    worker.settle()
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
    """The metrics go out after a checkpoint too, not only with the next batch of events
    (peers and tests read when a worker's learning went out in a delta, and which deltas it
    holds): at the first poll that brings none."""
    worker, calls = make_worker(tmp_path, [[view("t", 0, "u", "a"), view("t", 1, "u", "b")]],
                                checkpoint_every_events=2)
    worker.poll_once()  # the checkpoint is taken; durable once the batch's write is
    assert worker.poll_once() is None  # no events: the write is waited for, the checkpoint done and reported
    worker.settle()  # the report went on in the background
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


class GatedSink(Sink):
    """A sink whose writes wait for ``gate``: a Redis write still under way."""

    def __init__(self, calls: Calls):
        super().__init__(calls)
        self.gate = threading.Event()

    def write_batch(self, *args, **kwargs):
        assert self.gate.wait(timeout=30), "the test never opened the gate"
        super().write_batch(*args, **kwargs)


class FailingSink(Sink):
    def write_batch(self, *args, **kwargs):
        raise StoreUnavailable("Redis did not answer: down for the test")


def gated_worker(tmp_path, batches, sink_class=GatedSink, **settings):
    worker, calls = make_worker(tmp_path, batches, **settings)
    worker.sink = sink_class(calls)
    return worker, calls


def test_the_next_batch_is_learned_while_the_write_is_in_flight_and_offsets_follow_their_own_write(tmp_path) -> None:
    worker, calls = gated_worker(tmp_path, [[view("t", 0, "u", "a"), view("t", 1, "u", "b")],
                                            [view("t", 2, "v", "a")]])
    learned = threading.Event()
    process = worker.pipeline.process
    worker.pipeline.process = lambda *args: (process(*args), learned.set())[0]
    worker.poll_once()  # batch 1: its write waits at the gate
    assert learned.is_set() and calls == []  # nothing written, so nothing committed
    learned.clear()
    second = threading.Thread(target=worker.poll_once)
    second.start()
    assert learned.wait(timeout=10)  # batch 2 learned while batch 1's write is still in flight
    assert worker.pipeline.partitions[0].next_offset == 3 and "commit" not in calls
    worker.sink.gate.set()
    second.join(timeout=10)
    assert not second.is_alive()
    # batch 1's offsets (captured when it was learned), not where the pipeline stood by then
    assert worker.consumer.committed == [{("t", 0): 2}]
    worker.settle()
    assert calls == ["write_batch", "commit", "write_batch", "commit"]
    assert worker.consumer.committed == [{("t", 0): 2}, {("t", 0): 3}]
    assert worker.metrics.batch_seconds.count == 2  # observed once each write was done


def test_a_failed_write_is_raised_in_the_loop_and_its_batch_is_neither_committed_nor_checkpointed(tmp_path) -> None:
    worker, calls = gated_worker(tmp_path, [[view("t", 0, "u", "a")], [view("t", 1, "v", "a")]],
                                 sink_class=FailingSink, checkpoint_every_events=2)
    worker.poll_once()  # handed over; it fails in the background
    with pytest.raises(StoreUnavailable):
        worker.poll_once()  # batch 2 is learned, then the loop waits for batch 1's write before handing it over
    with pytest.raises(StoreUnavailable):  # raised again: never taken for a durable write
        worker.checkpoint()
    assert calls == [] and worker.consumer.committed == []
    assert FileCheckpointStore(tmp_path / "checkpoints").summaries() == {}
    with pytest.raises(StoreUnavailable):
        worker.close()  # no checkpoint of the lost write either; the clients are released all the same
    assert calls == ["consumer.close", "flush"]
    assert FileCheckpointStore(tmp_path / "checkpoints").summaries() == {}


def test_a_checkpoint_taken_while_its_batch_is_written_becomes_durable_only_after_that_write(tmp_path) -> None:
    """The loop does not wait for the write in flight to take a checkpoint: the state is
    serialized at once, and the checkpoint is made durable (and its delta published) when
    the loop next waits for the write; a worker that dies before leaves no checkpoint."""
    worker, calls = gated_worker(tmp_path, [[view("t", 0, "u", "a"), view("t", 1, "u", "b")], [view("t", 2, "v", "a")]],
                                 checkpoint_every_events=2)
    worker.poll_once()  # batch 1 is learned, its write held at the gate, and the checkpoint taken
    # its events count as saved only once it is durable, and no second one is due meanwhile
    assert calls == [] and worker.ownership.events_since_checkpoint == 2 and not worker.ownership.due()
    assert FileCheckpointStore(tmp_path / "checkpoints").summaries() == {}
    assert worker.metrics.last_checkpoint_at is None
    worker.sink.gate.set()
    worker.poll_once()  # batch 2 is learned; waiting for batch 1's write, the checkpoint is made durable
    assert FileCheckpointStore(tmp_path / "checkpoints").summaries() == {"w": {0: 2}}  # batch 1's offsets only
    assert worker.ownership.events_since_checkpoint == 1  # batch 2's
    worker.settle()
    first, second = (batch["metrics"] for batch in worker.sink.batches)
    # reported with batch 2, and as taken before batch 2 was learned: it does not hold batch 2
    assert first["last_batch_at"] <= second["last_checkpoint_at"] < second["last_batch_at"]
    assert calls == ["write_batch", "commit", "write_batch", "commit"]


def test_a_checkpoint_that_fails_to_become_durable_is_owed_and_never_claims_a_batch_not_written(tmp_path) -> None:
    worker, calls = make_worker(tmp_path, [[view("t", 0, "u", "a"), view("t", 1, "u", "b")], [view("t", 2, "v", "a")]],
                                checkpoint_every_events=2)
    store, failures = worker.ownership.checkpoints, [OSError("checkpoint store unavailable")]
    real_prepare = store.prepare

    def flaky_prepare(state, offsets):
        finish = real_prepare(state, offsets)

        def flaky_finish():
            if failures:
                raise failures.pop()
            finish()
        return flaky_finish

    store.prepare = flaky_prepare
    worker.poll_once()  # batch 1 learned and handed over; a checkpoint taken
    worker.ownership.note(1)  # a peer's delta merged in the next poll
    with pytest.raises(OSError, match="unavailable"):
        worker.poll_once()  # batch 2 learned; its wait for batch 1's write makes the checkpoint durable: fails
    assert worker.ownership.events_since_checkpoint == 3  # batch 1's events still owed, and the delta
    worker.close()  # batch 2's write never started: a checkpoint now would claim offset 2
    assert [sorted(batch["lists"].users) for batch in worker.sink.batches] == [["u"]]
    assert FileCheckpointStore(tmp_path / "checkpoints").summaries() == {}
    again, _ = make_worker(tmp_path, [])
    assert again.pipeline.partitions == {} and again.totals.applied == 0


def test_a_released_partition_waits_for_the_write_in_flight_and_commits_only_what_is_still_owned(tmp_path) -> None:
    worker, calls = gated_worker(tmp_path, [[view("t", 0, "u", "a"), Record(
        "t", 1, 0, 0, b"v", orjson.dumps({"user_id": "v", "item_id": "b", "type": "view", "ts": 1.0}))]])
    worker.in_group = True
    worker.poll_once()
    worker.sink.gate.set()
    worker.release([1])  # as from inside poll(): the write is waited for, the checkpoint holds it
    assert calls == ["write_batch"]  # not committed from inside poll()
    assert FileCheckpointStore(tmp_path / "checkpoints").summaries() == {"w": {0: 1, 1: 1}}
    worker.pipeline.drop_partition(1)  # the group gave partition 1 to another worker
    worker.settle()
    assert worker.consumer.committed == [{("t", 0): 1}]


def test_no_events_while_a_write_is_held_up_neither_waits_nor_writes_and_what_was_served_goes_with_the_next(
        tmp_path) -> None:
    """An impression alone does not hold the loop up behind a Redis write still under way
    (in an outage it learns the next events first, then waits)."""
    served = Record("t.impressions", 0, 0, 0, b"", orjson.dumps(
        {"recomm_id": "r1", "ts": 1.0, "items": [{"item_id": "a", "strategy": "cooc", "position": 0}]}))
    worker, calls = gated_worker(tmp_path, [[view("t", 0, "u", "a")], [served], [view("t", 1, "v", "b")]])
    worker.poll_once()  # its write waits at the gate
    assert worker.poll_once() is None and calls == []
    worker.sink.gate.set()
    worker.poll_once()
    worker.settle()
    assert calls == ["write_batch", "commit", "write_batch", "commit"]
    assert [sum(n for counts in (b["exposures"] or {}).values() for n in counts.values())
            for b in worker.sink.batches] == [0, 1]


def test_a_batch_latency_ends_when_its_write_is_durable_not_when_the_loop_next_waits(tmp_path, monkeypatch) -> None:
    import time
    from types import SimpleNamespace

    import stream.worker

    clock = [100.0]  # perf_counter seconds, moved by hand
    monkeypatch.setattr(stream.worker, "time", SimpleNamespace(perf_counter=lambda: clock[0], time=time.time))
    worker, _ = make_worker(tmp_path, [[view("t", 0, "u", "a")], [view("t", 1, "v", "b")]])
    process = worker.pipeline.process

    def learn(records, *rest):
        effects = process(records, *rest)
        clock[0] += 0.5 if records[0].offset == 1 else 0.1  # learning batch 2 takes 0.5 s, batch 1 0.1 s
        return effects

    worker.pipeline.process = learn
    worker.poll_once()
    worker.poll_once()  # batch 1's write was done before batch 2 was learned
    worker.settle()
    assert worker.metrics.batch_seconds.count == 2
    assert worker.metrics.batch_seconds.total == pytest.approx(0.6)  # 0.1 + 0.5, not 0.6 + 0.5


def test_run_ends_with_its_last_commit_acknowledged(tmp_path) -> None:
    worker, calls = make_worker(tmp_path, [[view("t", 0, "u", "a")]])
    worker.in_group = True
    kinds = []
    worker.consumer.commit = lambda offsets=None, attempts=3: kinds.append("acknowledged")
    worker.consumer.commit_async = lambda offsets=None: kinds.append("sent")
    worker.poll_once()
    stop = threading.Event()
    stop.set()
    worker.run(stop)
    assert kinds == ["acknowledged"]


def test_a_write_that_fails_while_a_partition_is_released_is_raised_at_the_next_wait(tmp_path) -> None:
    """Whether or not the client passes a rebalance callback's error on (kafka-python logged
    and swallowed it), the failed write must never count as durable."""
    worker, calls = gated_worker(tmp_path, [[view("t", 0, "u", "a")]], sink_class=FailingSink)
    worker.in_group = True
    worker.poll_once()
    with pytest.raises(StoreUnavailable):
        worker.release([0])  # the client would swallow this
    with pytest.raises(StoreUnavailable):
        worker.settle()
    assert worker.consumer.committed == [] and FileCheckpointStore(tmp_path / "checkpoints").summaries() == {}


def test_outside_a_group_served_items_read_while_no_events_come_are_committed_once_counted(tmp_path) -> None:
    served = Record("t.impressions", 0, 4, 0, b"", orjson.dumps(
        {"recomm_id": "r1", "ts": 1.0, "items": [{"item_id": "a", "strategy": "cooc", "position": 0}]}))
    worker, calls = make_worker(tmp_path, [[served]])
    assert worker.poll_once() is None
    worker.settle()
    assert calls == ["add_series", "commit"]
    assert worker.consumer.committed == [{("t.impressions", 0): 5}]


def test_in_a_group_a_commit_that_fails_is_tried_once_logged_and_run_returns(tmp_path) -> None:
    """A stop during a broker outage: the last commit fails (the checkpoints hold the offsets),
    tried once, since retries would only hold the stopping worker up."""
    worker, _ = make_worker(tmp_path, [[view("t", 0, "u", "a")]])
    worker.in_group = True
    attempts_asked = []

    def unreachable(offsets=None, attempts=3):
        attempts_asked.append(attempts)
        raise CommitError(f"offsets not committed (attempt {attempts} of {attempts}): no coordinator")

    worker.consumer.commit = unreachable
    worker.poll_once()
    stop = threading.Event()
    stop.set()
    assert worker.run(stop).applied == 1  # not a traceback
    assert attempts_asked == [1]
    worker.in_group = False  # outside a group the committed offsets are where a reader resumes
    with pytest.raises(CommitError):
        worker._commit({Partition("t", 0): 1}, wait=True)
