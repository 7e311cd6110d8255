"""Benchmarks of streamrec against real local Kafka and Redis: ``python -m bench all [--quick]``.

Each script measures one thing end to end (ingest, freshness, serving, scale of state,
backtest speed), repeats it, and reports min/median/max together with a baseline measured
in the same run (a bare Kafka consumer, a bare FastAPI endpoint, ...), so that numbers
from different machines can still be compared as ratios. No timed tests live here.
"""
