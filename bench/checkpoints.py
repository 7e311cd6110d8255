"""Checkpoint stores compared: the Kafka store (``<topic>.checkpoints``) against files.

``python -m bench.checkpoints [--state-mb 200] [--repeats 3] [--users 100000]
[--generations 8640] [--generation-kb 100] [--json FILE]``

Three measurements, each with both stores in the same run:

1. **Throughput.** One state of ``--state-mb`` MB of incompressible bytes (float32 arrays,
   like item vectors), saved and loaded ``--repeats`` times: MB/s of pickled state, with
   the file store on this machine's disk as the baseline.
2. **Hand-over of one partition of ``--users`` users.** A ``cooc`` model learns two events
   per user; its checkpoint holds one partition with those users (their seen items, last
   activity and a 100k-id dedupe window, as a worker's does). Timed as a worker adopting
   the partition does it: read every worker's summary, load the peer's checkpoint, move
   the users (``export_users`` -> ``import_users``, seen items, activity).
3. **Topic size after a day of checkpoints.** One worker saves ``--generations`` states of
   ``--generation-kb`` KB back to back (8,640 = a day at the default 10 s cadence; the
   bytes are small so the day takes minutes, not hours). The broker is a fresh local
   one; the topic is created with short segments (``segment.ms`` 5 s, ``segment.bytes``
   1 MiB) and ``delete.retention.ms`` 10 s, so compaction (the broker's default cleaner,
   checking every 15 s) gets to work within the run. The size on the broker's disk is
   sampled as it goes and after the cleaner's last pass, against the bytes written.

Starts a local Kafka unless ``STREAMREC_KAFKA_BOOTSTRAP`` names one (the day simulation
always starts its own, to read its disk).
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import tempfile
import time
from collections import deque
from pathlib import Path

import numpy as np

from bench.common import services
from core.kafka import ensure_topics
from core.schema import Event
from core.settings import Settings
from online_models.cooc import Cooc
from stream.checkpoint import FileCheckpointStore
from stream.kafka_checkpoints import TOPIC_CONFIG, KafkaCheckpointStore


def _median(values: list[float]) -> dict:
    return {"min": min(values), "median": statistics.median(values), "max": max(values)}


def _stores(bootstrap: str, folder: Path, worker: str | None) -> dict:
    topic = f"bench-{time.time_ns()}.checkpoints"
    return {"kafka": KafkaCheckpointStore(bootstrap, topic, "bench", worker=worker),
            "file": FileCheckpointStore(folder, worker=worker)}


def throughput(bootstrap: str, state_mb: int, repeats: int) -> dict:
    rng = np.random.default_rng(0)
    state = {"item_vectors": rng.standard_normal(state_mb * 1024 * 1024 // 4, dtype=np.float32).reshape(-1, 64)}
    results: dict = {}
    with tempfile.TemporaryDirectory() as folder:
        writers = _stores(bootstrap, Path(folder), "w0")
        readers = {"kafka": KafkaCheckpointStore(bootstrap, writers["kafka"].topic, "bench"),
                   "file": FileCheckpointStore(folder)}
        for _ in range(repeats):
            for kind in ("file", "kafka"):  # interleaved: both see the same load on the machine
                started = time.perf_counter()
                writers[kind].save(state, {0: 1})
                write_s = time.perf_counter() - started
                started = time.perf_counter()
                loaded = readers[kind].load("w0")
                read_s = time.perf_counter() - started
                assert np.array_equal(loaded["item_vectors"], state["item_vectors"])
                del loaded
                results.setdefault(kind, {"write_mb_s": [], "read_mb_s": []})
                results[kind]["write_mb_s"].append(state_mb / write_s)
                results[kind]["read_mb_s"].append(state_mb / read_s)
        for store in (*writers.values(), *readers.values()):
            store.close()
    out = {kind: {k: _median(v) for k, v in r.items()} for kind, r in results.items()}
    out["ratio_kafka_vs_file"] = {k: out["kafka"][k]["median"] / out["file"][k]["median"]
                                  for k in ("write_mb_s", "read_mb_s")}
    return out


def _partition_state(n_users: int) -> tuple[dict, list[str]]:
    rng = random.Random(1)
    events = [Event(user_id=f"u{u}", item_id=f"i{int(rng.paretovariate(1.2)) % 5000}", type="view",
                    ts=1_700_000_000.0 + 2 * u + k, event_id=f"e{u}-{k}")
              for u in range(n_users) for k in range(2)]
    model = Cooc()
    model.learn_many(events)
    users = [f"u{u}" for u in range(n_users)]
    seen: dict[str, set[str]] = {}
    for event in events:
        seen.setdefault(event.user_id, set()).add(event.item_id)
    state = {
        "model": model,
        "partitions": {0: {"users": set(users), "recent_ids": deque(e.event_id for e in events[-100_000:]),
                           "next_offset": len(events)}},
        "seen": seen,
        "last_active": {e.user_id: e.ts for e in events},
    }
    return state, users


def hand_over(bootstrap: str, n_users: int, repeats: int) -> dict:
    state, users = _partition_state(n_users)
    results: dict = {}
    with tempfile.TemporaryDirectory() as folder:
        writers = _stores(bootstrap, Path(folder), "peer")
        readers = {"kafka": KafkaCheckpointStore(bootstrap, writers["kafka"].topic, "bench"),
                   "file": FileCheckpointStore(folder)}
        for kind, writer in writers.items():
            writer.save(state, {0: state["partitions"][0]["next_offset"]})
        for _ in range(repeats):
            for kind in ("file", "kafka"):
                started = time.perf_counter()
                held = readers[kind].summaries()
                assert held["peer"] == {0: 2 * n_users}
                peer = readers[kind].load("peer")
                loaded_s = time.perf_counter() - started
                adopter = Cooc()
                moved = peer["partitions"][0]["users"]
                adopter.import_users(peer["model"].export_users(moved))
                seen = {u: peer["seen"][u] for u in moved if u in peer["seen"]}
                last_active = {u: peer["last_active"][u] for u in moved if u in peer["last_active"]}
                total_s = time.perf_counter() - started
                assert len(seen) == len(last_active) == n_users
                results.setdefault(kind, {"load_s": [], "hand_over_s": []})
                results[kind]["load_s"].append(loaded_s)
                results[kind]["hand_over_s"].append(total_s)
        manifest = readers["kafka"].manifests("peer")[0]
        for store in (*writers.values(), *readers.values()):
            store.close()
    out = {kind: {k: _median(v) for k, v in r.items()} for kind, r in results.items()}
    out["checkpoint_mb"] = manifest.size_bytes / 1e6
    out["chunks"] = manifest.chunks
    out["ratio_kafka_vs_file"] = out["kafka"]["hand_over_s"]["median"] / out["file"]["hand_over_s"]["median"]
    return out


DEMO_TOPIC_CONFIG = {**TOPIC_CONFIG, "segment.ms": "5000", "segment.bytes": str(1024 * 1024),
                     "delete.retention.ms": "10000"}


def _topic_bytes(data_dir: Path, topic: str) -> int:
    return sum(f.stat().st_size for f in data_dir.glob(f"{topic}-*/*.log"))


def day_of_checkpoints(generations: int, generation_kb: int, settle_s: float = 60.0) -> dict:
    from streamrec.services import LocalKafka, free_port

    with tempfile.TemporaryDirectory() as home:
        kafka = LocalKafka(Path(home), libs_dir=Settings(_env_file=None).state_dir / "kafka" / "libs")
        bootstrap = kafka.start(port=free_port())
        try:
            topic = "day.checkpoints"
            ensure_topics(bootstrap, {topic: 2}, configs={topic: DEMO_TOPIC_CONFIG})
            store = KafkaCheckpointStore(bootstrap, topic, "bench", worker="w0")
            data_dir = kafka.home / "data"
            rng = np.random.default_rng(2)
            written = 0
            samples = []
            started = time.monotonic()
            for g in range(1, generations + 1):
                state = {"generation": g, "bytes": rng.integers(0, 256, generation_kb * 1024, dtype=np.uint8)}
                store.save(state, {0: g})
                written += generation_kb * 1024
                if g % max(1, generations // 12) == 0:
                    samples.append({"generation": g, "written_mb": written / 1e6,
                                    "topic_mb": _topic_bytes(data_dir, topic) / 1e6,
                                    "elapsed_s": time.monotonic() - started})
            # the cleaner's passes after the last write (it checks every 15 s)
            deadline = time.monotonic() + settle_s
            while time.monotonic() < deadline:
                time.sleep(5)
                samples.append({"generation": generations, "written_mb": written / 1e6,
                                "topic_mb": _topic_bytes(data_dir, topic) / 1e6,
                                "elapsed_s": time.monotonic() - started})
            reader = KafkaCheckpointStore(bootstrap, topic, "bench")
            newest = reader.load("w0")
            assert newest["generation"] == generations
            kept = [m.generation for m in reader.manifests("w0")]
            reader.close()
            store.close()
        finally:
            kafka.stop()
    return {"generations": generations, "generation_kb": generation_kb, "written_mb": written / 1e6,
            "final_topic_mb": samples[-1]["topic_mb"], "max_topic_mb": max(s["topic_mb"] for s in samples),
            "generations_kept": kept, "samples": samples, "topic_config": DEMO_TOPIC_CONFIG}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--state-mb", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--generations", type=int, default=8640)
    parser.add_argument("--generation-kb", type=int, default=100)
    parser.add_argument("--skip", default="", help="comma-separated: throughput, hand-over, day")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    skip = set(filter(None, args.skip.split(",")))
    results: dict = {}
    with services() as svc:
        if "throughput" not in skip:
            results["throughput"] = r = throughput(svc.kafka_bootstrap, args.state_mb, args.repeats)
            for kind in ("file", "kafka"):
                print(f"{kind:5} store, {args.state_mb} MB state: write {r[kind]['write_mb_s']['median']:.0f} MB/s, "
                      f"read {r[kind]['read_mb_s']['median']:.0f} MB/s (median of {args.repeats})", flush=True)
            print(f"kafka / file: write {r['ratio_kafka_vs_file']['write_mb_s']:.2f}, "
                  f"read {r['ratio_kafka_vs_file']['read_mb_s']:.2f}", flush=True)
        if "hand-over" not in skip:
            results["hand_over"] = r = hand_over(svc.kafka_bootstrap, args.users, args.repeats)
            for kind in ("file", "kafka"):
                print(f"{kind:5} store, hand-over of {args.users:,} users ({r['checkpoint_mb']:.0f} MB checkpoint): "
                      f"{r[kind]['hand_over_s']['median']:.2f} s, of which loading {r[kind]['load_s']['median']:.2f} s",
                      flush=True)
            print(f"kafka / file: {r['ratio_kafka_vs_file']:.2f}", flush=True)
    if "day" not in skip:
        results["day"] = r = day_of_checkpoints(args.generations, args.generation_kb)
        for s in r["samples"]:
            print(f"  generation {s['generation']:5}: written {s['written_mb']:8.1f} MB, topic {s['topic_mb']:6.1f} MB "
                  f"({s['elapsed_s']:.0f} s)", flush=True)
        print(f"{args.generations} generations of {args.generation_kb} KB: {r['written_mb']:.0f} MB written, "
              f"topic {r['final_topic_mb']:.1f} MB at the end (at most {r['max_topic_mb']:.1f} MB), "
              f"generations kept {r['generations_kept']}", flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
