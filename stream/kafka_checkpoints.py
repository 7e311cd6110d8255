"""Checkpoints in a compacted Kafka topic, so workers share nothing but Kafka and Redis.

The topic ``<topic>.checkpoints`` (``cleanup.policy=compact``) has two kinds of records:

- **Manifests**, in partition 0: one small JSON record per worker and generation, keyed
  ``["manifest", group, worker, generation]``. It names the generation, its chunk count,
  size and SHA-256, where its chunks are (partition, first and last offset), and the
  summary (event partition -> next offset). Partition 0 holds nothing else, so reading
  every worker's manifests never reads a state.
- **Chunks**, in partitions 1..n: the pickled state cut into records of ``chunk_bytes``
  (under the broker's default record limit, ``message.max.bytes`` = 1 MiB), keyed
  ``["chunk", group, worker, generation, index]``. A worker writes all its chunks to one
  partition (by a hash of its name), so a reader gets them back in one sequential scan.

Writing generation ``g`` of a worker:

1. a manifest with status ``writing`` and the chunk count, acknowledged first: should the
   writer die now, its next run knows which chunks to delete;
2. the chunks, all acknowledged;
3. the manifest with status ``complete``, the SHA-256 and the chunks' offsets: written
   last, so a reader never sees a generation whose chunks may be missing;
4. tombstones for the chunks and manifests of every earlier generation except the
   previous complete one (compaction then frees them), and of generations cut off.

Readers trust a generation only when its manifest is complete and every chunk is there
under its key within the named offsets, with the right total size and SHA-256; otherwise
they take the previous generation. The manifests partition is read from the beginning
once (it is small: compaction leaves about two manifests per worker) and followed after.
Generations are numbered per worker and never reused, so a key is written once (and then
deleted).

States are pickles, as in the file store: whoever may write this topic may run code in the
workers. Restrict it with ACLs as one would restrict a shared checkpoint folder.
"""

from __future__ import annotations

import hashlib
import logging
import pickle
import time
import zlib
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import orjson
from kafka import KafkaConsumer, TopicPartition
from kafka.errors import KafkaError

from core.errors import StreamrecError
from core.kafka import ensure_topics, make_producer
from stream.consumer import wait_for_partitions

log = logging.getLogger("streamrec.checkpoint")

RECORD_LIMIT_BYTES = 1_048_588  # the broker's default message.max.bytes
CHUNK_BYTES = 900 * 1024  # a chunk, its key and the batch header stay under the limit
MANIFEST_PARTITION = 0

TOPIC_CONFIG = {
    "cleanup.policy": "compact",
    "max.message.bytes": str(RECORD_LIMIT_BYTES),
    # compaction cleans only closed segments: roll them often enough that a day of
    # checkpoints never piles up in the active one
    "segment.bytes": str(128 * 1024 * 1024),
    "segment.ms": str(3600 * 1000),
    "min.cleanable.dirty.ratio": "0.5",
    "delete.retention.ms": str(3600 * 1000),  # how long tombstones stay readable
}


class CheckpointWriteError(StreamrecError):
    """A checkpoint could not be written; the previous one stays the newest."""


@dataclass
class Manifest:
    group: str
    worker: str
    generation: int
    status: str  # "writing" or "complete"
    chunks: int
    partition: int
    size_bytes: int = 0
    sha256: str = ""
    first_offset: int = -1
    last_offset: int = -1
    offsets: dict[int, int] = field(default_factory=dict)  # event partition -> next offset
    written_at: float = 0.0
    log_offset: int = -1  # where this manifest is in partition 0 (not stored: the log says)

    def to_json(self) -> bytes:
        data = asdict(self)
        data.pop("log_offset")
        data["offsets"] = {str(p): o for p, o in self.offsets.items()}
        return orjson.dumps(data)

    @classmethod
    def from_json(cls, raw: bytes, log_offset: int) -> Manifest:
        data = orjson.loads(raw)
        data["offsets"] = {int(p): int(o) for p, o in data.get("offsets", {}).items()}
        return cls(**data, log_offset=log_offset)


