"""The shared cost of a batch's lists, from ranking to Redis: ``Pipeline._rank`` (rank, cut,
flag), ``encode_lists`` and ``ListSink.write_batch`` (client CPU, and the Redis server's own
CPU from ``INFO cpu``), per 1k events of the ingest bench's stream.

Run it on two trees one after the other (a branch against a clean checkout of main) for a
same-run ratio; it starts a private ``redis-server`` (no AOF) and removes it at the end:

    cd /work/base && PYTHONPATH=$PWD python /path/to/bench/sink_cpu.py [--events 20000] [--models trending,cooc]
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import subprocess
import tempfile
import time

import orjson
import redis

from bench.ingest_cpu import batches_of
from core.keys import encode_lists
from core.settings import Settings
from online_models import make_model
from stream.pipeline import Pipeline
from stream.sink import ListSink
from streamrec.services import free_port


def server_cpu_s(client: redis.Redis) -> float:
    """The server's CPU seconds so far (``INFO cpu``: parsing and replies included; commandstats
    would count a script's commands twice, in the script's time and in their own)."""
    cpu = client.info("cpu")
    return cpu["used_cpu_user"] + cpu["used_cpu_sys"]


def wait_for(client: redis.Redis, deadline_s: float = 10.0) -> None:
    until = time.monotonic() + deadline_s
    while True:
        try:
            client.ping()
            return
        except redis.ConnectionError:
            if time.monotonic() > until:
                raise


def measure(model_name: str, batches, client: redis.Redis) -> dict[str, float]:
    settings = Settings(_env_file=None)
    batch_clock = iter(range(1_700_000_000, 2_000_000_000, 5))  # wall time per batch, the same in each tree
    pipeline = Pipeline(settings, make_model(model_name), clock=lambda: float(next(batch_clock)))
    sink = ListSink(client, prefix=f"bench-{model_name}", history_events=settings.user_history_events)
    spent = {"rank": 0.0, "encode": 0.0, "write": 0.0, "server": 0.0}  # write: encode included
    rank = pipeline._rank

    def timed_rank(users):
        started = time.process_time()
        try:
            return rank(users)
        finally:
            spent["rank"] += time.process_time() - started if timing else 0.0

    pipeline._rank = timed_rank
    events = 0
    for n, records in enumerate(batches):
        timing = n > 0  # the first batch warms up, untimed
        effects = pipeline.process(records)
        started = time.process_time()
        encode_lists(effects.lists, effects.model, effects.written_at, effects.explanations)
        encoded = time.process_time() - started
        before = server_cpu_s(client)
        started = time.process_time()
        sink.write_batch(effects.lists, effects.model, effects.written_at, effects.popular, effects.counters,
                         effects.similar, ("w0", {"lag": 0}), effects.explanations, effects.item_metadata,
                         history=effects.history, series={"consumed": len(records)})
        written = time.process_time() - started
        if timing:
            spent["encode"] += encoded
            spent["write"] += written
            spent["server"] += server_cpu_s(client) - before
            events += len(records)
    return {**{name: seconds * 1000 / events * 1000 for name, seconds in spent.items()},  # ms per 1k events
            "digest": stored_digest(client, f"bench-{model_name}")}


def stored_digest(client: redis.Redis, prefix: str) -> str:
    """A digest of what was written that must not change: the users' lists and histories, the
    similar-item and popular lists, with their TTLs rounded to the hour."""
    digest = hashlib.sha256()
    for key in sorted(client.scan_iter(f"{prefix}:*")):
        kind = client.type(key)
        if kind == b"string" and b":workers:" not in key:
            digest.update(key + client.get(key))
        elif kind == b"list":  # the histories, without the events' times (the bench's stream starts now)
            events = [[event[:2] for event in orjson.loads(raw)] for raw in client.lrange(key, 0, -1)]
            digest.update(key + orjson.dumps(events))
        else:
            continue
        digest.update(str(round(client.ttl(key) / 3600)).encode())
    return digest.hexdigest()[:16]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--models", default="trending,cooc")
    args = parser.parse_args()
    batch = Settings(_env_file=None).max_poll_records
    batches = batches_of(args.events + batch, batch)
    home = tempfile.mkdtemp(prefix="sink-cpu-")
    port = free_port()
    server = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                               "--appendonly", "no", "--dir", home], stdout=subprocess.DEVNULL)
    try:
        client = redis.Redis(port=port)
        wait_for(client)
        print("ms per 1k events (process CPU; server: redis-server's CPU)")
        for name in args.models.split(","):
            got = measure(name, batches, client)
            digest = got.pop("digest")
            print(f"{name:10s} " + "  ".join(f"{k} {v:6.2f}" for k, v in got.items()) + f"  digest {digest}")
    finally:
        server.terminate()
        server.wait(10)
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
