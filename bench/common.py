"""What every benchmark shares: services, statistics, synthetic events, CPU pinning, processes."""

from __future__ import annotations

import json
import os
import random
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import orjson

from core.schema import INTERACTION_TYPES

BENCH_STATE_DIR = Path(".streamrec/bench-services")
KAFKA_PORT = 9192
REDIS_PORT = 6480
TYPE_MIX = (("view", 0.70), ("click", 0.20), ("add_to_cart", 0.07), ("purchase", 0.03))
assert {t for t, _ in TYPE_MIX} == set(INTERACTION_TYPES)


# -- services ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Services:
    kafka_bootstrap: str
    redis_url: str
    origin: str


@contextmanager
def services(state_dir: Path = BENCH_STATE_DIR) -> Iterator[Services]:
    """Kafka and Redis: those named by ``STREAMREC_KAFKA_BOOTSTRAP``/``STREAMREC_REDIS_URL``,
    else local ones started under ``state_dir`` (own ports, stopped at the end)."""
    kafka = os.environ.get("STREAMREC_KAFKA_BOOTSTRAP")
    redis_url = os.environ.get("STREAMREC_REDIS_URL")
    started = []
    from streamrec.services import LocalKafka, LocalRedis, free_port

    try:
        if not redis_url:
            local_redis = LocalRedis(state_dir)
            was_running = local_redis.running_port() is not None
            redis_url = local_redis.start(port=free_port(REDIS_PORT))
            if not was_running:
                started.append(local_redis)
        if not kafka:
            local_kafka = LocalKafka(state_dir)
            _share_kafka_jars(local_kafka)
            was_running = local_kafka.running_port() is not None
            kafka = local_kafka.start(port=free_port(KAFKA_PORT))
            if not was_running:
                started.append(local_kafka)
        yield Services(kafka, redis_url, "started" if started else "existing")
    finally:
        for service in started:
            service.stop()


def _share_kafka_jars(kafka) -> None:
    """Reuse the jars that ``streamrec services start`` already collected (no second download)."""
    from core.settings import STATE_DIR

    shared = (STATE_DIR / "kafka" / "libs").resolve()
    if not kafka.libs.exists() and shared.is_dir():
        kafka.home.mkdir(parents=True, exist_ok=True)
        kafka.libs.symlink_to(shared)


def bench_settings(svc: Services, **overrides):
    """Settings for one benchmark run: its own topic, group and Redis prefix."""
    import tempfile

    from core.settings import Settings

    run = uuid.uuid4().hex[:8]
    values = dict(
        state_dir=Path(tempfile.gettempdir()) / "streamrec-bench" / run,
        kafka_bootstrap=svc.kafka_bootstrap, redis_url=svc.redis_url,
        topic=f"bench-{run}", group_id=f"bench-{run}", redis_prefix=f"bench:{run}",
    )
    values.update(overrides)
    return Settings(_env_file=None, **values)


def drop_prefix(redis_url: str, prefix: str) -> None:
    """Delete a run's keys (so repeated runs do not fill the benchmark Redis)."""
    import redis

    client = redis.Redis.from_url(redis_url)
    batch = []
    for key in client.scan_iter(match=f"{prefix}:*", count=10_000):
        batch.append(key)
        if len(batch) >= 10_000:
            client.unlink(*batch)
            batch.clear()
    if batch:
        client.unlink(*batch)
    client.close()


# -- a worker without Kafka ------------------------------------------------------------

class Nothing:
    """Stands in for a worker's consumer and DLQ producer in a benchmark without Kafka: assigned
    nothing, every call a no-op."""

    def assignment(self) -> set:
        return set()

    def __getattr__(self, name):
        return lambda *args, **kwargs: None


# -- statistics -------------------------------------------------------------------------

@dataclass(frozen=True)
class Spread:
    """min / median / max of one measurement over repeated runs."""

    min: float
    median: float
    max: float
    runs: int

    @classmethod
    def of(cls, values: Sequence[float]) -> Spread:
        values = [float(v) for v in values]
        return cls(min(values), statistics.median(values), max(values), len(values))

    def as_dict(self) -> dict:
        return {"min": self.min, "median": self.median, "max": self.max, "runs": self.runs}


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100), nearest rank."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, int(round(q / 100 * len(ordered) + 0.5)) - 1))
    return ordered[rank]


