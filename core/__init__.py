"""What every streamrec package needs, and nothing that runs on its own: ``Settings``, the
root exception ``StreamrecError``, the event schema, the Redis key layout and list
encoding, the Kafka clients both sides use, and the metric numbers the worker reports.

Imports only go down: ``online_models`` (pure learning) at the ground, ``core`` above it,
``stream`` (the worker) and ``serving`` (the API) beside each other on top of ``core`` and
never importing each other, and the ``streamrec`` command line on top of all.
"""

__version__ = "0.1.0"
