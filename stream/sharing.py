"""Shared item state between workers: numbered item deltas on ``<topic>.item-deltas``.

:class:`ItemSharing` tallies what the pipeline's learning changed in item state, makes
each checkpoint's delta, publishes it, and merges the peers' deltas into the pipeline.

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
import logging
import time
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from stream.pipeline import Pipeline, Reject

log = logging.getLogger("streamrec.sharing")

MAX_DELTA_BYTES = 64 * 1024 * 1024  # one checkpoint's item delta: the topic, producer and reader allow it

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


class ItemSharing:
    """This worker's side of item sharing: it tallies the items its own events touched,
    makes a numbered delta at each checkpoint, publishes it, and merges the peers' deltas.

    It reads and merges into the pipeline's ``model``, ``popularity`` and item times.
    ``with_peers`` is False for a worker that serves every partition alone: its deltas
    are drained (so the tallies stay small) but not made.
    """

    def __init__(self, pipeline: Pipeline, metrics: Any, with_peers: bool):
        self.pipeline = pipeline
        self.metrics = metrics
        self.with_peers = with_peers
        self.log = DeltaLog("")  # named by ``begin``
        self.enabled = pipeline.can.shares_items  # the popularity (a Trending) shares too
        if not self.enabled:
            log.warning("model %s does not share item state: with several workers, each learns items only "
                        "from the events of its own partitions", pipeline.model.name)
        self._items: dict[str, float] = {}  # items this worker's events touched since its last delta
        self._metadata: dict[str, dict] = {}  # item metadata it learned since then
        self._first_learned_at: float | None = None  # wall time of the first event in the next delta

    def _models(self) -> dict[str, Any]:
        return {"model": self.pipeline.model, "popularity": self.pipeline.popularity}

    def begin(self, source: str) -> None:
        """Number this run's deltas as ``source`` (one run of one worker)."""
        self.log.adopt(source)

    def resume(self, restored: DeltaLog) -> None:
        """Continue a restored checkpoint's log, numbering afresh as this run."""
        source, self.log = self.log.source, restored
        self.log.adopt(source)

    def note(self, touched_items: Iterable[str], item_metadata: dict[str, dict]) -> None:
        """Tally one batch: the items its events touched and the metadata it learned."""
        if not self.enabled:
            return
        if touched_items:
            item_last_active = self.pipeline.item_last_active
            self._items.update((item, item_last_active[item]) for item in touched_items)
            self._first_learned_at = self._first_learned_at or time.time()
        self._metadata.update(item_metadata)

    def make_delta(self) -> tuple[str, int, bytes] | None:
        """Number and encode what this worker's own learning changed in item state."""
        if not self.enabled:
            return None
        parts = {name: model.item_delta() for name, model in self._models().items()}  # drained even alone
        if not self.with_peers or (all(is_empty(part) for part in parts.values()) and not self._metadata):
            return None
        items, metadata = self._items, self._metadata
        parts["worker"] = {
            "item_ids": np.array(list(items), dtype=str), "item_ts": np.fromiter(items.values(), float, len(items)),
            "metadata_ids": np.array(list(metadata), dtype=str),
            "metadata_json": np.array([orjson.dumps(m).decode() for m in metadata.values()], dtype=str),
            "first_learned_at": self._first_learned_at or time.time(),
        }
        self._items, self._metadata, self._first_learned_at = {}, {}, None
        return self.log.make(encode(parts))

    def publish(self, producer: Any, topic: str, pending: tuple[str, int, bytes] | None) -> None:
        """Send a delta (again: merging is idempotent); durable before this returns."""
        if pending is None or not self.with_peers:
            return
        source, seq, payload = pending
        producer.send(topic, key=source.encode(), value=payload, headers=headers(source, seq))
        producer.flush()
        self.metrics.deltas_published += 1
        self.metrics.delta_bytes_published += len(payload)

    def merge(self, records: Iterable[Any]) -> tuple[int, list[Reject]]:
        """Add the peers' deltas not merged yet; returns how many were merged, and the
        malformed records with their reason."""
        pipeline, merged, rejects = self.pipeline, 0, []
        for record in records:
            pipeline.control_offsets.setdefault(record.topic, {})[record.partition] = record.offset + 1
            try:
                head = {key: value.decode() for key, value in record.headers}
                source, seq = head["source"], int(head["seq"])
                if not self.log.take(source, seq):
                    continue
                parts = decode(record.value)
                for name, model in self._models().items():
                    model.merge_item_delta(parts.get(name, {}))
            except (KeyError, ValueError, IndexError, TypeError, UnicodeDecodeError) as exc:
                # e.g. a peer running another model: say why, once, rather than stop every worker
                log.error("item delta %s/%d/%d not merged: %r", record.topic, record.partition, record.offset, exc)
                rejects.append(Reject(record, f"bad item delta: {exc!r}"))
                continue
            shared = parts.get("worker", {})
            item_last_active = pipeline.item_last_active
            for item_id, ts in zip(shared.get("item_ids", ()), shared.get("item_ts", ())):
                item_id = str(item_id)
                item_last_active[item_id] = max(float(ts), item_last_active.get(item_id, 0.0))
            if pipeline.can.learns_items:
                for item_id, text in zip(shared.get("metadata_ids", ()), shared.get("metadata_json", ())):
                    pipeline.model.learn_item(str(item_id), orjson.loads(str(text)))
            self.metrics.deltas_merged += 1
            merged += 1
            if "first_learned_at" in shared:
                self.metrics.item_staleness_seconds.observe(time.time() - float(shared["first_learned_at"]))
        return merged, rejects

