"""Which partitions this worker owns, and the checkpoints that hand them over.

Exactly-once effect on model state: every ``checkpoint_every_events`` events or
``checkpoint_interval_s`` seconds, and on shutdown, the worker saves the pipeline's whole
state (model, seen items, dedupe windows, counters) together with the next offset of each
partition it applied. On start it restores the group's newest valid checkpoint and seeks
each partition to its checkpointed offset: events after the checkpoint are applied once
more, to the state they were missing from, and events before it never again.

Several workers share one consumer group; user state is partitioned like the topic
(events are keyed by user). Before partitions leave a worker it checkpoints (release
before revoke); a worker given a partition takes its users from the newest checkpoint in
the group that holds it further on (``export_users`` / ``import_users``), resumes at that
checkpoint's offset, and publishes that checkpoint's pending item delta again.

Checkpoints are read and written only by the four methods under "storage" below, through
a ``CheckpointStore`` (``stream.checkpoint``): files in a folder the workers share, or the
compacted topic ``<topic>.checkpoints`` (``STREAMREC_CHECKPOINT_STORE``).
"""

from __future__ import annotations

import fcntl
import logging
import os
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from core.errors import StreamrecError
from core.settings import Settings
from online_models import Recommender
from stream.checkpoint import CheckpointStore, checkpoint_directory, make_checkpoint_store
from stream.pipeline import PartitionState, Pipeline
from stream.sharing import ItemSharing

log = logging.getLogger("streamrec.ownership")

Pending = tuple[str, int, bytes]  # an item delta to publish: (source, number, payload)


