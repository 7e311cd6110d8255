"""What explanations cost the worker: ``Pipeline.process`` on the first 40,000 events of
ml-latest-small (``../shared``) in batches of 2,000, serving ``blend``, with and without
``explain_items`` (the two pipelines take the same batches in turn).

    python -m bench.explain_cost
"""

from __future__ import annotations

import csv
import dataclasses
import time
from pathlib import Path

import orjson

from core.settings import Settings
from online_models import make_model
from stream.pipeline import Pipeline, Record

RATINGS = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "ml-latest-small" / "ratings.csv"


def main() -> None:
    rows = []
    with open(str(RATINGS), newline='') as f:
        for r in csv.reader(f):
            if r[0].isdigit(): rows.append((float(r[3]), r[0], r[1]))
    rows.sort()
    records = [Record("t", 0, n, int(ts * 1000), u.encode(), orjson.dumps({"user_id": u, "item_id": i, "type": "view", "ts": ts}))
               for n, (ts, u, i) in enumerate(rows[:40000])]
    batches = [records[s:s + 2000] for s in range(0, len(records), 2000)]
    settings = Settings(_env_file=None, similar_k=0)
    times = {True: [], False: []}
    pipes = {}
    for explains in (True, False):
        p = Pipeline(settings, make_model("blend"))
        p.can = dataclasses.replace(p.can, explains=explains)
        pipes[explains] = p
    for batch in batches:  # both pipelines see the same batches, alternating
        for explains, p in pipes.items():
            t = time.perf_counter(); p.process(batch); times[explains].append(time.perf_counter() - t)
    on, off = sum(times[True][5:]), sum(times[False][5:])
    print(f"blend, {len(batches) - 5} batches of 2000 after 5 warm-up: {off:.1f} s without explanations, {on:.1f} s with: {on / off:.2f}x")


if __name__ == "__main__":
    main()
