"""The ingest bench's model ratio without Kafka or Redis: ``Pipeline.process`` over the
ingest bench's events (``bench.ingest``: 10k items, 100k users, seed 7) in batches of
``max_poll_records``, with a checkpoint's model work (idle expiry, ``item_delta``, the
state pickled, the heap frozen) every ``checkpoint_every_events``, timed in process CPU time.

The default model and the blend without sequence (the default before it) take the same
batches in turn, so that their ratio holds on a shared machine; ``python -m bench ingest
--quick`` measures the same ratio through Kafka and Redis (slower, and its shared costs
dilute the ratio). ``--profile DIR`` writes a pyinstrument profile of each model;
``--learn-only`` switches list refresh off, as the ingest bench's learn-only run does (its
``ingest_learn_only_events_per_s``: the learning ceiling).

    python -m bench.ingest_cpu [--events 20000] [--profile DIR] [--learn-only]
"""

from __future__ import annotations

import argparse
import gc
import os
import pickle
import statistics
import time

from bench.common import Catalogue
from bench.ingest import BLEND_WITHOUT_SEQUENCE, ITEMS, USERS, no_lists
from core.settings import Settings
from online_models import make_model, set_torch_threads
from stream.pipeline import Pipeline, Record
from stream.worker import YOUNG_OBJECTS_PER_COLLECTION


def records(n: int, seed: int = 7) -> list[Record]:
    """The ingest bench's events as plain records, one partition."""
    return [Record("bench", 0, offset, 0, key, value)
            for offset, (key, value) in enumerate(Catalogue(ITEMS, USERS, seed=seed).payloads(n))]


def batches_of(n: int, batch: int) -> list[list[Record]]:
    """``records(n)`` in batches of ``batch`` (the worker's ``max_poll_records``)."""
    stream = records(n)
    return [stream[s : s + batch] for s in range(0, len(stream), batch)]


def checkpoint(pipeline: Pipeline) -> None:
    """A checkpoint's model work, without the file: expiry, the item delta, the pickle."""
    pipeline.expire_idle()
    pipeline.model.item_delta()
    pipeline.popularity.item_delta()
    pickle.dumps(pipeline.state(), protocol=pickle.HIGHEST_PROTOCOL)
    gc.freeze()  # as the worker does after a checkpoint


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--profile", default=None, help="a folder for pyinstrument profiles")
    parser.add_argument("--learn-only", action="store_true", help="list refresh off (bench.ingest's learn-only run)")
    args = parser.parse_args()
    settings = Settings(_env_file=None)
    set_torch_threads(settings.torch_threads)  # as the worker does (torch's default is every core)
    gc.set_threshold(YOUNG_OBJECTS_PER_COLLECTION, *gc.get_threshold()[1:])  # as the worker does
    batch = settings.max_poll_records
    batches = batches_of(args.events + batch, batch)  # the first batch warms up, untimed (as the bench's)
    pipelines = {"default": Pipeline(settings, make_model(settings.model, **settings.model_params)),
                 "blend_without_sequence": Pipeline(settings, make_model("blend", **BLEND_WITHOUT_SEQUENCE))}
    if args.learn_only:
        for pipeline in pipelines.values():
            pipeline._rank = no_lists  # as bench.ingest's learning-only worker
    profilers = {}
    if args.profile:
        from pyinstrument import Profiler

        profilers = {name: Profiler(interval=0.0005) for name in pipelines}
    cpu = dict.fromkeys(pipelines, 0.0)
    per_batch: dict[str, list[float]] = {name: [] for name in pipelines}
    since = dict.fromkeys(pipelines, 0)
    for n, records_of_batch in enumerate(batches):
        for name, pipeline in pipelines.items():
            profiler = profilers.get(name) if n else None
            if profiler:
                profiler.start()
            started = time.process_time()
            pipeline.process(records_of_batch)
            since[name] += len(records_of_batch)
            if since[name] >= settings.checkpoint_every_events // 2:  # the bench's 10 s pass about this often
                checkpoint(pipeline)
                since[name] = 0
            if n:
                spent = time.process_time() - started
                cpu[name] += spent
                per_batch[name].append(spent)
            if profiler:
                profiler.stop()
    timed = sum(len(b) for b in batches[1:])
    rates = {name: timed / seconds for name, seconds in cpu.items()}
    for name, rate in rates.items():
        print(f"{name:24s} {rate:8,.0f} events per CPU-second ({cpu[name]:.1f} s)")
    # each batch's pair, run back to back, shares the host's load of that moment
    paired = statistics.median(b / a for a, b in zip(per_batch["default"], per_batch["blend_without_sequence"]))
    print(f"ingest per CPU-second, default vs blend without sequence: "
          f"{rates['default'] / rates['blend_without_sequence']:.2f} in all, {paired:.2f} the median batch "
          f"(target >= 0.85)")
    if profilers:
        os.makedirs(args.profile, exist_ok=True)
    for name, profiler in profilers.items():
        with open(f"{args.profile}/{name}.txt", "w") as f:
            f.write(profiler.output_text(unicode=False, color=False, show_all=False))


if __name__ == "__main__":
    main()