def _claim(directory: Path, name: str) -> tuple[Path, int]:
    """This process's checkpoint folder under ``directory``, locked for its lifetime: ``name``
    if no live process holds it, else ``name-<pid>`` (two workers on one host, no instance id)."""
    for candidate in (name, f"{name}-{os.getpid()}"):
        path = directory / candidate
        path.mkdir(parents=True, exist_ok=True)
        fd = os.open(path / ".lock", os.O_CREAT | os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return path, fd
        except BlockingIOError:
            os.close(fd)
    raise StreamrecError(f"cannot lock a checkpoint folder under {directory}")


class Ownership:
    """Partition ownership, checkpoints and their cadence for one worker.

    On creation it claims this worker's name, locked in its state folder (unless
    ``checkpoints`` is passed in), opens the checkpoint store under that name, names the run, and restores the group's newest checkpoint into ``pipeline`` and
    ``sharing``. It touches no Kafka consumer: ``take_over`` says where to seek, and the
    item deltas to publish are returned to the caller.
    """

    def __init__(self, settings: Settings, pipeline: Pipeline, sharing: ItemSharing,
                 checkpoints: CheckpointStore | None = None):
        self.settings = settings
        self.pipeline = pipeline
        self.sharing = sharing
        self._lock_fd = None
        if checkpoints is None:
            # the folder is the checkpoints' own with the file store (shared by the workers);
            # with the kafka store it holds only the lock, in the worker's own scratch folder
            folder, self._lock_fd = _claim(checkpoint_directory(settings) / "workers",
                                           settings.worker_instance_id or socket.gethostname())
            checkpoints = make_checkpoint_store(settings, worker=folder.name)
        self.checkpoints = checkpoints
        # also the static group membership id: a restarted worker rejoins at once, without
        # waiting for its previous run's session to time out
        self.worker_id = settings.worker_instance_id or checkpoints.worker
        sharing.begin(f"{self.worker_id}@{time.time_ns()}")
        self.events_since_checkpoint = 0
        self._held_by_taken = 0  # of those, held by a checkpoint taken, not durable yet
        self.checkpointed_at = time.monotonic()
        self.restore()

    # -- storage: the only reads and writes of checkpoints ------------------------------
    def _prepare(self, state: dict[str, Any], offsets: dict[int, int]) -> Callable[[], None]:
        return self.checkpoints.prepare(state, offsets)

    def _load_newest(self) -> dict[str, Any] | None:
        """The group's newest valid checkpoint, this worker's or a peer's."""
        return self.checkpoints.load_newest()

    def _held_offsets(self) -> dict[str, dict[int, int]]:
        """Each worker's newest checkpoint's partition -> offset, from its summary (this
        worker's own too: it may have restored a peer's)."""
        return self.checkpoints.summaries()

    def _load(self, source: str) -> dict[str, Any] | None:
        """The newest valid checkpoint of one worker (a key of ``_held_offsets``)."""
        return self.checkpoints.load(source)

    # -- restore and checkpoint --------------------------------------------------------
    def _check_model(self, saved: Recommender, where: str) -> None:
        model = self.pipeline.model
        if type(saved) is not type(model) or saved._get_params() != model._get_params():
            raise StreamrecError(
                f"{where} ({self.settings.checkpoint_store} store, group {self.settings.group_id}) holds {saved!r}, not {model!r}: "
                "serve the same model, or move the checkpoints away to start afresh"
            )

    def restore(self) -> None:
        """The group's newest checkpoint: its item state is the freshest, so the fewest
        item deltas are needed after it. Users whose partitions this worker is not given
        are dropped at the first assignment."""
        state = self._load_newest()
        if state is None:
            return
        self._check_model(state["model"], "the checkpoint")
        self.pipeline.load(state)
        self.sharing.resume(state["deltas"])
        log.info("restored checkpoint: offsets %s", {p: s.next_offset for p, s in self.pipeline.partitions.items()})

    def prepare_checkpoint(self) -> Callable[[], Pending | None]:
        """A checkpoint in two steps: expire idle ids, make the item delta and serialize the
        state with the offsets it reflects now; the call returned makes it durable and returns
        the delta, to publish then. The worker calls it once the batches the state holds are written."""
        self.pipeline.expire_idle()
        pending = self.sharing.make_delta()
        partitions = self.pipeline.partitions
        finish = self._prepare({**self.pipeline.state(), "deltas": self.sharing.log},
                               offsets={p: s.next_offset for p, s in partitions.items()})
        held, taken_at = self.events_since_checkpoint, time.monotonic()
        self._held_by_taken = held

        def finished() -> Pending | None:
            finish()
            # counted as saved only once durable: what was noted after it was taken still
            # counts, and a checkpoint that failed is still owed (``close`` saves one)
            self.events_since_checkpoint -= held
            self._held_by_taken = 0
            self.checkpointed_at = taken_at
            return pending

        return finished

    def note(self, changes: int) -> None:
        """Count records (and merged deltas) applied since the last checkpoint."""
        self.events_since_checkpoint += changes

    def due(self) -> bool:
        """Whether a checkpoint is due: enough changes, or enough time since the last."""
        changes = self.events_since_checkpoint - self._held_by_taken  # not in one taken already
        return bool(changes) and (
            changes >= self.settings.checkpoint_every_events
            or time.monotonic() - self.checkpointed_at >= self.settings.checkpoint_interval_s)

    # -- partitions --------------------------------------------------------------------
    def must_release(self, partitions: list[int]) -> bool:
        """Whether to checkpoint before the group moves ``partitions``, so that their next
        owner resumes here. (The users stay until the new assignment is known: it often
        gives them back.)"""
        return bool(partitions) and bool(self.pipeline.partitions)

    def take_over(self, assigned: list[int]) -> tuple[dict[int, int], list[Pending]]:
        """Own exactly ``assigned``: drop the other partitions' users, and for each assigned
        partition keep what this worker has, unless a checkpoint in the group holds it
        further on: then adopt the users from that checkpoint.

        Returns the offset to resume each assigned partition at, and the pending deltas of
        the checkpoints adopted from (to publish again)."""
        pipeline = self.pipeline
        for p in [p for p in pipeline.partitions if p not in assigned]:
            pipeline.drop_partition(p)
        held = self._held_offsets()
        peers: dict[str, dict | None] = {}
        resume_at = {}
        for p in sorted(assigned):
            best, source = pipeline.partitions[p].next_offset if p in pipeline.partitions else -1, None
            for worker, offsets in held.items():
                if offsets.get(p, -1) > best:
                    best, source = offsets[p], worker
            if source is not None:
                if source not in peers:
                    peers[source] = self._load(source)
                peer = peers[source]
                if peer is None:
                    if p in pipeline.partitions:
                        pipeline.drop_partition(p)
                else:
                    self._check_model(peer["model"], "a peer's checkpoint")
                    pipeline.adopt_partition(p, peer)
            resume_at[p] = pipeline.partitions.setdefault(p, PartitionState()).next_offset
        log.info("serving partitions %s", sorted(assigned))
        return resume_at, [state["deltas"].pending for state in peers.values() if state is not None]

    def close(self) -> None:
        """Release the checkpoint store and this worker's name."""
        self.checkpoints.close()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None
