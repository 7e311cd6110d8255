"""The ``sequence`` part's own CPU inside the default model, on the ingest bench's stream
without Kafka or Redis (``bench.ingest_cpu``'s events, batches and checkpoint work): the
process CPU time of ``Sequential``'s ``recommend_rows``, ``learn_many``, ``explain_rows``,
``item_delta`` and the pickling of its state, with a digest of what each one returned
(equal digests: the same lists, scores, reasons, deltas and learned state). Compare two
trees by running this file under each in turn (a script path, so that PYTHONPATH's tree is
the one imported); alternate the runs, a few pairs:

    PYTHONPATH=/work/base python bench/sequence_cpu.py; PYTHONPATH=$PWD python bench/sequence_cpu.py

``--model sequence`` runs the pipeline with ``sequence`` alone (its events per CPU-second).
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import pickle
import sys
import time
from pathlib import Path

import numpy as np

if __package__ in (None, ""):  # run as a script: the tree on PYTHONPATH first, else this one
    sys.path.append(str(Path(__file__).resolve().parents[1]))

from bench.ingest_cpu import batches_of, checkpoint
from core.settings import Settings
from online_models import make_model, set_torch_threads
from online_models.sequence import Sequential
from stream.pipeline import Pipeline
from stream.worker import YOUNG_OBJECTS_PER_COLLECTION

TIMED = ("recommend_rows", "learn_many", "explain_rows", "item_delta", "__getstate__")


def _digest_of(value, digest) -> None:
    """What a call returned, in bytes that do not depend on how it is stored."""
    if hasattr(value, "rows") and hasattr(value, "scores") and hasattr(value, "index"):  # RankedRows
        ids = value.index.ids
        digest.update(repr([[ids[r] for r in row if r >= 0] for row in value.rows.tolist()]).encode())
        digest.update(np.where(value.rows >= 0, value.scores, 0.0).tobytes())
    elif isinstance(value, dict):  # item_delta: per item id, so that row numbers may differ
        items = np.asarray(value.get("items", ()), dtype=str)
        for key in sorted(value):
            if key.startswith("pair_") or key == "items":
                continue
            digest.update(key.encode() + np.asarray(value[key]).tobytes())
        if "pair_source" in value:
            pairs = sorted(zip(items[value["pair_source"]].tolist(), items[value["pair_target"]].tolist(),
                               np.asarray(value["pair_w"]).tolist()))
            digest.update(repr(pairs).encode())
        digest.update(repr(items.tolist()).encode())
    elif value is not None:
        digest.update(repr(value).encode())


def learned_state(model: Sequential) -> str:
    """A digest of what the model learned, by item id: transitions, outgoing totals,
    repeat counts and histories."""
    digest = hashlib.sha256()
    ids = model._items.ids
    pairs = []
    for source in range(len(model._items)):
        if ids[source] is None:
            continue
        rows, weights = model._successors[source].strongest(None)
        pairs.extend((ids[source], ids[r], w) for r, w in zip(rows.tolist(), weights.tolist()))
    digest.update(repr(sorted(pairs)).encode())
    digest.update(repr(sorted((ids[r], float(model._out_total[r])) for r in range(len(model._items))
                              if ids[r] is not None)).encode())
    digest.update(repr((model._repeat_hits, model._repeat_trials)).encode())
    return digest.hexdigest()[:16]


def timed(cpu: dict[str, float], digests: dict[str, object]) -> None:
    """Wrap ``Sequential``'s methods named in ``TIMED`` to add their CPU time to ``cpu``
    and their results to ``digests`` (the outermost call only: learn_one calls learn_many)."""
    depth = [0]
    for name in TIMED:
        method = getattr(Sequential, name)

        def wrapper(self, *args, _method=method, _name=name, **kwargs):
            depth[0] += 1
            started = time.process_time()
            try:
                out = _method(self, *args, **kwargs)
            finally:
                depth[0] -= 1
            if depth[0] == 0:
                cpu[_name] += time.process_time() - started
                if _name != "__getstate__":
                    _digest_of(out, digests[_name])
            return out

        setattr(Sequential, name, wrapper)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--model", default=None, help="the served model (default: the settings' default)")
    args = parser.parse_args()
    cpu = dict.fromkeys(TIMED, 0.0)
    digests = {name: hashlib.sha256() for name in TIMED}
    settings = Settings(_env_file=None)
    set_torch_threads(settings.torch_threads)
    gc.set_threshold(YOUNG_OBJECTS_PER_COLLECTION, *gc.get_threshold()[1:])
    batch = settings.max_poll_records
    model = make_model(settings.model, **settings.model_params) if args.model is None else make_model(args.model)
    pipeline = Pipeline(settings, model)
    timed(cpu, digests)
    batches = batches_of(args.events + batch, batch)
    pipeline.process(batches[0])  # warms up, untimed (as bench.ingest_cpu)
    since = len(batches[0])
    cpu.update(dict.fromkeys(TIMED, 0.0))
    started = time.process_time()
    for records_of_batch in batches[1:]:
        pipeline.process(records_of_batch)
        since += len(records_of_batch)
        if since >= settings.checkpoint_every_events // 2:  # as bench.ingest_cpu
            checkpoint(pipeline)
            since = 0
    total = time.process_time() - started
    served = pipeline.model
    sequence = served if isinstance(served, Sequential) else next(
        m for m in served._models.values() if isinstance(m, Sequential))
    restored = pickle.loads(pickle.dumps(sequence))
    own = sum(cpu.values())
    print(f"pipeline {total:.2f} CPU-s ({args.events / total:,.0f} events per CPU-second), sequence {own:.3f}: "
          + ", ".join(f"{name} {seconds:.3f}" for name, seconds in cpu.items()))
    print("digests " + " ".join(f"{name}={digests[name].hexdigest()[:12]}" for name in TIMED[:4])
          + f" state={learned_state(sequence)} restored={learned_state(restored)}")


if __name__ == "__main__":
    main()
