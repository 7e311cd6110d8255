"""Durable worker checkpoints: model state and the Kafka offsets it reflects, saved together.

Workers of one consumer group save and read checkpoints through a ``CheckpointStore``, a
protocol with two implementations, chosen by ``STREAMREC_CHECKPOINT_STORE``:

- ``file`` (``FileCheckpointStore``, the default): one folder per worker under the group's
  folder, which must be shared by the workers (one machine, or a network file system);
- ``kafka`` (``stream.kafka_checkpoints.KafkaCheckpointStore``): a compacted topic
  ``<topic>.checkpoints``, so workers share nothing but Kafka and Redis.

In a folder (``CheckpointFolder``), a checkpoint is one file, written atomically (temporary
file, fsync, rename, fsync of the folder), named by a growing sequence number and guarded
by a SHA-256 checksum. Loading takes the newest file whose checksum holds, so a checkpoint
cut short by a crash is skipped in favour of the one before it. A small summary (partition
-> offset) travels ahead of the state, so a peer can see what a checkpoint holds without
reading all of it.

>>> import tempfile
>>> store = FileCheckpointStore(tempfile.mkdtemp(), worker="w0")
>>> store.save({"offsets": {0: 42}}, offsets={0: 42})
>>> store.summaries()
{'w0': {0: 42}}
>>> store.load("w0")
{'offsets': {0: 42}}
>>> store.load_newest()
{'offsets': {0: 42}}
"""

from __future__ import annotations

import hashlib
import logging
import os
import pickle
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

log = logging.getLogger("streamrec.checkpoint")

STORE_KINDS = ("file", "kafka")


@runtime_checkable
class CheckpointStore(Protocol):
    """Where the workers of one consumer group keep their checkpoints.

    Each worker saves under its own name; any worker reads any worker's. A checkpoint is
    the worker's state (a dict of live objects, pickled by the store) and a summary of
    the event partitions it holds: partition -> next offset.
    """

    worker: str | None  # the name this store saves under; None: it only reads

    def save(self, state: dict[str, Any], offsets: Mapping[int, int]) -> None:
        """Save ``state`` as this worker's newest checkpoint; durable when this returns."""

    def prepare(self, state: dict[str, Any], offsets: Mapping[int, int]) -> Callable[[], None]:
        """Serialize ``state`` as it is now; the call returned makes it this worker's newest
        checkpoint (durable when that returns). ``save`` is both at once; a prepared
        checkpoint never finished is never read."""

    def summaries(self) -> dict[str, dict[int, int]]:
        """Each worker's newest checkpoint's partition -> offset, read without the states."""

    def load(self, worker: str) -> dict[str, Any] | None:
        """``worker``'s newest valid checkpoint (a damaged one is passed over for the one
        before it); None when it has none."""

    def load_newest(self) -> dict[str, Any] | None:
        """The group's newest valid checkpoint, whoever saved it; None when there is none."""

    def close(self) -> None:
        """Release connections (the checkpoints stay)."""

MAGIC = b"SRCK2\n"  # then: SHA-256 of the rest, summary length (8 bytes), summary, state
_HEADER = len(MAGIC) + 32 + 8
_NAME = re.compile(r"^checkpoint-(\d{12})\.bin$")


