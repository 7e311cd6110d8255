"""``cooc`` on the pipeline alone (no Kafka, no Redis), per CPU-second, split by phase, and
two checkouts against each other in the same run.

``bench.ingest_cpu``'s events (10k items, 100k users, seed 7) go through ``Pipeline.process``
with ``cooc`` in batches of ``max_poll_records`` (the first batch untimed), with a checkpoint's
model work every ``checkpoint_every_events // 2`` events, and the worker's garbage collector
settings (its young-generation threshold, the heap frozen after each checkpoint). The model's
methods are wrapped to time learning, ranking, explanations, similar lists, the item delta and
the pickle apart.

    python -m bench.cooc_cpu [--events 20000] [--warm 0] [--profile FILE]
    python -m bench.cooc_cpu --trees /work/main $PWD --rounds 3   # a ratio

With ``--trees`` each round runs each checkout once, in a subprocess with that checkout
first on ``sys.path``, one after the other, so that the ratio holds on a shared machine.
``--warm N`` learns and ranks ``N`` events more first, untimed: with 30,000 the timed events
meet the state a long-running worker holds (10k items: sparse neighbour rows, long histories),
where the default measures a fresh worker (its first 17,800 events on the dense matrix).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

PHASES = ("learn_many", "recommend_rows", "explain_rows", "similar_items", "item_delta")


def measure(events: int, model_name: str, learn_only: bool, profile: str | None, warm: int = 0) -> dict:
    """One run in this process: CPU seconds in all and per phase."""
    import gc
    import pickle

    from bench.ingest import no_lists
    from bench.ingest_cpu import batches_of
    from core.settings import Settings
    from online_models import make_model
    from stream.pipeline import Pipeline
    from stream.worker import YOUNG_OBJECTS_PER_COLLECTION

    gc.set_threshold(YOUNG_OBJECTS_PER_COLLECTION, *gc.get_threshold()[1:])  # as the worker does
    settings = Settings(_env_file=None)
    batch = settings.max_poll_records
    untimed = 1 + -(-warm // batch)  # the first batch and the warm-up's
    batches = batches_of(untimed * batch + events, batch)
    model = make_model(model_name)
    # a clock that runs as if the worker took 20,000 events per second: the popular and
    # similar lists refresh as often per event in every run, however loaded the host
    clock = [0.0]
    pipeline = Pipeline(settings, model, clock=lambda: clock[0])
    if learn_only:  # as the ingest bench's learning-only worker: no lists ranked
        pipeline._rank = no_lists
    spent = dict.fromkeys((*PHASES, "pickle"), 0.0)
    timing = [False]

    def timed(name, method):
        def call(*args, **kwargs):
            if not timing[0]:
                return method(*args, **kwargs)
            started = time.process_time()
            try:
                return method(*args, **kwargs)
            finally:
                spent[name] += time.process_time() - started
        return call

    wrappers = {name: timed(name, getattr(model, name)) for name in PHASES}
    model.__dict__.update(wrappers)
    profiler = None
    if profile:
        from pyinstrument import Profiler

        profiler = Profiler(interval=0.0005)
    total, since = 0.0, 0
    for n, records_of_batch in enumerate(batches):
        timed = n >= untimed
        timing[0] = timed
        if timed and profiler:
            profiler.start()
        clock[0] += len(records_of_batch) / 20_000
        started = time.process_time()
        pipeline.process(records_of_batch)
        since += len(records_of_batch)
        if since >= settings.checkpoint_every_events // 2:
            pipeline.expire_idle()
            model.item_delta()
            pipeline.popularity.item_delta()
            for name in PHASES:  # the wrappers do not pickle
                del model.__dict__[name]
            started_pickle = time.process_time()
            pickle.dumps(pipeline.state(), protocol=pickle.HIGHEST_PROTOCOL)
            if timed:
                spent["pickle"] += time.process_time() - started_pickle
            gc.freeze()  # as the worker does after a checkpoint
            model.__dict__.update(wrappers)
            since = 0
        if timed:
            total += time.process_time() - started
        if timed and profiler:
            profiler.stop()
    if profiler:
        with open(profile, "w") as f:
            f.write(profiler.output_text(unicode=False, color=False, show_all=False))
    timed_events = sum(len(b) for b in batches[untimed:])
    return {"events": timed_events, "cpu_s": total, "phases": spent}


def report(label: str, result: dict) -> str:
    us = 1e6 / result["events"]
    phases = ", ".join(f"{name} {seconds * us:.1f}" for name, seconds in result["phases"].items())
    return (f"{label}: {result['events'] / result['cpu_s']:,.0f} events per CPU-second "
            f"({result['cpu_s'] * us:.1f} us per event; {phases} us)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--warm", type=int, default=0, help="events learned and ranked first, untimed")
    parser.add_argument("--model", default="cooc")
    parser.add_argument("--learn-only", action="store_true", help="no lists ranked (similar lists stay)")
    parser.add_argument("--profile", default=None, help="a file for a pyinstrument profile")
    parser.add_argument("--trees", nargs="*", default=None, help="checkouts to compare, the first the baseline")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if not args.trees:
        result = measure(args.events, args.model, args.learn_only, args.profile, args.warm)
        print(json.dumps(result) if args.json else report(args.model, result))
        return
    from bench.common import in_turns, json_from_tree

    rates: dict[str, list[float]] = {tree: [] for tree in args.trees}
    for r in range(args.rounds):
        for tree in in_turns(args.trees, r):
            # this file runs from its checkout; its imports of the project come from ``tree``
            result = json_from_tree(tree, [os.path.abspath(__file__), "--events", str(args.events), "--warm",
                                           str(args.warm), "--model", args.model, "--json",
                                           *(["--learn-only"] if args.learn_only else [])])
            rates[tree].append(result["events"] / result["cpu_s"])
            print(f"round {r + 1} " + report(tree, result), flush=True)
    base = args.trees[0]
    for tree in args.trees[1:]:
        ratios = [b / a for a, b in zip(rates[base], rates[tree])]
        print(f"{tree} vs {base}: median {statistics.median(rates[tree]):,.0f} vs "
              f"{statistics.median(rates[base]):,.0f} events per CPU-second, ratio per round "
              f"{', '.join(f'{x:.2f}' for x in ratios)} (median {statistics.median(ratios):.2f})")


if __name__ == "__main__":
    main()
