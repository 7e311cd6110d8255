"""CPU milliseconds per 1,000-event micro-batch: ``learn_many``, then ``recommend_many`` for
the batch's users (top-10, seen items excluded), on a 100k-item catalogue.

As bench/models_speed.py, but timed in this process's CPU time (steadier than wall time on a
shared machine) and with hyperparameters per model (``name:{json}``); torch on one thread,
as in the worker. Compare models within one run.

    python bench/sequential_speed.py embeddings sasrec 'sasrec:{"n_factors": 32}'
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch

if __package__ in (None, ""):  # run as a script: the repository root holds the packages
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.models_speed import synthetic_stream
from core.schema import Event
from online_models import make_model

N_ITEMS, N_USERS, BATCH = 100_000, 20_000, 1_000


def main(specs: list[str]) -> None:
    torch.set_num_threads(1)
    sweep = [Event(user_id=f"u{i % N_USERS}", item_id=f"i{i}", type="view", ts=i * 1e-3) for i in range(N_ITEMS)]
    warm = synthetic_stream(20_000, N_ITEMS, N_USERS, seed=1, t0=N_ITEMS * 1e-3)
    timed = synthetic_stream(5 * BATCH, N_ITEMS, N_USERS, seed=2, t0=warm[-1].ts + 1)
    for spec in specs:
        name, _, params = spec.partition(":")
        model = make_model(name, **(json.loads(params) if params else {}))
        seen: dict[str, set[str]] = {}
        for events in (sweep, warm):
            for start in range(0, len(events), BATCH):
                model.learn_many(events[start : start + BATCH])
            for e in events:
                seen.setdefault(e.user_id, set()).add(e.item_id)
        learn_s = rank_s = 0.0
        for start in range(0, len(timed), BATCH):
            batch = timed[start : start + BATCH]
            t = time.process_time()
            model.learn_many(batch)
            learn_s += time.process_time() - t
            for e in batch:
                seen.setdefault(e.user_id, set()).add(e.item_id)
            users = list(dict.fromkeys(e.user_id for e in batch))
            t = time.process_time()
            model.recommend_many(users, 10, {u: seen[u] for u in users})
            rank_s += time.process_time() - t
        n = len(timed) // BATCH
        print(f"{spec:40s} CPU ms per {BATCH:,} events: learn {1e3 * learn_s / n:5.0f}  rank {1e3 * rank_s / n:5.0f}"
              f"  total {1e3 * (learn_s + rank_s) / n:5.0f}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:] or ["embeddings", "sasrec"])