# -- synthetic events -------------------------------------------------------------------

class Catalogue:
    """Item ids with a Zipf-like popularity and a type mix, reproducible from a seed."""

    def __init__(self, items: int, users: int, seed: int = 7, zipf_s: float = 1.0):
        self.rng = random.Random(seed)
        self.items = [f"i{n}" for n in range(items)]
        self.users = users
        weights = [1.0 / (r + 1) ** zipf_s for r in range(items)]
        total = sum(weights)
        self._cum = list(_accumulate(w / total for w in weights))
        self._types = [t for t, _ in TYPE_MIX]
        self._type_cum = list(_accumulate(p for _, p in TYPE_MIX))

    def event(self, user: str | None = None, ts: float | None = None) -> dict:
        rng = self.rng
        return {
            "user_id": user if user is not None else f"u{rng.randrange(self.users)}",
            "item_id": rng.choices(self.items, cum_weights=self._cum)[0],
            "type": rng.choices(self._types, cum_weights=self._type_cum)[0],
            "ts": round(ts if ts is not None else time.time(), 3),
        }

    def payloads(self, n: int) -> list[tuple[bytes, bytes]]:
        """``n`` (key, value) pairs ready for Kafka."""
        rng = self.rng
        users = [f"u{u}" for u in (rng.randrange(self.users) for _ in range(n))]
        items = rng.choices(self.items, cum_weights=self._cum, k=n)
        types = rng.choices(self._types, cum_weights=self._type_cum, k=n)
        now = round(time.time(), 3)
        return [
            (u.encode(), orjson.dumps({"user_id": u, "item_id": i, "type": t, "ts": now}))
            for u, i, t in zip(users, items, types)
        ]


def _accumulate(values) -> Iterator[float]:
    total = 0.0
    for v in values:
        total += v
        yield total


# -- processes and cores ----------------------------------------------------------------

def cores() -> list[int]:
    return sorted(os.sched_getaffinity(0))


def split_cores() -> tuple[set[int], set[int]]:
    """(server side, load-generator side): disjoint halves when there are two cores or more."""
    all_cores = cores()
    if len(all_cores) < 2:
        return set(all_cores), set(all_cores)
    half = len(all_cores) // 2
    return set(all_cores[:half]), set(all_cores[half:])


def pin(core_set: set[int] | None) -> None:
    if core_set:
        os.sched_setaffinity(0, core_set)


def rss_bytes(pid: int | None = None) -> int:
    """Resident set size of a process (this one by default), from /proc."""
    with open(f"/proc/{pid or 'self'}/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def in_process(target, *args, timeout_s: float = 900.0):
    """Run ``target(*args, queue)`` in a fresh (spawned) process and return what it puts on the queue."""
    import multiprocessing as mp
    import queue

    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    proc = ctx.Process(target=target, args=(*args, out))
    proc.start()
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            try:
                return out.get(timeout=1.0)
            except queue.Empty:
                if not proc.is_alive():
                    raise RuntimeError(f"{target.__name__} exited with code {proc.exitcode} without a result")
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{target.__name__} gave no result within {timeout_s:.0f} s")
    finally:
        proc.join(30)
        if proc.is_alive():
            proc.kill()


def wait_until(predicate, timeout_s: float, interval_s: float = 0.05, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval_s)
    raise TimeoutError(f"{what} not reached within {timeout_s:.0f} s")


def in_turns(trees: Sequence[str], round_: int) -> Sequence[str]:
    """The trees in this round's order: reversed every other round, so that none always runs
    first (on a host that warms up, or slows down, as a run goes on)."""
    return trees if round_ % 2 == 0 else trees[::-1]


def json_from_tree(tree: str, argv: Sequence[str], extra_env: Mapping[str, str] | None = None,
                   timeout_s: float | None = None) -> dict:
    """Run this interpreter with ``argv`` in ``tree``, its packages first on the path and none
    of this shell's ``STREAMREC_`` settings; returns the JSON object on its last line of output."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("STREAMREC_")}
    env["PYTHONPATH"] = os.path.abspath(tree)
    env.update(extra_env or {})
    done = subprocess.run([sys.executable, *argv], cwd=tree, env=env, capture_output=True, text=True,
                          timeout=timeout_s, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])
