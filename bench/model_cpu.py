"""A model on the pipeline alone (no Kafka, no Redis), per CPU-second, its own work split by
phase: the model itself, or one part of a composite (``--part embeddings`` of the default
blend); and two checkouts against each other in the same run.

``bench.ingest_cpu``'s events (10k items, 100k users, seed 7) go through ``Pipeline.process``
in batches of ``max_poll_records`` (the first batch untimed), with a checkpoint's model work
every ``checkpoint_every_events // 2`` events, torch on the worker's threads and the worker's
garbage collector settings (its young-generation threshold, the heap frozen after each
checkpoint). The timed object's ``learn_many``, ``recommend_rows``, ``explain_rows``,
``similar_items`` and ``item_delta`` (those it has) are wrapped to time them apart: their sum is
its own cost per event; the checkpoint's pickle is timed too.

    python -m bench.model_cpu [--model cooc] [--part NAME] [--events 20000] [--warm 0] [--profile FILE]
    python -m bench.model_cpu --model default --part embeddings --digest
    python -m bench.model_cpu --trees /work/base $PWD --rounds 3   # ratios

With ``--trees`` each round runs each checkout once, in a subprocess with that checkout
first on ``sys.path``, alternating which goes first, so that the ratios hold on a shared
machine. ``--warm N`` learns and ranks ``N`` events more first, untimed: with 30,000 the timed
events meet the state a long-running worker holds (10k items: sparse neighbour rows, long
histories), where the default measures a fresh worker. ``--digest`` prints a hash of the
embeddings' learned tables at the end (bitwise checks; the timed object must be
``TorchEmbeddings``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

PHASES = ("learn_many", "recommend_rows", "explain_rows", "similar_items", "item_delta")


class MethodTimer:
    """CPU seconds spent in some methods of one object, counted while ``on``: the timed
    wrappers sit on the instance (``attach``), and come off for a pickle (``detach``).

    It lives in this file, not in ``bench.common``: under ``--trees`` this file runs in the
    other checkout, whose ``bench`` package may not have it.

    >>> class Model:
    ...     def learn(self):
    ...         return 1
    >>> model = Model()
    >>> timer = MethodTimer(model, ["learn"])
    >>> timer.attach()
    >>> timer.on = True
    >>> model.learn(), timer.spent["learn"] >= 0.0
    (1, True)
    >>> timer.detach()
    >>> "learn" in vars(model)
    False
    """

    def __init__(self, target, names) -> None:
        self.target = target
        self.spent = dict.fromkeys(names, 0.0)
        self.on = False
        self._wrappers = {name: self._timed(name, getattr(target, name)) for name in names}

    def _timed(self, name: str, method):
        def call(*args, **kwargs):
            if not self.on:
                return method(*args, **kwargs)
            started = time.process_time()
            try:
                return method(*args, **kwargs)
            finally:
                self.spent[name] += time.process_time() - started
        return call

    def attach(self) -> None:
        vars(self.target).update(self._wrappers)

    def detach(self) -> None:
        for name in self._wrappers:
            del vars(self.target)[name]


def part_of(model, name: str | None):
    """The model itself (no name), or its part of that name (``Blend``'s parts)."""
    if name is None:
        return model
    parts = getattr(model, "_models", {})
    if name not in parts:
        raise SystemExit(f"--part {name}: the model has no such part (its parts: {', '.join(parts) or 'none'})")
    return parts[name]


def table_digest(emb) -> str:
    """A hash of the learned tables (vectors, biases, Adagrad sums, counts) of a ``TorchEmbeddings``."""
    import hashlib

    h = hashlib.blake2b(digest_size=8)
    for table in (emb._user_vecs, emb._item_in, emb._item_out, emb._item_bias, *emb._acc.values()):
        h.update(table.numpy().tobytes())
    h.update(emb._counts.tobytes())
    return h.hexdigest()


def measure(events: int, model_name: str, part: str | None = None, learn_only: bool = False,
            profile: str | None = None, warm: int = 0, digest: bool = False) -> dict:
    """One run in this process: CPU seconds in all, per phase of the timed object, and in the pickle."""
    import gc
    import pickle

    from bench.ingest import no_lists
    from bench.ingest_cpu import batches_of
    from core.settings import Settings
    from online_models import make_model, set_torch_threads
    from online_models.embeddings import TorchEmbeddings
    from stream.pipeline import Pipeline
    from stream.worker import YOUNG_OBJECTS_PER_COLLECTION

    settings = Settings(_env_file=None)
    set_torch_threads(settings.torch_threads)  # as the worker does
    gc.set_threshold(YOUNG_OBJECTS_PER_COLLECTION, *gc.get_threshold()[1:])  # as the worker does
    batch = settings.max_poll_records
    untimed = 1 + -(-warm // batch)  # the first batch and the warm-up's
    batches = batches_of(untimed * batch + events, batch)
    served = model_name == "default"
    model = make_model(settings.model if served else model_name, **(settings.model_params if served else {}))
    target = part_of(model, part)
    if digest and not isinstance(target, TorchEmbeddings):
        raise SystemExit("--digest hashes the embeddings' tables: time them (--model embeddings, or --part embeddings)")
    # a clock that runs as if the worker took 20,000 events per second: the popular and
    # similar lists refresh as often per event in every run, however loaded the host
    clock = [0.0]
    pipeline = Pipeline(settings, model, clock=lambda: clock[0])
    if learn_only:  # as the ingest bench's learning-only worker: no lists ranked
        pipeline._rank = no_lists
    timer = MethodTimer(target, [name for name in PHASES if hasattr(target, name)])
    timer.attach()
    pickling = 0.0
    profiler = None
    if profile:
        from pyinstrument import Profiler

        profiler = Profiler(interval=0.0005)
    total, since = 0.0, 0
    for n, records_of_batch in enumerate(batches):
        timed = timer.on = n >= untimed
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
            timer.detach()  # the wrappers do not pickle
            started_pickle = time.process_time()
            pickle.dumps(pipeline.state(), protocol=pickle.HIGHEST_PROTOCOL)
            if timed:
                pickling += time.process_time() - started_pickle
            gc.freeze()  # as the worker does after a checkpoint
            timer.attach()
            since = 0
        if timed:
            total += time.process_time() - started
        if timed and profiler:
            profiler.stop()
    if profiler:
        with open(profile, "w") as f:
            f.write(profiler.output_text(unicode=False, color=False, show_all=False))
    timed_events = sum(len(b) for b in batches[untimed:])
    result = {"events": timed_events, "cpu_s": total, "phases": timer.spent, "pickle_s": pickling}
    if digest:
        result["digest"] = table_digest(target)
    return result


def report(label: str, result: dict) -> str:
    us = 1e6 / result["events"]
    own = sum(result["phases"].values())
    phases = ", ".join(f"{name} {seconds * us:.1f}" for name, seconds in result["phases"].items())
    tail = f"; tables {result['digest']}" if "digest" in result else ""
    return (f"{label}: {result['events'] / result['cpu_s']:,.0f} events per CPU-second "
            f"({result['cpu_s'] * us:.1f} us per event; its own {own * us:.1f} us = {phases}; "
            f"pickle {result['pickle_s'] * us:.1f} us{tail})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--warm", type=int, default=0, help="events learned and ranked first, untimed")
    parser.add_argument("--model", default="cooc", help="a model's name, or default (the served model)")
    parser.add_argument("--part", default=None, help="time this part of the model (e.g. embeddings of default)")
    parser.add_argument("--learn-only", action="store_true", help="no lists ranked (similar lists stay)")
    parser.add_argument("--profile", default=None, help="a file for a pyinstrument profile")
    parser.add_argument("--digest", action="store_true", help="a hash of the embeddings' learned tables at the end")
    parser.add_argument("--trees", nargs="*", default=None, help="checkouts to compare, the first the baseline")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    label = args.model + (f"/{args.part}" if args.part else "")
    if not args.trees:
        result = measure(args.events, args.model, args.part, args.learn_only, args.profile, args.warm, args.digest)
        print(json.dumps(result) if args.json else report(label, result))
        return
    from bench.common import in_turns, json_from_tree

    runs: dict[str, list[dict]] = {tree: [] for tree in args.trees}
    for r in range(args.rounds):
        for tree in in_turns(args.trees, r):
            # this file runs from its checkout; its imports of the project come from ``tree``
            result = json_from_tree(tree, [os.path.abspath(__file__), "--events", str(args.events), "--warm",
                                           str(args.warm), "--model", args.model, "--json",
                                           *(["--part", args.part] if args.part else []),
                                           *(["--learn-only"] if args.learn_only else []),
                                           *(["--digest"] if args.digest else [])])
            runs[tree].append(result)
            print(f"round {r + 1} " + report(tree, result), flush=True)
    base = args.trees[0]
    for tree in args.trees[1:]:
        whole = [a["cpu_s"] / b["cpu_s"] for a, b in zip(runs[base], runs[tree])]
        own = [sum(a["phases"].values()) / sum(b["phases"].values()) for a, b in zip(runs[base], runs[tree])]
        print(f"{tree} vs {base} ({label}): events per CPU-second, this / base, per round "
              f"{', '.join(f'{x:.2f}' for x in whole)} (median {statistics.median(whole):.2f}); "
              f"its own CPU time, base / this, per round {', '.join(f'{x:.2f}' for x in own)} "
              f"(median {statistics.median(own):.2f})")


if __name__ == "__main__":
    main()
