"""The root exception type: every error streamrec raises on purpose derives from it."""


class StreamrecError(Exception):
    """Base class of streamrec's own errors."""


class InvalidEvent(StreamrecError):
    """An event that fails validation; ``reason`` says why, in words a producer can act on."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class ServiceError(StreamrecError):
    """A local service (Kafka, Redis) could not be installed, started or reached."""


class StoreUnavailable(StreamrecError):
    """The Redis store did not answer after its retries."""
