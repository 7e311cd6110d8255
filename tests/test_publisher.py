"""``Publisher``: the API's producer, connected in a background thread (a pure unit test:
the factory stands in for Kafka)."""

from __future__ import annotations

import serving.publisher as publisher_module
from serving.publisher import Publisher


class _RunsAtOnce:
    """A thread whose ``start`` runs its target to the end before returning: the fastest
    connect there can be."""

    def __init__(self, target, daemon=None):
        self._target = target

    def start(self) -> None:
        self._target()

    def join(self, timeout=None) -> None:
        pass


def test_wait_answers_a_producer_that_connected_before_the_thread_was_handed_back(monkeypatch) -> None:
    """A connect that ends before ``_start_connecting`` returns clears ``_connecting``:
    ``wait`` must still join the thread it started (it raised AttributeError on None)."""
    monkeypatch.setattr(publisher_module.threading, "Thread", _RunsAtOnce)
    publisher = Publisher("nowhere:9092", "t", factory=lambda: "producer")
    assert publisher.wait() == "producer"


def test_a_failed_connect_answers_none_and_the_next_call_tries_again(monkeypatch) -> None:
    from kafka.errors import NoBrokersAvailable

    monkeypatch.setattr(publisher_module.threading, "Thread", _RunsAtOnce)
    answers = [NoBrokersAvailable(), "producer"]

    def factory():
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    publisher = Publisher("nowhere:9092", "t", factory=factory)
    assert publisher.wait() is None and publisher.last_error
    assert publisher.wait() == "producer" and publisher.last_error is None
