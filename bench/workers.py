"""Scale-out: throughput with 1, 2 and 3 worker processes in one consumer group, how well
they recommend (online HR@10: each event judged against the list its worker last wrote for
the user, before learning it), and how stale the item state shared between them is.

``python -m bench.workers [--log PATH --format movielens] [--workers 1,2,3] [--model cooc] [--json FILE]``

A log (MovieLens 100K by default, fetched with ``streamrec datasets fetch``) is published
once per run to a fresh 6-partition topic; then the workers start and the clock runs until
the Redis counters say every event was served. Quality: online HR@10 (from the workers'
metrics), and for every user the overlap of the final top-10 lists in Redis with the
single-worker run's.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import redis

from bench.common import services
from serving.store import RecommendationStore
from stream.logs import read_log
from stream.producer import EventProducer
from stream.topics import ensure_topics

PARTITIONS = 6


def staleness(histograms: list[dict]) -> dict:
    """Mean, and the bucket bound under which half and 99% of the merges fell."""
    count = sum(h["count"] for h in histograms)
    if not count:
        return {"merges": 0}
    buckets = histograms[0]["buckets"]
    cumulative = [sum(h["counts"][i] for h in histograms) for i in range(len(buckets))]

    def bound(q: float) -> float | None:
        return next((b for b, c in zip(buckets, cumulative) if c >= q * count), None)  # None: above the last

    return {"merges": count, "mean_s": sum(h["sum"] for h in histograms) / count, "p50_at_most_s": bound(0.5),
            "p99_at_most_s": bound(0.99)}


def run(bootstrap: str, redis_url: str, events: list, n_workers: int, model: str, state_dir: Path,
        checkpoint_interval_s: float) -> dict:
    run_id = uuid.uuid4().hex[:8]
    topic, prefix = f"bench-workers-{run_id}", f"bench-workers:{run_id}"
    ensure_topics(bootstrap, {f"{topic}{suffix}": PARTITIONS for suffix in ("", ".dlq", ".control", ".impressions")})
    with EventProducer(bootstrap, topic) as producer:
        producer.send_many(events)
    env = {**os.environ, "STREAMREC_KAFKA_BOOTSTRAP": bootstrap, "STREAMREC_REDIS_URL": redis_url,
           "STREAMREC_TOPIC": topic, "STREAMREC_GROUP_ID": f"g-{run_id}", "STREAMREC_REDIS_PREFIX": prefix,
           "STREAMREC_MODEL": model, "STREAMREC_TOPIC_PARTITIONS": str(PARTITIONS),
           "STREAMREC_STATE_DIR": str(state_dir / run_id), "STREAMREC_SIMILAR_K": "0",
           "STREAMREC_CHECKPOINT_INTERVAL_S": str(checkpoint_interval_s)}
    store = RecommendationStore(redis.Redis.from_url(redis_url), prefix)
    logs = [state_dir / f"{run_id}-w{n}.log" for n in range(n_workers)]
    state_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    workers = [subprocess.Popen([sys.executable, "-m", "streamrec", "worker"], stdout=open(log, "wb"),
                                stderr=subprocess.STDOUT, env={**env, "STREAMREC_WORKER_INSTANCE_ID": f"w{n}"})
               for n, log in enumerate(logs)]
    try:
        while store.counters().get("consumed", 0) < len(events):
            if any(w.poll() is not None for w in workers):
                raise RuntimeError(f"a worker died: see {logs}")
            time.sleep(0.1)
        seconds = time.perf_counter() - started
        time.sleep(1.5)  # one more metrics snapshot per worker
        reports = store.workers_metrics()
    finally:
        for w in workers:
            w.terminate()
        for w in workers:
            w.wait(timeout=60)
    users = sorted({e.user_id for e in events})
    lists = {u: [i for i, _ in (store.user_list(u).items[:10] if store.user_list(u) else [])] for u in users}
    evaluated = sum(r["online_evaluated"] for r in reports)
    hits = sum(r["online_hits"] for r in reports)
    return {"workers": n_workers, "seconds": seconds, "events_per_s": len(events) / seconds,
            "online_hr_at_10": hits / evaluated if evaluated else 0.0, "online_evaluated": evaluated,
            "item_staleness": staleness([r["item_staleness_seconds"] for r in reports]), "lists": lists}


def overlap(a: dict[str, list[str]], b: dict[str, list[str]]) -> float:
    shared = [len(set(a[u]) & set(b[u])) / max(len(a[u]), 1) for u in a if a[u]]
    return sum(shared) / len(shared) if shared else 0.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--log", default="data/movielens-100k/ml-100k.inter")
    parser.add_argument("--format", default="movielens")
    parser.add_argument("--workers", default="1,2,3")
    parser.add_argument("--model", default="cooc")
    parser.add_argument("--limit", type=int)
    parser.add_argument("--checkpoint-interval-s", type=float, default=2.0,
                        help="also how often the workers exchange item deltas")
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    if not Path(args.log).exists():
        subprocess.run([sys.executable, "-m", "streamrec", "datasets", "fetch", "movielens-100k"], check=True)
    events = read_log(args.log, args.format, limit=args.limit).events
    results = []
    with services() as svc:
        for n in map(int, args.workers.split(",")):
            result = run(svc.kafka_bootstrap, svc.redis_url, events, n, args.model, Path(".streamrec/bench-workers"),
                         args.checkpoint_interval_s)
            results.append(result)
            print(f"{n} worker(s): {result['events_per_s']:,.0f} events/s ({result['seconds']:.1f} s "
                  f"for {len(events):,} events, model {args.model}, {os.cpu_count()} cores); online HR@10 "
                  f"{result['online_hr_at_10']:.4f} over {result['online_evaluated']:,} events; item deltas "
                  f"merged: {result['item_staleness']}", flush=True)
    single = results[0]["lists"]
    for result in results[1:]:
        result["overlap_at_10_vs_single"] = overlap(single, result["lists"])
        print(f"{result['workers']} workers: top-10 overlap with the single worker's lists "
              f"{result['overlap_at_10_vs_single']:.3f}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps([{k: v for k, v in r.items() if k != "lists"} for r in results], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
