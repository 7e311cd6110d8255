"""The shell's per-event cost before ranking, without Kafka or Redis: ``Pipeline.process``
learning only (no lists, as ``bench.ingest``'s learn-only run) over the ingest bench's
events, in batches of ``max_poll_records``, timed in process CPU time; and ``parse_record``
alone over the same records.

``--against TREE`` runs the same measurement in another checkout (``/work/base``, say) in
turns with this one, each in a fresh process, and prints the ratios (this tree over that
one, per CPU-second; the median of the pairs, so that they hold on a shared machine).

    python -m bench.front_cpu [--events 20000] [--models trending,cooc] [--against TREE] [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path


def measure(events: int, models: list[str]) -> dict[str, float]:
    """Events per CPU-second: ``parse`` alone, and each model's learn-only ``Pipeline.process``."""
    from bench.ingest import no_lists
    from bench.ingest_cpu import batches_of
    from core.errors import InvalidEvent
    from core.settings import Settings
    from online_models import make_model
    from stream.pipeline import Pipeline, parse_record

    settings = Settings(_env_file=None)
    batch = settings.max_poll_records
    batches = batches_of(events + batch, batch)  # the first batch warms up, untimed
    timed = sum(len(b) for b in batches[1:])
    rates = {}
    started = time.process_time()
    for records in batches[1:]:
        for record in records:
            try:
                parse_record(record, settings.max_event_bytes)
            except InvalidEvent:
                pass
    rates["parse"] = timed / (time.process_time() - started)
    for name in models:
        pipeline = Pipeline(settings, make_model(name))
        pipeline._rank = no_lists
        pipeline.process(batches[0])
        started = time.process_time()
        for records in batches[1:]:
            pipeline.process(records)
        rates[name] = timed / (time.process_time() - started)
    return rates


def _in_tree(tree: str, events: int, models: list[str]) -> dict[str, float]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("STREAMREC_")}
    env["PYTHONPATH"] = tree
    code = (f"import json; from bench.front_cpu import measure; "
            f"print(json.dumps(measure({events}, {models!r})))")
    if not (Path(tree) / "bench" / "front_cpu.py").exists():  # a tree from before this file: run ours there
        code = Path(__file__).read_text() + f"\nprint(json.dumps(measure({events}, {models!r})))"
    out = subprocess.run([sys.executable, "-c", code], cwd=tree, env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--models", default="trending,cooc")
    parser.add_argument("--against", metavar="TREE", help="another checkout, measured in turns with this one")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    models = [m for m in args.models.split(",") if m]
    if not args.against:
        for name, rate in measure(args.events, models).items():
            print(f"{name:10s} {rate:10,.0f} events per CPU-second")
        return
    here = str(Path(__file__).resolve().parents[1])
    runs: dict[str, list[dict[str, float]]] = {"here": [], "there": []}
    for rep in range(args.repeats):
        for side in ("here", "there") if rep % 2 == 0 else ("there", "here"):
            runs[side].append(_in_tree(here if side == "here" else args.against, args.events, models))
    print(f"{'':10s} {'this tree':>12s} {'against':>12s} {'ratio':>7s}  (events per CPU-second, medians of "
          f"{args.repeats}; ratio: median of the pairs)")
    for name in runs["here"][0]:
        mine = statistics.median(r[name] for r in runs["here"])
        theirs = statistics.median(r[name] for r in runs["there"])
        paired = statistics.median(a[name] / b[name] for a, b in zip(runs["here"], runs["there"]))
        print(f"{name:10s} {mine:12,.0f} {theirs:12,.0f} {paired:7.3f}")


if __name__ == "__main__":
    main()
