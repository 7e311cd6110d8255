"""What one gradient step per micro-batch would cost the embeddings in accuracy, and give in
speed: prequential HR@10 / NDCG@10 (``online_models.evaluation.prequential``, k=10, seen
items excluded, as ``streamrec backtest``) of ``embeddings`` and the default ``blend`` with
the embeddings' ``batch_size`` at its default (32) and at micro-batch sizes, and the
embeddings' ``learn_many`` per CPU-second at each (models_speed's stream, after warm-up).

An experiment for the lead (issue 15): the default stays 32 steps' worth of events.

    python -m bench.batched_step --logs ml100k,yoochoose --batch-sizes 32,256,1000 [--no-speed]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")  # before numpy loads: a step of 500+ events with 2 BLAS threads is 5x slower

from bench.backtest import ML100K
from bench.models_speed import synthetic_stream
from core.schema import Event
from online_models import make_model
from online_models.embeddings import set_torch_threads
from online_models.evaluation import prequential
from stream.logs import read_log

LOGS = {"ml100k": (ML100K, "movielens"),
        "yoochoose": (Path(__file__).resolve().parents[1] / "../shared/datasets/yoochoose-clicks-sample", "yoochoose")}


def model_with(name: str, batch_size: int):
    embeddings = {"batch_size": batch_size}
    if name == "embeddings":
        return make_model("embeddings", **embeddings)
    return make_model("blend", models={"cooc": {}, "embeddings": embeddings, "sequence": {}})


def learn_rate(batch_size: int, items: int = 10_000, users: int = 20_000) -> float:
    """Steady-state ``learn_many`` events per CPU-second (1,000-event batches)."""
    model = make_model("embeddings", batch_size=batch_size)
    sweep = [Event(user_id=f"u{i % users}", item_id=f"i{i}", type="view", ts=i * 1e-3) for i in range(items)]
    warm = synthetic_stream(50_000, items, users, seed=1, t0=items * 1e-3)
    timed = synthetic_stream(10_000, items, users, seed=2, t0=warm[-1].ts + 1)
    for events in (sweep, warm):
        for j in range(0, len(events), 1000):
            model.learn_many(events[j : j + 1000])
    started = time.process_time()
    for j in range(0, len(timed), 1000):
        model.learn_many(timed[j : j + 1000])
    return len(timed) / (time.process_time() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--logs", default="ml100k,yoochoose")
    parser.add_argument("--models", default="embeddings,blend")
    parser.add_argument("--batch-sizes", default="32,256,1000")
    parser.add_argument("--no-speed", action="store_true", help="backtests only")
    args = parser.parse_args()
    set_torch_threads(1)
    sizes = [int(s) for s in args.batch_sizes.split(",")]
    for size in [] if args.no_speed else sizes:
        print(json.dumps({"batch_size": size, "learn_events_per_cpu_s": round(learn_rate(size))}), flush=True)
    for log in args.logs.split(","):
        path, fmt = LOGS[log]
        events = read_log(path, fmt).events
        for name in args.models.split(","):
            for size in sizes:
                started = time.process_time()
                result = prequential(model_with(name, size), events, k=10)
                print(json.dumps({"log": log, "model": name, "batch_size": size, "hr@10": round(result.hr, 4),
                                  "ndcg@10": round(result.ndcg, 4), "cpu_s": round(time.process_time() - started, 1)}),
                      flush=True)


if __name__ == "__main__":
    main()
