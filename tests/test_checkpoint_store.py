"""Checkpoint stores against real Kafka: the contract both stores keep, and what the Kafka
store does with chunks, manifests, cut-off writes, corrupt chunks, big states and a broker
restarted mid-write."""

from __future__ import annotations

import hashlib
import logging
import os
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from kafka import KafkaConsumer, TopicPartition

from stream.checkpoint import CheckpointStore, FileCheckpointStore, make_checkpoint_store
from stream.kafka_checkpoints import (
    CHUNK_BYTES,
    MANIFEST_PARTITION,
    CheckpointWriteError,
    KafkaCheckpointStore,
    Manifest,
    chunk_key,
    manifest_key,
)
from core.settings import Settings
from streamrec.services import LocalKafka, free_port
from tests.helpers import wait_for

pytestmark = [pytest.mark.integration]


def incompressible(n_bytes: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, n_bytes, dtype=np.uint8)


def kafka_store(settings: Settings, worker: str | None = None, **kwargs) -> KafkaCheckpointStore:
    return KafkaCheckpointStore(settings.kafka_bootstrap, settings.checkpoints_topic, settings.group_id,
                                worker=worker, **kwargs)


def raw_log(bootstrap: str, topic: str, partition: int) -> list:
    """Every record in one partition of ``topic``, tombstones included."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
                             auto_offset_reset="earliest", max_partition_fetch_bytes=4 * 1024 * 1024)
    tp = TopicPartition(topic, partition)
    consumer.assign([tp])
    end = consumer.end_offsets([tp])[tp]
    records = []
    deadline = time.monotonic() + 30
    while consumer.position(tp) < end and time.monotonic() < deadline:
        for batch in consumer.poll(timeout_ms=500).values():
            records.extend(batch)
    consumer.close()
    return records


@pytest.fixture(params=["file", "kafka"])
def store_settings(request, settings):
    return settings.model_copy(update={"checkpoint_store": request.param})


def test_both_stores_keep_the_contract(store_settings):
    writers = {name: make_checkpoint_store(store_settings, worker=name) for name in ("w0", "w1")}
    reader = make_checkpoint_store(store_settings)
    try:
        assert all(isinstance(s, CheckpointStore) for s in (*writers.values(), reader))
        assert reader.summaries() == {} and reader.load("w0") is None and reader.load_newest() is None
        writers["w0"].save({"n": 1}, {0: 10, 1: 5})
        writers["w1"].save({"n": 2}, {2: 7})
        writers["w0"].save({"n": 3}, {0: 12, 1: 6})
        writers["w1"].save({"n": 4}, {2: 9})
        if store_settings.checkpoint_store == "file":  # it orders by modification time: w1's is the newer
            w0_file, w1_file = (writers[name]._folder(name)._files()[0][1] for name in ("w0", "w1"))
            later = w0_file.stat().st_mtime_ns + 1_000_000_000
            os.utime(w1_file, ns=(later, later))
        assert reader.summaries() == {"w0": {0: 12, 1: 6}, "w1": {2: 9}}
        assert reader.load("w0") == {"n": 3}
        assert reader.load("w1") == {"n": 4}
        assert reader.load("nobody") is None
        assert reader.load_newest() == {"n": 4}
        with pytest.raises(ValueError, match="only reads"):
            reader.save({"n": 5}, {})
    finally:
        for store in (*writers.values(), reader):
            store.close()


def test_a_checkpoint_is_chunks_then_a_manifest_and_old_generations_are_tombstoned(settings):
    chunk_bytes = 64 * 1024
    store = kafka_store(settings, "w0", chunk_bytes=chunk_bytes)
    states = [{"gen": g, "data": incompressible(300_000 + g, seed=g)} for g in range(1, 5)]
    for g, state in enumerate(states, start=1):
        store.save(state, {0: 100 * g})
    store.close()

    manifests = [(r.key, r.value and Manifest.from_json(r.value, r.offset))
                 for r in raw_log(settings.kafka_bootstrap, settings.checkpoints_topic, MANIFEST_PARTITION)]
    # per generation: "writing" (the chunk count) before "complete"
    written = [(m.generation, m.status) for _, m in manifests if m]
    assert written == [(g, s) for g in range(1, 5) for s in ("writing", "complete")]
    # generations 1 and 2 are superseded (4 is the newest, 3 the one to fall back to)
    tombstoned = [key for key, m in manifests if m is None]
    assert tombstoned == [manifest_key(settings.group_id, "w0", 1), manifest_key(settings.group_id, "w0", 2)]

    complete = [m for _, m in manifests if m and m.status == "complete"]
    by_generation = {m.generation: m for m in complete}
    newest = by_generation[4]
    assert newest.partition != MANIFEST_PARTITION, "chunks stay out of the manifests' partition"
    pickled_bytes = newest.size_bytes
    assert newest.chunks == -(-pickled_bytes // chunk_bytes) > 4
    chunks = raw_log(settings.kafka_bootstrap, settings.checkpoints_topic, newest.partition)
    mine = [r for r in chunks if newest.first_offset <= r.offset <= newest.last_offset]
    assert [r.key for r in mine] == [chunk_key(settings.group_id, "w0", 4, i) for i in range(newest.chunks)]
    assert all(len(r.value) == chunk_bytes for r in mine[:-1]) and len(mine[-1].value) <= chunk_bytes
    assert hashlib.sha256(b"".join(r.value for r in mine)).hexdigest() == newest.sha256
    for g in (1, 2):  # every chunk of a superseded generation has its tombstone
        dead = {r.key for r in chunks if r.value is None}
        assert {chunk_key(settings.group_id, "w0", g, i) for i in range(by_generation[g].chunks)} <= dead

    reader = kafka_store(settings)
    got = reader.load("w0")
    assert got["gen"] == 4 and np.array_equal(got["data"], states[-1]["data"])
    assert reader.summaries() == {"w0": {0: 400}}
    assert [m.generation for m in reader.manifests("w0")] == [4, 3]
    reader.close()


CUT_OFF_WRITER = """
import sys, time
import numpy as np
from stream.kafka_checkpoints import KafkaCheckpointStore

