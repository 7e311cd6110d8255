"""Shared item state between workers: numbered item deltas on ``<topic>.item-deltas``.

Each worker, at each checkpoint, publishes what its own learning changed in item state
(the model's ``item_delta``, the item times that drive idle expiry, the item metadata it
learned) as one record, numbered per worker. Every worker merges the others' records.

A record is merged at most once: ``merged[source]`` is the highest number taken from each
source, and a worker's own records count as merged when it makes them. So a record may be
published again after a crash (``pending`` travels in the checkpoint it goes with) without
being counted twice. A source is one run of one worker (its name and start time): a worker
that restarts from an older checkpoint than its last run reached numbers afresh, so it
never reuses a number its previous run published.

The wire format is numpy's npz with pickle refused: a record read from Kafka cannot run code.

>>> import numpy as np
>>> data = encode({"model": {"ids": np.array(["x"]), "counts": np.array([2.0])}, "worker": {}})
>>> decoded = decode(data)
>>> decoded["model"]["ids"].tolist(), decoded["model"]["counts"].tolist(), decoded["worker"]
(['x'], [2.0], {})
"""

from __future__ import annotations

import io
import time
import zipfile
from dataclasses import dataclass, field
from typing import Any

import numpy as np

_SEP = "::"  # between a part's name and its keys (the models' own keys may hold "/")


def encode(parts: dict[str, dict[str, Any]]) -> bytes:
    """Parts (name -> flat dict of arrays and numbers) as one npz payload."""
    buffer = io.BytesIO()
    arrays = {f"{name}{_SEP}{key}": np.asarray(value) for name, part in parts.items() for key, value in part.items()}
    arrays.update({f"{name}{_SEP}": np.zeros(0) for name in parts})  # keeps empty parts
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def decode(data: bytes) -> dict[str, dict[str, Any]]:
    """The parts of an ``encode``-d payload; raises ``ValueError`` on anything else."""
    parts: dict[str, dict[str, Any]] = {}
    try:
        loaded = np.load(io.BytesIO(data), allow_pickle=False)
    except (OSError, EOFError, zipfile.BadZipFile) as exc:
        raise ValueError(f"not an item delta: {exc}") from exc
    if not isinstance(loaded, np.lib.npyio.NpzFile):
        raise ValueError("not an item delta: an array, not an npz archive")
    with loaded:
        for key in loaded.files:
            name, sep, rest = key.partition(_SEP)
            if not sep:
                raise ValueError(f"not an item delta: key {key!r}")
            part = parts.setdefault(name, {})
            if rest:
                value = loaded[key]
                part[rest] = value.item() if value.ndim == 0 and value.dtype.kind in "fiub" else value
    return parts


def is_empty(part: dict[str, Any]) -> bool:
    """True when no array of a delta holds anything."""
    return not any(np.size(v) for v in part.values() if isinstance(v, np.ndarray))


@dataclass
class DeltaLog:
    """This worker's numbering of the deltas it made, and the ones it merged (checkpointed)."""

    source: str
    seq: int = 0  # the number of this source's newest delta
    merged: dict[str, int] = field(default_factory=dict)  # source -> highest number merged
    pending: tuple[str, int, bytes] | None = None  # (source, number, payload) of the newest own delta

    def make(self, payload: bytes) -> tuple[str, int, bytes]:
        """Number a new own delta; it counts as merged here, and is pending until published."""
        self.seq += 1
        self.merged[self.source] = self.seq
        self.pending = (self.source, self.seq, payload)
        return self.pending

    def take(self, source: str, seq: int) -> bool:
        """Whether a record from ``source`` numbered ``seq`` is new (and note it merged)."""
        if seq <= self.merged.get(source, 0):
            return False
        self.merged[source] = seq
        return True

    def adopt(self, source: str) -> None:
        """Continue a restored checkpoint's log as this run, ``source``."""
        self.source, self.seq = source, 0


def headers(source: str, seq: int) -> list[tuple[str, bytes]]:
    return [("source", source.encode()), ("seq", str(seq).encode()), ("sent_at", repr(time.time()).encode())]
