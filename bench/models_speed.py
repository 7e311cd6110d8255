"""Throughput of every registered model on micro-batches over a large synthetic catalogue.

For each model: warm up on a synthetic stream that touches every item of the catalogue,
then time ``learn_many`` on 1,000-event micro-batches followed by ``recommend_many`` for
the batch's users (top-10, excluding what each user has seen), as the worker does.
Every item has metadata (a title, a description, two of 20 genres; ``--no-metadata``: none),
which the content model scores. Columns: mean learn, recommend and batch milliseconds, then the fastest, median and
slowest batch, and the mean CPU time of this process per batch (on a shared machine it
moves less than the wall time); the load average is printed first.

    python bench/models_speed.py                      # all models, 100k items
    python bench/models_speed.py cooc embeddings --items 20000 --batches 5
    python bench/models_speed.py blend --k 100 --no-exclude   # the worker's deeper lists

``catalogue`` (``python -m bench catalogue``, part of ``bench all``): the default model on a
1M-item catalogue, one 1,000-event batch's learn + rank as the worker does it (top-100, seen
items ranked too), and the recall@100 of the embeddings' candidate index against exact
scoring on the same users.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

if __package__ in (None, ""):  # run as a script: the repository root holds the packages
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core.schema import Event
from online_models import MODELS, make_model, set_scoring
from online_models.capabilities import LearnsItems
from online_models.embeddings import TorchEmbeddings

TYPES = np.array(["view", "click", "add_to_cart", "purchase"])


def synthetic_stream(n_events: int, n_items: int, n_users: int, seed: int = 0, t0: float = 0.0) -> list[Event]:
    """Zipf-popular items, users returning in sessions, a funnel of event types."""
    rng = np.random.default_rng(seed)
    items = (rng.zipf(1.2, n_events) - 1) % n_items
    users = rng.integers(0, n_users, n_events)
    kinds = TYPES[rng.choice(4, n_events, p=[0.6, 0.3, 0.07, 0.03])]
    return [
        Event(user_id=f"u{u}", item_id=f"i{i}", type=str(k), ts=t0 + j * 0.5)
        for j, (u, i, k) in enumerate(zip(users.tolist(), items.tolist(), kinds.tolist()))
    ]


def item_metadata(n_items: int, seed: int = 0) -> dict[str, dict]:
    """A title of 4 words, a description of 8 (of 3,000 words) and two of 20 genres per item."""
    rng = np.random.default_rng(seed)
    words = rng.integers(0, 3000, (n_items, 12)).tolist()
    genres = rng.integers(0, 20, (n_items, 2)).tolist()
    return {f"i{i}": {"title": " ".join(f"w{w}" for w in ws[:4]), "description": " ".join(f"w{w}" for w in ws[4:]),
                      "genres": [f"g{g}" for g in gs]}
            for i, (ws, gs) in enumerate(zip(words, genres))}


def _embeddings_part(model) -> TorchEmbeddings | None:
    """The model itself or its embeddings part (a blend's)."""
    if isinstance(model, TorchEmbeddings):
        return model
    parts = getattr(model, "_models", {})
    return next((part for part in parts.values() if isinstance(part, TorchEmbeddings)), None)


def recall_at(k: int, found: np.ndarray, exact: np.ndarray) -> float:
    """Mean share of each row's exact top ``k`` (``-1``: none) that ``found`` holds."""
    shares = []
    for got, want in zip(found[:, :k].tolist(), exact[:, :k].tolist()):
        want = {r for r in want if r >= 0}
        if want:
            shares.append(len(want.intersection(got)) / len(want))
    return float(np.mean(shares)) if shares else float("nan")


def catalogue(n_items: int = 1_000_000, n_users: int = 20_000, warmup: int = 20_000, batches: int = 3,
              batch_size: int = 1000, k: int = 100, log=print) -> dict:
    """The default model on a catalogue of ``n_items``: learn + rank per batch, and the
    candidate index's recall@``k`` against exact scoring (see the module's docstring).

    Every item is seen once (a sweep), then ``warmup`` Zipf-popular events; one batch is
    ranked untimed (it builds the index where the setting turns it on), then ``batches``
    are timed. The index's recall is measured on the last batch's users whether the
    default turns it on or not, against exact scoring of every item, which is timed too
    (the baseline of the same run).
    """
    import resource

    from core.settings import Settings

    fields = Settings.model_fields
    name, min_items = fields["model"].default, fields["candidate_index_min_items"].default
    model = make_model(name)
    part = _embeddings_part(model)
    torch.set_num_threads(fields["torch_threads"].default)  # as the worker
    log(f"catalogue: {name} on {n_items:,} items, {n_users:,} users; candidate index from "
        f"{'(off)' if min_items is None else f'{min_items:,}'} items")
    start, start_cpu = time.perf_counter(), time.process_time()
    sweep = (Event(user_id=f"u{i % n_users}", item_id=f"i{i}", type="view", ts=i * 1e-3) for i in range(n_items))
    while chunk := [e for _, e in zip(range(batch_size * 10), sweep)]:
        model.learn_many(chunk)
    warm = synthetic_stream(warmup + batch_size, n_items, n_users, seed=1, t0=n_items * 1e-3)
    timed = synthetic_stream(batches * batch_size, n_items, n_users, seed=2, t0=warm[-1].ts + 1)
    for j in range(0, warmup, batch_size):
        model.learn_many(warm[j : j + batch_size])
    warm_s, warm_cpu_s = time.perf_counter() - start, time.process_time() - start_cpu
    set_scoring("cpu", min_items)
    try:
        first = warm[warmup:]  # untimed: builds the index when it is on
        t = time.perf_counter()
        model.learn_many(first)
        model.recommend_many(list(dict.fromkeys(e.user_id for e in first)), k)
        first_ms = 1e3 * (time.perf_counter() - t)
        per_batch, cpu_ms, learn_ms = [], [], []
        for j in range(0, len(timed), batch_size):
            batch = timed[j : j + batch_size]
            users = list(dict.fromkeys(e.user_id for e in batch))
            t, c = time.perf_counter(), time.process_time()
            model.learn_many(batch)
            learn_ms.append(1e3 * (time.perf_counter() - t))
            model.recommend_many(users, k)
            per_batch.append(1e3 * (time.perf_counter() - t))
            cpu_ms.append(1e3 * (time.process_time() - c))
        log(f"catalogue: warm-up {warm_s:.0f} s ({warm_cpu_s:.0f} s of CPU), first batch {first_ms:.0f} ms, batches "
            + ", ".join(f"{b:.0f}" for b in per_batch) + " ms (learning " + ", ".join(f"{b:.0f}" for b in learn_ms)
            + " ms), CPU " + ", ".join(f"{b:.0f}" for b in cpu_ms) + " ms")
        out = {"model": name, "items": n_items, "users": n_users, "k": k, "index_min_items": min_items,
               "warmup_s": warm_s, "warmup_cpu_s": warm_cpu_s, "first_batch_ms": first_ms,
               "batch_ms": {"min": min(per_batch), "median": statistics.median(per_batch), "max": max(per_batch),
                            "runs": len(per_batch)},
               "batch_cpu_ms": statistics.median(cpu_ms), "learn_ms": statistics.median(learn_ms)}
        if part is not None:  # the index against exact scoring, on the last batch's users
            set_scoring("cpu", None)
            t = time.perf_counter()
            exact = part.recommend_rows(users, k).rows
            exact_ms = 1e3 * (time.perf_counter() - t)
            set_scoring("cpu", 1)
            part.recommend_rows(users, k)  # builds the index if the default left it off
            t = time.perf_counter()
            found = part.recommend_rows(users, k).rows
            index_ms = 1e3 * (time.perf_counter() - t)
            out.update(recall_at_k=recall_at(k, found, exact), exact_rank_ms=exact_ms, index_rank_ms=index_ms,
                       rank_users=len(users), dims=part.n_factors)
            log(f"catalogue: embeddings' top-{k} of {len(users):,} users: exact {exact_ms:.0f} ms, candidate index "
                f"{index_ms:.0f} ms, recall@{k} {out['recall_at_k']:.4f}")
    finally:
        set_scoring("cpu", None)
    out["max_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return out


def run(svc=None, *, quick: bool, log=print, **_) -> dict:
    """``python -m bench catalogue``: ``catalogue`` on 1M items (quick: 3 timed batches, else 10)."""
    return catalogue(batches=3 if quick else 10, log=log)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="*", default=sorted(MODELS))
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--users", type=int, default=20_000)
    parser.add_argument("--warmup", type=int, default=50_000, help="events after the catalogue sweep")
    parser.add_argument("--batches", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--k", type=int, default=10, help="length of each list")
    parser.add_argument("--no-exclude", action="store_true", help="rank seen items too (the worker flags them)")
    parser.add_argument("--no-metadata", action="store_true", help="items without metadata")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    sweep = [Event(user_id=f"u{i % args.users}", item_id=f"i{i}", type="view", ts=i * 1e-3) for i in range(args.items)]
    warm = synthetic_stream(args.warmup, args.items, args.users, seed=1, t0=args.items * 1e-3)
    timed = synthetic_stream(args.batches * args.batch_size, args.items, args.users, seed=2, t0=warm[-1].ts + 1)
    metadata = {} if args.no_metadata else item_metadata(args.items)
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"{args.items:,} items, {args.users:,} users, {args.batches} batches of {args.batch_size:,} events, "
          f"top-{args.k}{'' if args.no_exclude else ' excluding seen'}, {'no' if args.no_metadata else 'with'} item metadata, "
          f"{args.threads} torch thread(s), load {load}")
    print(f"{'model':18s} {'warm-up s':>10s} {'learn ms':>9s} {'recommend ms':>13s} {'batch ms':>9s} {'events/s':>9s}"
          f" {'min/median/max batch ms':>24s} {'cpu ms':>7s}")
    for name in args.models:
        model = make_model(name)
        seen: dict[str, set[str]] = {}
        start = time.perf_counter()
        if isinstance(model, LearnsItems):  # the models that read metadata (content, the agent...)
            for item_id, meta in metadata.items():
                model.learn_item(item_id, meta)
        for events in (sweep, warm):
            for j in range(0, len(events), args.batch_size):
                model.learn_many(events[j : j + args.batch_size])
            for e in events:
                seen.setdefault(e.user_id, set()).add(e.item_id)
        warm_s = time.perf_counter() - start
        learn_s = rec_s = 0.0
        per_batch = []
        cpu_start = time.process_time()
        for j in range(0, len(timed), args.batch_size):
            batch = timed[j : j + args.batch_size]
            t = time.perf_counter()
            model.learn_many(batch)
            learned = time.perf_counter() - t
            for e in batch:
                seen.setdefault(e.user_id, set()).add(e.item_id)
            users = list(dict.fromkeys(e.user_id for e in batch))
            t = time.perf_counter()
            model.recommend_many(users, args.k, None if args.no_exclude else {u: seen[u] for u in users})
            ranked = time.perf_counter() - t
            learn_s, rec_s = learn_s + learned, rec_s + ranked
            per_batch.append(1e3 * (learned + ranked))
        n = len(per_batch)
        cpu_ms = 1e3 * (time.process_time() - cpu_start) / n
        total = learn_s + rec_s
        spread = f"{min(per_batch):.0f}/{statistics.median(per_batch):.0f}/{max(per_batch):.0f}"
        print(f"{name:18s} {warm_s:10.1f} {1e3 * learn_s / n:9.1f} {1e3 * rec_s / n:13.1f} {1e3 * total / n:9.1f} "
              f"{len(timed) / total:9.0f} {spread:>24s} {cpu_ms:7.0f}", flush=True)


if __name__ == "__main__":
    main()