class _HashingWriter:
    """Writes to ``file`` and keeps the SHA-256 of what went through (for ``pickle.dump``)."""

    def __init__(self, file):
        self._write = file.write
        self._sha256 = hashlib.sha256()

    def write(self, data) -> int:
        self._sha256.update(data)
        return self._write(data)

    def digest(self) -> bytes:
        return self._sha256.digest()


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class CheckpointFolder:
    """One worker's checkpoint files under ``directory``.

    Parameters
    ----------
    directory
        Where the files live (created when missing).
    keep
        How many recent checkpoints to keep; older ones are deleted after each save.
    """

    def __init__(self, directory: str | os.PathLike, keep: int = 3):
        self.directory = Path(directory)
        self.keep = keep

    def _files(self) -> list[tuple[int, Path]]:
        if not self.directory.is_dir():
            return []
        found = [(int(m.group(1)), p) for p in self.directory.iterdir() if (m := _NAME.match(p.name))]
        return sorted(found, reverse=True)

    def save(self, state: dict[str, Any], summary: dict[str, Any] | None = None) -> None:
        self.prepare(state, summary)()

    def prepare(self, state: dict[str, Any], summary: dict[str, Any] | None = None) -> Callable[[], None]:
        """Pickle ``state`` into a temporary file now; the call returned makes it durable and
        renames it into place (until then no reader sees it)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        files = self._files()
        seq = files[0][0] + 1 if files else 1
        head = pickle.dumps(summary or {}, protocol=pickle.HIGHEST_PROTOCOL)
        final = self.directory / f"checkpoint-{seq:012d}.bin"
        tmp = final.with_suffix(".tmp")
        with open(tmp, "wb") as f:
            # the state is pickled straight into the file, hashed on the way: no copy of it
            # in memory (the checksum's place is kept, and filled in once it is known)
            f.write(MAGIC + bytes(32))
            body = _HashingWriter(f)
            body.write(len(head).to_bytes(8, "big") + head)
            pickle.dump(state, body, protocol=pickle.HIGHEST_PROTOCOL)
            f.seek(len(MAGIC))
            f.write(body.digest())

        def finish() -> None:
            _fsync(tmp)
            os.replace(tmp, final)
            _fsync(self.directory)  # the rename too
            for _, old in files[self.keep - 1 :]:
                old.unlink(missing_ok=True)

        return finish

    def load(self) -> dict[str, Any] | None:
        """The newest valid checkpoint, or None when there is none."""
        for _, path in self._files():
            data = path.read_bytes()
            if len(data) < _HEADER or not data.startswith(MAGIC):
                log.warning("skipping %s: not a checkpoint of this version", path)
                continue
            body = memoryview(data)[_HEADER - 8 :]
            if hashlib.sha256(body).digest() != data[len(MAGIC) : _HEADER - 8]:
                log.warning("skipping %s: checksum mismatch (partial or corrupt)", path)
                continue
            head = int.from_bytes(data[_HEADER - 8 : _HEADER], "big")
            return pickle.loads(body[8 + head :])
        return None

    def summary(self) -> dict[str, Any] | None:
        """The summary saved with the newest checkpoint, read without the state (files are
        renamed into place only once complete; ``load`` still checks the whole)."""
        for _, path in self._files():
            with open(path, "rb") as f:
                header = f.read(_HEADER)
                if len(header) < _HEADER or not header.startswith(MAGIC):
                    continue
                return pickle.loads(f.read(int.from_bytes(header[-8:], "big")))
        return None


class FileCheckpointStore:
    """Checkpoints in folders: ``<directory>/workers/<worker>/``, one per worker.

    Peers read each other's folders, so with several workers ``directory`` must be shared
    by them all (one machine, or a network file system).

    Parameters
    ----------
    directory
        The group's folder (created when missing).
    worker
        The name this store saves under (its folder); None for a store that only reads.
    keep
        How many recent checkpoints each worker keeps.
    """

    def __init__(self, directory: str | os.PathLike, worker: str | None = None, keep: int = 3):
        self.directory = Path(directory)
        self.worker = worker
        self.keep = keep

    def _folder(self, worker: str) -> CheckpointFolder:
        return CheckpointFolder(self.directory / "workers" / worker, keep=self.keep)

    def _workers(self) -> list[str]:
        root = self.directory / "workers"
        return sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []

    def save(self, state: dict[str, Any], offsets: Mapping[int, int]) -> None:
        self.prepare(state, offsets)()

    def prepare(self, state: dict[str, Any], offsets: Mapping[int, int]) -> Callable[[], None]:
        if self.worker is None:
            raise ValueError("this checkpoint store only reads: it was given no worker name")
        return self._folder(self.worker).prepare(state, summary={"worker": self.worker, "partitions": dict(offsets)})

    def summaries(self) -> dict[str, dict[int, int]]:
        found = {}
        for worker in self._workers():
            summary = self._folder(worker).summary()
            if summary is not None:
                found[worker] = dict(summary.get("partitions") or {})
        return found

    def load(self, worker: str) -> dict[str, Any] | None:
        return self._folder(worker).load()

    def load_newest(self) -> dict[str, Any] | None:
        newest = []  # (mtime of the newest file, worker)
        for worker in self._workers():
            files = self._folder(worker)._files()
            if files:
                newest.append((files[0][1].stat().st_mtime, worker))
        for _, worker in sorted(newest, reverse=True):
            state = self.load(worker)
            if state is not None:
                return state
        return None

    def close(self) -> None:
        pass


def make_checkpoint_store(settings, worker: str | None = None) -> CheckpointStore:
    """The store ``settings.checkpoint_store`` names, for ``settings``' group and topic."""
    if settings.checkpoint_store == "kafka":
        from stream.kafka_checkpoints import KafkaCheckpointStore

        return KafkaCheckpointStore(settings.kafka_bootstrap, settings.checkpoints_topic, settings.group_id,
                                    worker=worker, chunk_partitions=settings.topic_partitions)
    return FileCheckpointStore(checkpoint_directory(settings), worker=worker)


def checkpoint_directory(settings) -> Path:
    """The group's folder of file checkpoints; with the Kafka store, only the workers' locks."""
    return settings.state_dir / "checkpoints" / settings.group_id / settings.topic
