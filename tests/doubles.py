"""Test doubles: stand-ins for what a worker talks to, for tests that run it without Kafka."""

from __future__ import annotations


class Nothing:
    """Stands in for a worker's consumer, DLQ producer or sink: assigned nothing, every call a no-op."""

    def assignment(self) -> set:
        return set()

    def __getattr__(self, name):
        return lambda *args, **kwargs: None
