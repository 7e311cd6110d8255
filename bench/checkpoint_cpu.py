"""A file checkpoint's cost: ``CheckpointFolder.save`` of the default pipeline's state after
the ingest bench's events (``bench.ingest_cpu``'s stream), timed in process CPU time, with
the peak of memory allocated while saving.

``--against DIR`` saves with that checkout's ``stream/checkpoint.py`` too (e.g. ``/work/main``),
in turn with this tree's, so that the ratio holds on a shared machine.

    python -m bench.checkpoint_cpu [--events 20000] [--repeats 8] [--against DIR]
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import tempfile
import time
import tracemalloc
from pathlib import Path

from bench.ingest_cpu import batches_of
from core.settings import Settings
from online_models import make_model
from stream import checkpoint
from stream.pipeline import Pipeline


def _module_at(checkout: str):
    path = Path(checkout) / "stream" / "checkpoint.py"
    spec = importlib.util.spec_from_file_location("checkpoint_against", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--repeats", type=int, default=8)
    parser.add_argument("--against", default=None, help="another checkout to compare with")
    args = parser.parse_args()
    settings = Settings(_env_file=None)
    pipeline = Pipeline(settings, make_model(settings.model, **settings.model_params))
    for records_of_batch in batches_of(args.events, settings.max_poll_records):
        pipeline.process(records_of_batch)
    state = pipeline.state()
    modules = {"this": checkpoint, **({"against": _module_at(args.against)} if args.against else {})}
    cpu = {name: [] for name in modules}
    with tempfile.TemporaryDirectory() as root:
        for _ in range(args.repeats):
            for name, module in modules.items():
                folder = module.CheckpointFolder(Path(root) / name, keep=1)
                started = time.process_time()
                folder.save(state, summary={"partitions": {0: args.events}})
                cpu[name].append(time.process_time() - started)
        size = max(Path(root, "this").glob("checkpoint-*.bin")).stat().st_size
        for name, module in modules.items():
            tracemalloc.start()
            module.CheckpointFolder(Path(root) / name, keep=1).save(state, summary={})
            peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
            print(f"{name:8s} save: median {statistics.median(cpu[name]) * 1000:.1f} ms CPU "
                  f"(min {min(cpu[name]) * 1000:.1f}), peak allocated {peak / 1e6:.1f} MB; file {size / 1e6:.1f} MB")
    if args.against:
        print(f"ratio against/this (median CPU): {statistics.median(cpu['against']) / statistics.median(cpu['this']):.2f}")


if __name__ == "__main__":
    main()