class DiesMidWrite(KafkaCheckpointStore):
    def _send_chunk(self, payload, manifest, index):
        if index == 3:  # three chunks sent
            self._producer.flush()
            print("cut", flush=True)
            time.sleep(600)  # killed here, between chunks, before the manifest
        return super()._send_chunk(payload, manifest, index)

bootstrap, topic, group = sys.argv[1:4]
store = DiesMidWrite(bootstrap, topic, group, worker="w0", chunk_bytes=100_000)
store.save({"gen": 2, "data": np.zeros(1_000_000, dtype=np.uint8)}, {0: 200})
"""


def test_a_checkpoint_cut_off_between_chunks_is_never_used(settings, tmp_path):
    previous = {"gen": 1, "data": incompressible(250_000, seed=1)}
    store = kafka_store(settings, "w0", chunk_bytes=100_000)
    store.save(previous, {0: 100})
    store.close()

    out = tmp_path / "writer.out"
    with open(out, "wb") as stdout:
        writer = subprocess.Popen([sys.executable, "-c", CUT_OFF_WRITER, settings.kafka_bootstrap,
                                   settings.checkpoints_topic, settings.group_id], stdout=stdout,
                                  stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: b"cut" in out.read_bytes(), 60, lambda: f"the writer to send 3 chunks: {out.read_text()}")
    finally:
        writer.kill()
        writer.wait()

    reader = kafka_store(settings)
    got = reader.load("w0")
    assert got["gen"] == 1 and np.array_equal(got["data"], previous["data"])
    assert reader.summaries() == {"w0": {0: 100}}
    assert [(m.generation, m.status) for m in reader.manifests("w0")] == [(2, "writing"), (1, "complete")]
    assert reader.load_newest()["gen"] == 1
    reader.close()

    # the worker's next run numbers on past the cut-off generation and deletes its chunks
    restarted = kafka_store(settings, "w0", chunk_bytes=100_000)
    restarted.save({"gen": 3}, {0: 300})
    restarted.close()
    chunks = raw_log(settings.kafka_bootstrap, settings.checkpoints_topic, restarted._chunk_partition())
    written_cut_off = {r.key for r in chunks if r.value is not None and b'"w0",2,' in r.key}
    assert written_cut_off == {chunk_key(settings.group_id, "w0", 2, i) for i in range(3)}
    assert written_cut_off <= {r.key for r in chunks if r.value is None}
    reader = kafka_store(settings)
    assert reader.load("w0") == {"gen": 3}
    assert [(m.generation, m.status) for m in reader.manifests("w0")] == [(3, "complete"), (1, "complete")]
    reader.close()


class CorruptsAChunk(KafkaCheckpointStore):
    """Flips one byte of chunk 2 after the checksum was taken (a disk or a bug between)."""

    def _send_chunks(self, payload, manifest):
        damaged = bytearray(payload)
        damaged[2 * self.chunk_bytes + 17] ^= 0xFF
        return super()._send_chunks(bytes(damaged), manifest)


def test_the_checksum_catches_a_corrupt_chunk_and_the_previous_generation_is_used(settings, caplog):
    good = {"gen": 1, "data": incompressible(500_000, seed=3)}
    store = kafka_store(settings, "w0", chunk_bytes=100_000)
    store.save(good, {0: 100})
    store.close()
    corrupting = CorruptsAChunk(settings.kafka_bootstrap, settings.checkpoints_topic, settings.group_id,
                                worker="w0", chunk_bytes=100_000)
    corrupting.save({"gen": 2, "data": incompressible(500_000, seed=4)}, {0: 200})
    corrupting.close()

    reader = kafka_store(settings)
    with caplog.at_level(logging.WARNING, logger="streamrec.checkpoint"):
        got = reader.load("w0")
    assert got["gen"] == 1 and np.array_equal(got["data"], good["data"])
    assert "generation 2: checksum mismatch" in caplog.text
    assert reader.load_newest()["gen"] == 1
    reader.close()


BIG_BYTES = 200 * 1024 * 1024


def test_a_200_mb_state_round_trips_through_the_topic(settings):
    big = {"item_vectors": incompressible(BIG_BYTES, seed=5).view(np.float32).reshape(-1, 64),
           "users": {f"u{i}": i for i in range(1000)}}
    store = kafka_store(settings, "big")
    started = time.perf_counter()
    store.save(big, {0: 1})
    write_s = time.perf_counter() - started
    store.close()
    reader = kafka_store(settings)
    started = time.perf_counter()
    got = reader.load("big")
    read_s = time.perf_counter() - started
    manifest = reader.manifests("big")[0]
    reader.close()
    assert manifest.size_bytes > BIG_BYTES and manifest.chunks == -(-manifest.size_bytes // CHUNK_BYTES)
    assert np.array_equal(got["item_vectors"].view(np.uint8), big["item_vectors"].view(np.uint8))
    assert got["users"] == big["users"]
    mb = manifest.size_bytes / 1e6
    print(f"\n{mb:.0f} MB in {manifest.chunks} chunks: written in {write_s:.1f} s ({mb / write_s:.0f} MB/s), "
          f"read in {read_s:.1f} s ({mb / read_s:.0f} MB/s)")


class PausesMidWrite(KafkaCheckpointStore):
    """Sends half the chunks, says so, and waits to be let go on (while the broker restarts)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.half_sent, self.go_on = threading.Event(), threading.Event()

    def _send_chunk(self, payload, manifest, index):
        if index == manifest.chunks // 2:
            self._producer.flush()
            self.half_sent.set()
            self.go_on.wait(120)
        return super()._send_chunk(payload, manifest, index)


