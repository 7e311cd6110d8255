"""One write in flight: the worker's Redis write of a batch runs on a thread of its own
while the loop polls and learns the next batch.

The loop hands a write over with what it must do once the write is durable (commit the
batch's offsets, observe its freshness), and waits for it before it hands the next one
over and before anything that must see it done (a checkpoint, a partition released, a
report, close). A write's error is raised in the loop, at every wait, until the worker
stops: a failed write is never taken for a durable one.

The write reads only its batch's effects, which the pipeline builds afresh for each batch
and does not touch again; the sink is used by one thread at a time.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Generic, TypeVar

T = TypeVar("T")


class WriteBehind(Generic[T]):
    """At most one write running in the background, and what to do once it is done.

    >>> writes = WriteBehind()
    >>> writes.hand_over(lambda: 42, "offsets of batch 1")
    >>> writes.wait()
    ('offsets of batch 1', 42)
    >>> writes.wait() is None  # nothing in flight
    True
    >>> writes.close()
    """

    def __init__(self) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="streamrec-writer")
        self._in_flight: tuple[Future, T] | None = None

    @property
    def busy(self) -> bool:
        """A write is running (``wait`` would block)."""
        return self._in_flight is not None and not self._in_flight[0].done()

    def hand_over(self, write: Callable[[], object], then: T) -> None:
        """Start ``write`` in the background; ``then`` comes back from the ``wait`` that sees it done."""
        if self._in_flight is not None:
            raise RuntimeError("a write is in flight: wait() for it before handing over the next")
        self._in_flight = (self._executor.submit(write), then)

    def wait(self) -> tuple[T, object] | None:
        """Block until the write in flight is done; return its ``then`` and its result, or
        None when none is in flight. Raises the write's error (again at the next wait)."""
        if self._in_flight is None:
            return None
        future, then = self._in_flight
        result = future.result()
        self._in_flight = None
        return then, result

    def close(self) -> None:
        """Let the write in flight finish (its error, if any, stays unraised here) and stop the thread."""
        self._executor.shutdown(wait=True)
