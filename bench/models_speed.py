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
from online_models import MODELS, make_model

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