@pytest.mark.reliability
def test_a_broker_restarted_mid_write_loses_no_checkpoint(tmp_path):
    kafka = LocalKafka(tmp_path / "own", libs_dir=Settings(_env_file=None).state_dir / "kafka" / "libs")
    bootstrap = kafka.start(port=free_port())
    topic = "restart.checkpoints"
    try:
        previous = {"gen": 1, "data": incompressible(2_000_000, seed=6)}
        writer = PausesMidWrite(bootstrap, topic, "g", worker="w0", delivery_timeout_ms=90_000)
        writer.go_on.set()
        writer.save(previous, {0: 100})
        writer.half_sent.clear()
        writer.go_on.clear()
        newer = {"gen": 2, "data": incompressible(8_000_000, seed=7)}
        outcome: list = []

        def save():
            try:
                writer.save(newer, {0: 200})
                outcome.append("written")
            except CheckpointWriteError as exc:
                outcome.append(exc)

        saving = threading.Thread(target=save)
        saving.start()
        assert writer.half_sent.wait(60), "half of the chunks sent"
        kafka.stop()
        writer.go_on.set()  # the other half goes to a broker that is down
        assert kafka.start() == bootstrap  # same address, same data
        saving.join(180)
        assert not saving.is_alive()

        reader = KafkaCheckpointStore(bootstrap, topic, "g")
        got = reader.load("w0")
        expected = newer if outcome == ["written"] else previous
        assert got["gen"] == expected["gen"] and np.array_equal(got["data"], expected["data"]), outcome
        newest = {"gen": 3, "data": incompressible(1_000_000, seed=8)}
        writer.save(newest, {0: 300})
        got = reader.load("w0")
        assert got["gen"] == 3 and np.array_equal(got["data"], newest["data"])
        assert reader.summaries() == {"w0": {0: 300}}
        print(f"\nbroker restarted mid-write: the write {'went through (producer retries)' if outcome == ['written'] else 'failed, the previous generation stayed'}; nothing lost")
        writer.close()
        reader.close()
    finally:
        kafka.stop()


def test_the_settings_choose_the_store(settings, tmp_path):
    file_store = make_checkpoint_store(settings.model_copy(update={"state_dir": tmp_path}), worker="w")
    assert isinstance(file_store, FileCheckpointStore)
    assert file_store.directory == tmp_path / "checkpoints" / settings.group_id / settings.topic
    kafka = make_checkpoint_store(settings.model_copy(update={"checkpoint_store": "kafka"}), worker="w")
    assert isinstance(kafka, KafkaCheckpointStore) and kafka.topic == f"{settings.topic}.checkpoints"
    kafka.close()
