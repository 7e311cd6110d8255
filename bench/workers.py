"""Scale-out: throughput with 1, 2 and 3 worker processes in one consumer group, how well
they recommend (online HR@10: each event judged against the list its worker last wrote for
the user, before learning it), and how stale the item state shared between them is.

``python -m bench.workers [--log PATH --format movielens] [--workers 1,2,3] [--model cooc]
[--rate 2000] [--checkpoint-interval-s 2] [--json FILE]``

Two rounds over the same log (MovieLens 100K by default, fetched with ``streamrec datasets
fetch``), each into a fresh 6-partition topic per run:

In both, the workers join the group first, then the log is sent:

- throughput: as fast as the producer sends it; the clock runs from the first send until
  the Redis counters say every event was served;
- quality: at ``--rate`` events/s, so each
  user's list moves between their events as it would live (replayed at full speed, most
  events land in the same batch as the user's previous one and have no list to be judged
  against). Online HR@10 from the workers' metrics, its ratio to the single worker's, and
  for every user the overlap of the final top-10 lists in Redis with the single worker's.

Item deltas travel at each checkpoint (``--checkpoint-interval-s``): their staleness is
from a worker's first learning in a delta to its merge by another worker.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import redis

from bench.common import drop_prefix, services
from core.kafka import EventProducer, ensure_topics
from serving.store import RecommendationStore
from stream.logs import read_log

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


def produce_at(bootstrap: str, topic: str, events: list, rate: float | None) -> None:
    """Send ``events`` at ``rate`` per second, in 50 ms slices (``None``: at once)."""
    per_slice = max(int(rate / 20), 1) if rate else len(events)
    with EventProducer(bootstrap, topic) as producer:
        started = time.perf_counter()
        for n, start in enumerate(range(0, len(events), per_slice)):
            producer.send_many(events[start : start + per_slice])
            producer.flush()
            time.sleep(max(started + (n + 1) / 20 - time.perf_counter(), 0))


def run(bootstrap: str, redis_url: str, events: list, n_workers: int, model: str, state_dir: Path,
        checkpoint_interval_s: float, rate: float | None = None) -> dict:
    """The workers join the group first; then the log arrives, at ``rate`` events/s or (None)
    as fast as the producer sends it. The clock runs from the first send to the last event
    served."""
    run_id = uuid.uuid4().hex[:8]
    topic, prefix = f"bench-workers-{run_id}", f"bench-workers:{run_id}"
    ensure_topics(bootstrap, {f"{topic}{suffix}": PARTITIONS for suffix in ("", ".dlq", ".control", ".impressions")})
    env = {**os.environ, "STREAMREC_KAFKA_BOOTSTRAP": bootstrap, "STREAMREC_REDIS_URL": redis_url,
           "STREAMREC_TOPIC": topic, "STREAMREC_GROUP_ID": f"g-{run_id}", "STREAMREC_REDIS_PREFIX": prefix,
           "STREAMREC_MODEL": model, "STREAMREC_TOPIC_PARTITIONS": str(PARTITIONS),
           "STREAMREC_STATE_DIR": str(state_dir / run_id), "STREAMREC_SIMILAR_K": "0",
           "STREAMREC_CHECKPOINT_INTERVAL_S": str(checkpoint_interval_s)}
    store = RecommendationStore(redis.Redis.from_url(redis_url), prefix)
    logs = [state_dir / f"{run_id}-w{n}.log" for n in range(n_workers)]
    state_dir.mkdir(parents=True, exist_ok=True)
    workers = [subprocess.Popen([sys.executable, "-m", "streamrec", "worker"], stdout=open(log, "wb"),
                                stderr=subprocess.STDOUT, env={**env, "STREAMREC_WORKER_INSTANCE_ID": f"w{n}"})
               for n, log in enumerate(logs)]
    producer = threading.Thread(target=produce_at, args=(bootstrap, topic, events, rate))
    try:
        for log in logs:
            while b"serving partitions" not in log.read_bytes():
                time.sleep(0.1)
        time.sleep(3.0)  # the group settles once the last worker has joined
        started = time.perf_counter()
        producer.start()
        while store.counters().get("consumed", 0) < len(events):
            if any(w.poll() is not None for w in workers):
                raise RuntimeError(f"a worker died: see {logs}")
            time.sleep(0.1)
        seconds = time.perf_counter() - started
        time.sleep(1.5)  # one more metrics snapshot per worker
        reports = store.workers_metrics()
    finally:
        if producer.is_alive():
            producer.join()
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
            "item_staleness": staleness([r["item_staleness_seconds"] for r in reports]),
            "delta_kib_mean": sum(r["delta_bytes_published"] for r in reports) / 1024
            / max(sum(r["deltas_published"] for r in reports), 1), "lists": lists}


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
    parser.add_argument("--rate", type=float, default=2000.0,
                        help="events/s of the quality runs (0: skip them)")
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    if not Path(args.log).exists():
        subprocess.run([sys.executable, "-m", "streamrec", "datasets", "fetch", "movielens-100k"], check=True)
    events = read_log(args.log, args.format, limit=args.limit).events
    state_dir = Path(".streamrec/bench-workers")
    counts = list(map(int, args.workers.split(",")))
    results: dict[str, list[dict]] = {"throughput": [], "quality": []}
    with services() as svc:
        for kind, rate in (("throughput", None), ("quality", args.rate or None)):
            if kind == "quality" and rate is None:
                continue
            for n in counts:
                drop_prefix(svc.redis_url, "bench-workers")  # earlier runs' keys
                result = run(svc.kafka_bootstrap, svc.redis_url, events, n, args.model, state_dir,
                             args.checkpoint_interval_s, rate)
                results[kind].append(result)
                print(f"{kind}, {n} worker(s){f' at {rate:,.0f} events/s' if rate else ''}: "
                      f"{result['events_per_s']:,.0f} events/s ({result['seconds']:.1f} s for {len(events):,} events, "
                      f"model {args.model}, {os.cpu_count()} cores); online HR@10 {result['online_hr_at_10']:.4f} "
                      f"over {result['online_evaluated']:,} events; item deltas merged: {result['item_staleness']}, "
                      f"{result['delta_kib_mean']:,.0f} KiB each on average",
                      flush=True)
            single = results[kind][0]
            for result in results[kind][1:]:
                result["overlap_at_10_vs_single"] = overlap(single["lists"], result["lists"])
                result["online_hr_ratio_vs_single"] = result["online_hr_at_10"] / single["online_hr_at_10"]
                print(f"{kind}, {result['workers']} workers: online HR@10 {result['online_hr_ratio_vs_single']:.3f} "
                      f"of the single worker's; top-10 overlap with its lists {result['overlap_at_10_vs_single']:.3f}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(
            {kind: [{k: v for k, v in r.items() if k != "lists"} for r in runs] for kind, runs in results.items()},
            indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
