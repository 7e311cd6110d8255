"""Scale of state: Redis memory per user's top-10 list, and worker memory as users grow.

Redis: synthetic top-10 lists (10 items, no seen flags, model ``cooc``: what the issue's
"300 MB per 1M users' top-10 lists" counts) over a 100k-item catalogue are written with
``ListSink.write_batch`` (the worker's write path) for up to 1M users; Redis's
``used_memory`` is read at each step. Baseline: the bytes of the encoded values themselves
(what any store must hold), so the ratio is Redis's per-key overhead factor. The worker's
lists are ``STREAMREC_TOP_K`` long (50 by default; the user's seen items, flagged among them,
come on top), so the same is measured for top-``top_k`` lists, without seen items, on fewer
users (``redis_top_k``).

Worker: a ``Worker`` with the default model but no Kafka (records are handed to
``Worker.process`` directly, the lists' computation is skipped: that is Redis's side, above)
learns events of more and more users (3 events each, 100k items); its resident memory is
read at each step, after ``expire_idle`` (what the worker's checkpoint runs). The
events span ``span_days`` of event time, so users idle past ``user_idle_expiry_s`` are forgotten.
"""

from __future__ import annotations

import random
import time
import uuid

from bench.common import (
    Nothing,
    Services,
    bench_settings,
    drop_prefix,
    in_process,
    rss_bytes,
)
from stream.pipeline import Record

ITEMS = 100_000


def redis_memory(svc: Services, steps: list[int], log=print, list_len: int = 10) -> dict:
    import redis

    from core.keys import encode_list, make_client
    from stream.sink import ListSink

    settings = bench_settings(svc, redis_prefix=f"sr{uuid.uuid4().hex[:8]}")  # as long as "streamrec"
    client = redis.Redis.from_url(svc.redis_url)
    store = ListSink(make_client(svc.redis_url, retries=2), settings.redis_prefix, settings.user_list_ttl_s)
    rng = random.Random(1)
    base = client.info("memory")["used_memory"]
    payload, written, points = 0, 0, []
    now = time.time()
    try:
        for step in steps:
            while written < step:
                batch = min(5000, step - written)
                lists = {f"user{written + n}": [(f"i{rng.randrange(ITEMS)}", rng.random() * 2) for _ in range(list_len)]
                         for n in range(batch)}
                payload += sum(len(encode_list(items, "cooc", now)) for items in lists.values())
                store.write_batch(lists, "cooc", now)
                written += batch
            used = client.info("memory")["used_memory"] - base
            points.append({"users": written, "redis_bytes": used, "bytes_per_user": used / written,
                           "value_bytes_per_user": payload / written})
            log(f"  redis, top-{list_len}: {written:>9,} users -> {used / 2**20:7.1f} MiB, {used / written:.0f} B/user "
                f"(values alone {payload / written:.0f} B/user)")
    finally:
        drop_prefix(svc.redis_url, settings.redis_prefix)
        client.close()
    return {"list_len": list_len, "points": points, "bytes_per_user": points[-1]["bytes_per_user"],
            "mb_per_million_users": points[-1]["bytes_per_user"],  # bytes/user * 1e6 users / 1e6
            "value_bytes_per_user": points[-1]["value_bytes_per_user"],
            "ratio_vs_values": points[-1]["bytes_per_user"] / points[-1]["value_bytes_per_user"]}


def _worker_memory(settings, steps: list[int], span_days: float, out) -> None:
    import orjson

    from stream.worker import Worker

    rss0 = rss_bytes()
    worker = Worker(settings, consumer=Nothing(), dlq_producer=Nothing())
    rss_model0 = rss_bytes()
    worker.model.recommend_many = lambda users, k, exclude=None: {}  # lists: measured on Redis's side
    rng = random.Random(2)
    total_users = steps[-1]
    t0 = time.time() - span_days * 86400
    per_user_s = span_days * 86400 / total_users
    offset, users_done, points = 0, 0, []
    started = time.perf_counter()
    for step in steps:
        while users_done < step:
            batch = []
            for u in range(users_done, min(step, users_done + 700)):
                ts = t0 + u * per_user_s
                for _ in range(3):
                    value = orjson.dumps({"user_id": f"user{u}", "item_id": f"i{int(rng.paretovariate(1.1)) % ITEMS}",
                                          "type": "view", "ts": round(ts, 3)})
                    batch.append(Record(settings.topic, u % 3, offset, int(ts * 1000), b"", value))
                    offset += 1
            worker.process(batch)
            users_done = min(step, users_done + 700)
        worker.pipeline.expire_idle()
        points.append({"users": users_done, "events": offset, "rss_bytes": rss_bytes(),
                       "users_in_memory": len(worker.pipeline.seen), "seconds": time.perf_counter() - started})
    out.put({"points": points, "rss_start": rss0, "rss_after_init": rss_model0, "model": worker.model.name})


def worker_memory(svc: Services, steps: list[int], span_days: float = 60.0, log=print) -> dict:
    settings = bench_settings(svc, top_k=10)
    try:
        result = in_process(_worker_memory, settings, steps, span_days, timeout_s=1800)
    finally:
        drop_prefix(svc.redis_url, settings.redis_prefix)
    base = result["rss_after_init"]
    for p in result["points"]:
        log(f"  worker ({result['model']}): {p['users']:>9,} users ({p['events']:,} events, "
            f"{p['users_in_memory']:,} kept) -> RSS {p['rss_bytes'] / 2**20:7.1f} MiB "
            f"(+{(p['rss_bytes'] - base) / 2**20:.1f} MiB), {p['seconds']:.0f} s")
    last = result["points"][-1]
    result["bytes_per_user"] = (last["rss_bytes"] - base) / last["users"]
    result["span_days"] = span_days
    result["user_idle_expiry_s"] = settings.user_idle_expiry_s
    return result


def run(svc: Services, *, quick: bool, log=print, **_) -> dict:
    redis_steps = [50_000, 100_000, 250_000] if quick else [100_000, 250_000, 500_000, 1_000_000]
    worker_steps = [25_000, 50_000] if quick else [100_000, 250_000, 500_000, 1_000_000]
    top_k = bench_settings(svc).top_k
    log(f"scale: Redis with up to {redis_steps[-1]:,} users' top-10 lists (and {redis_steps[1]:,} users' "
        f"top-{top_k}); worker state up to {worker_steps[-1]:,} users ({ITEMS:,} items)")
    return {"redis": redis_memory(svc, redis_steps, log),
            "redis_top_k": redis_memory(svc, redis_steps[:2], log, list_len=top_k),
            "worker": worker_memory(svc, worker_steps, log=log)}
