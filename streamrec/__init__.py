"""streamrec: Kafka events in, online models in the middle, live top-k lists out of Redis.

The data path, one package a step: ``stream/`` (the worker) -> ``online_models/``
(learning, evaluation) -> Redis -> ``serving/`` (the FastAPI app); ``core/`` holds what
they share. This package is the top: the command line, the local services launcher and
backtest reports.
"""