def manifest_key(group: str, worker: str, generation: int) -> bytes:
    return orjson.dumps(["manifest", group, worker, generation])


def chunk_key(group: str, worker: str, generation: int, index: int) -> bytes:
    return orjson.dumps(["chunk", group, worker, generation, index])


class KafkaCheckpointStore:
    """The checkpoints of one consumer group's workers in a compacted topic.

    Parameters
    ----------
    bootstrap
        Kafka's bootstrap servers.
    topic
        The checkpoint topic (``<event topic>.checkpoints``); created when missing, with
        ``1 + chunk_partitions`` partitions and ``TOPIC_CONFIG``.
    group
        The consumer group; the topic may hold other groups' checkpoints too.
    worker
        The name this store saves under; None for a store that only reads.
    chunk_partitions
        Partitions for chunks when the topic is created (workers spread over them).
    chunk_bytes
        The size of a chunk record's value.
    keep_previous
        Keep the previous complete generation when a new one completes (to fall back to).
    write_attempts
        Attempts at writing one checkpoint, each a new generation with a fresh producer
        (the producer itself retries within ``delivery_timeout_ms``).
    read_timeout_s
        How long a read may go without progress before it gives the generation up.
    """

    def __init__(self, bootstrap: str, topic: str, group: str, worker: str | None = None,
                 chunk_partitions: int = 3, chunk_bytes: int = CHUNK_BYTES, keep_previous: bool = True,
                 write_attempts: int = 2, read_timeout_s: float = 60.0, delivery_timeout_ms: int = 120_000):
        if not 0 < chunk_bytes <= CHUNK_BYTES:
            raise ValueError(f"chunk_bytes must be in (0, {CHUNK_BYTES}], got {chunk_bytes}")
        self.bootstrap, self.topic, self.group, self.worker = bootstrap, topic, group, worker
        self.chunk_bytes = chunk_bytes
        self.keep_previous = keep_previous
        self.write_attempts = write_attempts
        self.read_timeout_s = read_timeout_s
        self.delivery_timeout_ms = delivery_timeout_ms
        ensure_topics(bootstrap, {topic: 1 + chunk_partitions}, configs={topic: TOPIC_CONFIG})
        self._manifests = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
                                        auto_offset_reset="earliest")
        self.partitions = len(wait_for_partitions(self._manifests, self.topic))
        self._manifest_tp = TopicPartition(topic, MANIFEST_PARTITION)
        self._manifests.assign([self._manifest_tp])
        self._manifests.seek_to_beginning(self._manifest_tp)
        self._known: dict[bytes, Manifest] = {}  # manifest key -> its newest record, this group's only
        self._reader: KafkaConsumer | None = None
        self._producer = None
        self._next_generation: int | None = None

    # -- manifests -------------------------------------------------------------------
    def _catch_up(self) -> None:
        """Read partition 0 up to its current end."""
        end = self._manifests.end_offsets([self._manifest_tp])[self._manifest_tp]
        deadline = time.monotonic() + self.read_timeout_s
        while self._manifests.position(self._manifest_tp) < end:
            for records in self._manifests.poll(timeout_ms=500).values():
                for record in records:
                    self._apply(record)
            if time.monotonic() > deadline:
                raise StreamrecError(f"could not read the checkpoint manifests of {self.topic!r} "
                                     f"within {self.read_timeout_s:.0f} s")

    def _apply(self, record) -> None:
        if record.value is None:
            self._known.pop(record.key, None)
            return
        try:
            manifest = Manifest.from_json(record.value, record.offset)
        except (orjson.JSONDecodeError, TypeError, ValueError) as exc:
            log.warning("skipping manifest at %s/%d: %s", self.topic, record.offset, exc)
            return
        if manifest.group == self.group:
            self._known[record.key] = manifest

    def manifests(self, worker: str | None = None) -> list[Manifest]:
        """The group's manifests as read so far (``worker``'s only, if named), newest first."""
        found = [m for m in self._known.values() if worker is None or m.worker == worker]
        return sorted(found, key=lambda m: m.log_offset, reverse=True)

    def summaries(self) -> dict[str, dict[int, int]]:
        self._catch_up()
        newest: dict[str, Manifest] = {}
        for manifest in self.manifests():
            if manifest.status == "complete" and manifest.worker not in newest:
                newest[manifest.worker] = manifest
        return {worker: dict(m.offsets) for worker, m in sorted(newest.items())}

    # -- reading ---------------------------------------------------------------------
    def load(self, worker: str) -> dict[str, Any] | None:
        self._catch_up()
        for manifest in self.manifests(worker):
            if manifest.status == "complete":
                state = self._read(manifest)
                if state is not None:
                    return state
        return None

    def load_newest(self) -> dict[str, Any] | None:
        self._catch_up()
        for manifest in self.manifests():  # in the order they completed, newest first
            if manifest.status == "complete":
                state = self._read(manifest)
                if state is not None:
                    return state
        return None

    def read_payload(self, manifest: Manifest) -> bytes | None:
        """The generation's bytes when every chunk checks out, else None (and a warning)."""
        where = f"{manifest.worker}'s checkpoint generation {manifest.generation}"
        if self._reader is None:
            self._reader = KafkaConsumer(bootstrap_servers=self.bootstrap, group_id=None, enable_auto_commit=False,
                                         auto_offset_reset="earliest", fetch_max_bytes=64 * 1024 * 1024,
                                         max_partition_fetch_bytes=16 * 1024 * 1024,
                                         receive_buffer_bytes=4 * 1024 * 1024)
        tp = TopicPartition(self.topic, manifest.partition)
        self._reader.assign([tp])
        self._reader.seek(tp, manifest.first_offset)
        wanted = {chunk_key(self.group, manifest.worker, manifest.generation, i): i for i in range(manifest.chunks)}
        chunks: list[bytes | None] = [None] * manifest.chunks
        deadline = time.monotonic() + self.read_timeout_s
        while self._reader.position(tp) <= manifest.last_offset:
            polled = self._reader.poll(timeout_ms=500).get(tp, [])
            for record in polled:
                index = wanted.get(record.key)
                if index is not None and record.offset <= manifest.last_offset:
                    chunks[index] = record.value
            if polled:
                deadline = time.monotonic() + self.read_timeout_s
            elif time.monotonic() > deadline:
                log.warning("%s: no progress reading its chunks for %.0f s", where, self.read_timeout_s)
                return None
        missing = [i for i, chunk in enumerate(chunks) if chunk is None]
        if missing:
            log.warning("%s: chunks %s missing (deleted, or never written)", where, missing[:10])
            return None
        payload = b"".join(chunks)
        if len(payload) != manifest.size_bytes or hashlib.sha256(payload).hexdigest() != manifest.sha256:
            log.warning("%s: checksum mismatch (a corrupt chunk)", where)
            return None
        return payload

    def _read(self, manifest: Manifest) -> dict[str, Any] | None:
        payload = self.read_payload(manifest)
        return None if payload is None else pickle.loads(payload)

    # -- writing ---------------------------------------------------------------------
    def _chunk_partition(self) -> int:
        if self.partitions == 1:
            return MANIFEST_PARTITION
        return 1 + zlib.crc32(orjson.dumps([self.group, self.worker])) % (self.partitions - 1)

    def _ensure_producer(self):
        if self._producer is None:
            self._producer = make_producer(self.bootstrap, linger_ms=0, delivery_timeout_ms=self.delivery_timeout_ms,
                                           request_timeout_ms=min(30_000, self.delivery_timeout_ms))
        return self._producer

    def _drop_producer(self) -> None:
        if self._producer is not None:
            try:
                self._producer.close(timeout=5)
            except KafkaError:
                pass
            self._producer = None

    def _send_manifest(self, manifest: Manifest) -> None:
        key = manifest_key(self.group, manifest.worker, manifest.generation)
        metadata = self._ensure_producer().send(self.topic, key=key, value=manifest.to_json(),
                                                partition=MANIFEST_PARTITION)
        self._producer.flush()
        manifest.log_offset = metadata.get(timeout=0).offset
        self._known[key] = manifest

    def _send_chunks(self, payload: bytes, manifest: Manifest) -> list:
        """Queue the chunks; their futures (metadata with offsets) come back in order."""
        return [self._send_chunk(payload, manifest, i) for i in range(manifest.chunks)]

    def _send_chunk(self, payload: bytes, manifest: Manifest, index: int):
        size = self.chunk_bytes
        return self._ensure_producer().send(
            self.topic, key=chunk_key(self.group, manifest.worker, manifest.generation, index),
            value=payload[index * size:(index + 1) * size], partition=manifest.partition)

    def save(self, state: dict[str, Any], offsets: Mapping[int, int]) -> None:
        self.prepare(state, offsets)()

    def prepare(self, state: dict[str, Any], offsets: Mapping[int, int]) -> Callable[[], None]:
        """Pickle ``state`` now; the call returned writes it (see ``save``)."""
        if self.worker is None:
            raise ValueError("this checkpoint store only reads: it was given no worker name")
        payload = pickle.dumps(state, protocol=pickle.HIGHEST_PROTOCOL)
        offsets = dict(offsets)
        return lambda: self._save_payload(payload, offsets)

    def _save_payload(self, payload: bytes, offsets: Mapping[int, int]) -> None:
        if self._next_generation is None:
            self._catch_up()
            self._next_generation = 1 + max((m.generation for m in self.manifests(self.worker)), default=0)
        failure: Exception | None = None
        for attempt in range(1, self.write_attempts + 1):
            generation = self._next_generation
            self._next_generation += 1  # never reused, even by a write that fails
            try:
                self._write(payload, offsets, generation)
                return
            except KafkaError as exc:
                failure = exc
                log.warning("checkpoint generation %d of %s not written (attempt %d of %d): %r",
                            generation, self.worker, attempt, self.write_attempts, exc)
                self._drop_producer()  # an idempotent producer may be left fenced: start afresh
        raise CheckpointWriteError(f"checkpoint of {self.worker} not written to {self.topic!r} after "
                                   f"{self.write_attempts} attempts: {failure!r}")

    def _write(self, payload: bytes, offsets: Mapping[int, int], generation: int) -> None:
        manifest = Manifest(
            group=self.group, worker=self.worker, generation=generation, status="writing",
            chunks=max(1, -(-len(payload) // self.chunk_bytes)), partition=self._chunk_partition(),
            size_bytes=len(payload), offsets={int(p): int(o) for p, o in offsets.items()}, written_at=time.time())
        self._send_manifest(manifest)
        futures = self._send_chunks(payload, manifest)
        self._producer.flush()
        written = [future.get(timeout=0) for future in futures]  # raises the first failure
        manifest.first_offset, manifest.last_offset = written[0].offset, written[-1].offset
        manifest.sha256 = hashlib.sha256(payload).hexdigest()
        manifest.status = "complete"
        self._send_manifest(manifest)
        self._collect_garbage(generation)

    def _collect_garbage(self, newest: int) -> None:
        """Tombstones for this worker's generations before the previous complete one, and
        for the ones cut off; best effort (a failure here leaves garbage, not damage)."""
        mine = sorted(self.manifests(self.worker), key=lambda m: m.generation, reverse=True)
        complete = [m.generation for m in mine if m.status == "complete" and m.generation <= newest]
        kept = set(complete[: 2 if self.keep_previous else 1])
        producer = self._ensure_producer()
        try:
            for manifest in mine:
                if manifest.generation in kept or manifest.generation > newest:
                    continue
                for i in range(manifest.chunks):
                    producer.send(self.topic, key=chunk_key(self.group, self.worker, manifest.generation, i),
                                  value=None, partition=manifest.partition)
                key = manifest_key(self.group, self.worker, manifest.generation)
                producer.send(self.topic, key=key, value=None, partition=MANIFEST_PARTITION)
                self._known.pop(key, None)
            producer.flush()
        except KafkaError as exc:
            log.warning("tombstones for %s's old checkpoints not written: %r", self.worker, exc)

    def close(self) -> None:
        self._drop_producer()
        for consumer in (self._manifests, self._reader):
            if consumer is not None:
                consumer.close()
