"""``embeddings`` on the pipeline alone (no Kafka, no Redis), per CPU-second, its own work
split by phase, alone or inside the default blend, and two checkouts against each other in
the same run.

``bench.ingest_cpu``'s events (10k items, 100k users, seed 7) go through ``Pipeline.process``
in batches of ``max_poll_records`` (the first batch untimed), with a checkpoint's model work
every ``checkpoint_every_events // 2`` events. The ``TorchEmbeddings`` in the model (the
model itself, or the blend's part) has its ``learn_many``, ``recommend_rows`` and
``explain_rows`` wrapped to time them apart: ``embeddings`` is their sum, the model's own
cost per event.

    python -m bench.embeddings_cpu [--model embeddings|default] [--events 20000] [--profile FILE]
    python -m bench.embeddings_cpu --trees /work/base $PWD --rounds 3   # ratios

With ``--trees`` each round runs each checkout once, in a subprocess with that checkout
first on ``sys.path``, alternating which goes first, so that the ratios hold on a shared
machine. ``--digest`` prints a hash of the learned tables at the end (bitwise checks).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

PHASES = ("learn_many", "recommend_rows", "explain_rows")


def _embeddings_of(model):
    """The ``TorchEmbeddings`` the model is or holds."""
    from online_models.embeddings import TorchEmbeddings

    if isinstance(model, TorchEmbeddings):
        return model
    return next(part for part in model._models.values() if isinstance(part, TorchEmbeddings))


def table_digest(model) -> str:
    """A hash of the learned tables (vectors, biases, Adagrad sums, counts) of the model's embeddings."""
    import hashlib

    emb = _embeddings_of(model)
    h = hashlib.blake2b(digest_size=8)
    for table in (emb._user_vecs, emb._item_in, emb._item_out, emb._item_bias, *emb._acc.values()):
        h.update(table.numpy().tobytes())
    h.update(emb._counts.tobytes())
    return h.hexdigest()


def measure(events: int, model_name: str, profile: str | None, digest: bool) -> dict:
    """One run in this process: CPU seconds in all and per phase of the embeddings."""
    import gc
    import pickle

    from bench.ingest_cpu import batches_of
    from core.settings import Settings
    from online_models import make_model, set_torch_threads
    from stream.pipeline import Pipeline
    from stream.worker import YOUNG_OBJECTS_PER_COLLECTION

    settings = Settings(_env_file=None)
    set_torch_threads(settings.torch_threads)  # as the worker does
    gc.set_threshold(YOUNG_OBJECTS_PER_COLLECTION, *gc.get_threshold()[1:])  # as the worker does
    batch = settings.max_poll_records
    batches = batches_of(events + batch, batch)
    model = make_model(settings.model if model_name == "default" else model_name,
                       **(settings.model_params if model_name == "default" else {}))
    emb = _embeddings_of(model)
    clock = [0.0]  # as if the worker took 20,000 events per second: lists refresh as often in every run
    pipeline = Pipeline(settings, model, clock=lambda: clock[0])
    spent = dict.fromkeys(PHASES, 0.0)
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

    wrappers = {name: timed(name, getattr(emb, name)) for name in PHASES}
    emb.__dict__.update(wrappers)
    profiler = None
    if profile:
        from pyinstrument import Profiler

        profiler = Profiler(interval=0.0005)
    total, since = 0.0, 0
    for n, records_of_batch in enumerate(batches):
        timing[0] = bool(n)
        if n and profiler:
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
                del emb.__dict__[name]
            pickle.dumps(pipeline.state(), protocol=pickle.HIGHEST_PROTOCOL)
            gc.freeze()  # as the worker does after a checkpoint
            emb.__dict__.update(wrappers)
            since = 0
        if n:
            total += time.process_time() - started
        if n and profiler:
            profiler.stop()
    if profiler:
        with open(profile, "w") as f:
            f.write(profiler.output_text(unicode=False, color=False, show_all=False))
    timed_events = sum(len(b) for b in batches[1:])
    result = {"events": timed_events, "cpu_s": total, "phases": spent}
    if digest:
        result["digest"] = table_digest(model)
    return result


def report(label: str, result: dict) -> str:
    us = 1e6 / result["events"]
    own = sum(result["phases"].values())
    phases = ", ".join(f"{name} {seconds * us:.1f}" for name, seconds in result["phases"].items())
    tail = f"; tables {result['digest']}" if "digest" in result else ""
    return (f"{label}: {result['events'] / result['cpu_s']:,.0f} events per CPU-second "
            f"({result['cpu_s'] * us:.1f} us per event; embeddings {own * us:.1f} us = {phases}{tail})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--model", default="embeddings", help="embeddings, or default (the served blend)")
    parser.add_argument("--profile", default=None, help="a file for a pyinstrument profile")
    parser.add_argument("--digest", action="store_true", help="a hash of the learned tables at the end")
    parser.add_argument("--trees", nargs="*", default=None, help="checkouts to compare, the first the baseline")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if not args.trees:
        result = measure(args.events, args.model, args.profile, args.digest)
        print(json.dumps(result) if args.json else report(args.model, result))
        return
    from bench.common import in_turns, json_from_tree

    runs: dict[str, list[dict]] = {tree: [] for tree in args.trees}
    for r in range(args.rounds):
        for tree in in_turns(args.trees, r):
            # this file runs from its checkout; its imports of the project come from ``tree``
            result = json_from_tree(tree, [os.path.abspath(__file__), "--events", str(args.events), "--model",
                                           args.model, "--json", *(["--digest"] if args.digest else [])])
            runs[tree].append(result)
            print(f"round {r + 1} " + report(tree, result), flush=True)
    base = args.trees[0]
    for tree in args.trees[1:]:
        whole = [a["cpu_s"] / b["cpu_s"] for a, b in zip(runs[base], runs[tree])]
        own = [sum(a["phases"].values()) / sum(b["phases"].values()) for a, b in zip(runs[base], runs[tree])]
        print(f"{tree} vs {base} ({args.model}): events per CPU-second ratio per round "
              f"{', '.join(f'{x:.2f}' for x in whole)} (median {statistics.median(whole):.2f}); "
              f"the embeddings' own CPU time, base / this, per round {', '.join(f'{x:.2f}' for x in own)} "
              f"(median {statistics.median(own):.2f})")


if __name__ == "__main__":
    main()
