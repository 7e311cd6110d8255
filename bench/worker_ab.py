"""The real worker (Kafka and Redis) of two source trees, run in turns on the same events:
wall events/s and events per CPU-second of each, and their ratios, measured in one run.

``python -m bench.worker_ab BASE_TREE OTHER_TREE [--model NAME] [--events N] [--rounds R]``

One topic of ``N`` events (as ``bench ingest``'s); each round drains it once with a worker
of each tree (a process of its own, ``PYTHONPATH`` set to the tree; its own group and Redis
prefix), alternating which goes first. A run is timed from the second batch to the last
batch's write done, as ``bench ingest`` times it; it also sums the time the loop's thread
spent blocked in Redis writes and offset commits (or waiting for a write in flight), per
1,000 events. On a shared host, the ratio per round is the figure to read; the medians are
over rounds.
"""

from __future__ import annotations

import argparse
import json
import statistics
import uuid

_DRAIN = """
import json, sys, threading, time
from core.settings import Settings
from stream.worker import Worker

args = json.loads(sys.argv[1])
worker = Worker(Settings(_env_file=None, **args["settings"]))
blocked = [0.0]  # seconds the loop's thread spent in Redis writes, commits, or waiting for a write

def timed(owner, name):
    call = getattr(owner, name)
    def timed_call(*a, **k):
        if threading.current_thread() is not threading.main_thread():
            return call(*a, **k)
        started = time.perf_counter()
        try:
            return call(*a, **k)
        finally:
            blocked[0] += time.perf_counter() - started
    setattr(owner, name, timed_call)

for name in ("write_batch", "add_series", "delete_users"):
    timed(worker.sink, name)
for name in ("commit", "commit_async"):
    timed(worker.consumer, name)
if hasattr(worker, "_writes"):
    timed(worker._writes, "wait")
first = None
while first is None:
    first = worker.poll_once()
consumed, started, cpu_started = first.consumed, time.perf_counter(), time.process_time()
blocked[0] = 0.0
while consumed < args["events"]:
    batch = worker.poll_once()
    consumed += batch.consumed if batch is not None else 0
getattr(worker, "settle", lambda: None)()  # a tree that writes in the background: its last write too
elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu_started
worker.close()
print(json.dumps({"events": consumed - first.consumed, "seconds": elapsed, "cpu_seconds": cpu,
                  "blocked_seconds": blocked[0]}))
"""


def _drain(tree: str, settings: dict, events: int) -> dict:
    from bench.common import json_from_tree

    return json_from_tree(tree, ["-c", _DRAIN, json.dumps({"settings": settings, "events": events})], timeout_s=900)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("trees", nargs=2, metavar="TREE")
    parser.add_argument("--model", default=None, help="the served model (default: the settings' default)")
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    from bench.common import bench_settings, drop_prefix, in_process, in_turns, services
    from bench.ingest import _produce_proc

    with services() as svc:
        base = bench_settings(svc, **({"model": args.model} if args.model else {}))
        in_process(_produce_proc, base, args.events)
        rates: dict[str, list[dict]] = {tree: [] for tree in args.trees}
        for round_ in range(args.rounds):
            for tree in in_turns(args.trees, round_):
                run = uuid.uuid4().hex[:8]
                settings = {"kafka_bootstrap": svc.kafka_bootstrap, "redis_url": svc.redis_url,
                            "topic": base.topic, "group_id": f"ab-{run}", "redis_prefix": f"ab:{run}",
                            "state_dir": f"/tmp/streamrec-bench/ab-{run}", "model": base.model}
                r = _drain(tree, settings, args.events)
                drop_prefix(svc.redis_url, f"ab:{run}")
                r = {"wall": r["events"] / r["seconds"], "per_cpu_s": r["events"] / r["cpu_seconds"],
                     "blocked_ms_per_1k": 1e6 * r["blocked_seconds"] / r["events"]}
                rates[tree].append(r)
                print(f"round {round_ + 1} {tree}: {r['wall']:,.0f} events/s, {r['per_cpu_s']:,.0f} per CPU-second, "
                      f"loop blocked on Redis/commits {r['blocked_ms_per_1k']:.1f} ms per 1k events", flush=True)
    first, other = (rates[t] for t in args.trees)
    for key in ("wall", "per_cpu_s", "blocked_ms_per_1k"):
        ratios = [o[key] / f[key] for f, o in zip(first, other)]
        print(f"{key}: {args.trees[0]} median {statistics.median(r[key] for r in first):,.0f}, "
              f"{args.trees[1]} median {statistics.median(r[key] for r in other):,.0f}; "
              f"ratio per round {', '.join(f'{r:.2f}' for r in ratios)} (median {statistics.median(ratios):.2f})")


if __name__ == "__main__":
    main()
