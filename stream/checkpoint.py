"""Durable worker checkpoints: model state and the Kafka offsets it reflects, saved together.

A checkpoint is one file, written atomically (temporary file, fsync, rename, fsync of the
folder), named by a growing sequence number and guarded by a SHA-256 checksum. Loading
takes the newest file whose checksum holds, so a checkpoint cut short by a crash is
skipped in favour of the one before it. A small summary travels ahead of the state, so a
peer can see what a checkpoint holds (which partitions, up to which offsets) without
reading all of it.

>>> import tempfile
>>> store = CheckpointStore(tempfile.mkdtemp())
>>> store.save({"offsets": {0: 42}}, summary={"partitions": {0: 42}})
>>> store.load()
{'offsets': {0: 42}}
>>> store.summary()
{'partitions': {0: 42}}
"""

from __future__ import annotations

import hashlib
import logging
import os
import pickle
import re
from pathlib import Path
from typing import Any

log = logging.getLogger("streamrec.checkpoint")

MAGIC = b"SRCK2\n"  # then: SHA-256 of the rest, summary length (8 bytes), summary, state
_HEADER = len(MAGIC) + 32 + 8
_NAME = re.compile(r"^checkpoint-(\d{12})\.bin$")


class CheckpointStore:
    """Checkpoints of one consumer group's worker state under ``directory``.

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
        self.directory.mkdir(parents=True, exist_ok=True)
        files = self._files()
        seq = files[0][0] + 1 if files else 1
        head = pickle.dumps(summary or {}, protocol=pickle.HIGHEST_PROTOCOL)
        body = len(head).to_bytes(8, "big") + head + pickle.dumps(state, protocol=pickle.HIGHEST_PROTOCOL)
        final = self.directory / f"checkpoint-{seq:012d}.bin"
        tmp = final.with_suffix(".tmp")
        with open(tmp, "wb") as f:
            f.write(MAGIC + hashlib.sha256(body).digest() + body)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, final)
        dir_fd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        for _, old in files[self.keep - 1 :]:
            old.unlink(missing_ok=True)

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
