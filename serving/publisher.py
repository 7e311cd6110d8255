"""The API's one Kafka producer, connected in the background so the API starts (and reads
keep working) while Kafka is away."""

from __future__ import annotations

import logging
import threading

from kafka.errors import KafkaError

from stream.producer import EventProducer

log = logging.getLogger("streamrec.api")


class Publisher:
    """Holds an ``EventProducer``, created on first need in a background thread."""

    def __init__(self, bootstrap: str, topic: str):
        self.bootstrap = bootstrap
        self.topic = topic
        self._producer: EventProducer | None = None
        self._lock = threading.Lock()
        self._connecting: threading.Thread | None = None
        self.last_error: str | None = None

    def _connect(self) -> None:
        try:
            producer = EventProducer(self.bootstrap, self.topic)
        except KafkaError as exc:
            self.last_error = str(exc)
            log.warning("Kafka producer not connected: %s", exc)
        else:
            self._producer, self.last_error = producer, None
        finally:
            self._connecting = None

    def _start_connecting(self) -> threading.Thread:
        with self._lock:
            if self._connecting is None:
                self._connecting = threading.Thread(target=self._connect, daemon=True)
                self._connecting.start()
            return self._connecting

    def nowait(self) -> EventProducer | None:
        """The producer if connected; otherwise start connecting and answer None at once."""
        if self._producer is None:
            self._start_connecting()
        return self._producer

    def wait(self, timeout_s: float = 15.0) -> EventProducer | None:
        """The producer, connecting first if need be (None if that failed)."""
        if self._producer is None:
            thread = self._start_connecting()
            thread.join(timeout_s)
        return self._producer

    def close(self) -> None:
        if self._producer is not None:
            self._producer.close()
