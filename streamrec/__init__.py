"""streamrec: Kafka events in, online models in the middle, live top-k lists out of Redis.

The data path, one package a step:

``stream/`` (events, producer, worker, replay) -> ``online_models/`` (learning, evaluation)
-> ``serving/`` (Redis store, FastAPI app). This package holds what spans them:
settings, the CLI, the local services launcher and the root exception.
"""

from streamrec.errors import StreamrecError

__all__ = ["StreamrecError"]
__version__ = "0.1.0"
