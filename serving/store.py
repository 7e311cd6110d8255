"""The API's view of the Redis store: reading lists, item metadata, counters and worker
metrics, deleting a user's list, and the in-process popular list for Redis outages.

The key layout and the encoding are ``core.keys``'; the worker writes (``stream.sink``).
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import orjson
import redis
from redis.exceptions import RedisError

from core.errors import StoreUnavailable
from core.keys import (
    EXPOSURE_BUCKETS_S,
    SERIES_TTL_S,
    WORKER_REPORT_TTL_S,
    KeyLayout,
    StoredList,
    decode_list,
    is_cluster,
)

EXPOSURE_GRACE_S = 300
"""Impressions reach Redis through Kafka and a worker's next batch: a bucket is taken as
final this long after it ends."""


class RecommendationStore:
    """Reads live recommendation lists from Redis (the API's side; ``stream.sink`` writes them).

    Parameters
    ----------
    client
        A ``redis.Redis`` (see ``make_client``).
    prefix
        Namespace of every key.
    cooldown_s
        After Redis failed to answer, reads fail at once (``StoreUnavailable``) for this
        long instead of waiting on Redis again: the API's event loop must not stall on a
        dead store. 0 (the default) tries Redis every time.
    """

    def __init__(self, client: redis.Redis, prefix: str = "streamrec", cooldown_s: float = 0.0):
        self.client = client
        self.prefix = prefix
        self.cooldown_s = cooldown_s
        self._unavailable_until = float("-inf")
        self.keys = KeyLayout(prefix)
        self._cluster = is_cluster(client)
        self._closed_exposure: dict[tuple[str, int], dict[str, int]] = {}  # see exposure
        self._closed_sums: dict[str, tuple[tuple[int, ...], dict[str, int]]] = {}

    def user_key(self, user_id: str) -> str:
        return self.keys.user(user_id)

    def workers_metrics(self) -> list[dict]:
        """The metrics every live worker last reported (those in the workers' index that
        reported in the last minute: no scan over the keys, which grow with the users)."""
        since = time.time() - WORKER_REPORT_TTL_S
        ids = self._call(self.client.zrangebyscore, self.keys.workers_index, since, "+inf")
        keys = [self.keys.worker(worker_id.decode()) for worker_id in ids]
        mget = self.client.mget_nonatomic if self._cluster else self.client.mget  # keys on several shards
        values = self._call(mget, keys) if keys else []
        return [orjson.loads(v) for v in values if v]

    def similar_key(self, item_id: str) -> str:
        return self.keys.similar(item_id)

    def similar_list(self, item_id: str) -> StoredList | None:
        raw = self._call(self.client.get, self.similar_key(item_id))
        return decode_list(raw) if raw else None

    def item_metadata(self, item_ids: Sequence[str]) -> list[dict | None]:
        """Metadata of each item (title, category, ...), None where none was given."""
        if not item_ids:
            return []
        raw = self._call(self.client.hmget, self.keys.items, list(item_ids))
        return [orjson.loads(v) if v else None for v in raw]

    def delete_user(self, user_id: str) -> None:
        """Remove the user's list and recent events: the next read answers as for a new user."""
        self._call(self.client.delete, self.user_key(user_id), self.keys.history(user_id))

    def history(self, user_id: str) -> list[tuple[str, str, float]]:
        """The user's recent events, newest first."""
        batches = self._call(self.client.lrange, self.keys.history(user_id), 0, -1)
        return [tuple(event) for raw in batches for event in reversed(orjson.loads(raw))]

    def series(self, minutes: Sequence[int]) -> list[dict[str, float]]:
        """The per-minute series of each of ``minutes`` (epoch minutes; empty where none)."""
        pipe = self.client.pipeline(transaction=False)
        for minute in minutes:
            pipe.hgetall(self.keys.series(minute))
        return [{k.decode(): float(v) for k, v in found.items()} for found in self._call(pipe.execute)]

    def exposure(self, size: str, buckets: Sequence[int]) -> dict[str, int]:
        """Impressions per item summed over ``buckets`` of ``size`` (``"5m"`` or ``"1h"``).

        A bucket that ended over ``EXPOSURE_GRACE_S`` ago no longer changes: it is read once
        and kept in this process (a day's worth at most), so the dashboard's refresh reads
        only the open buckets."""
        closed_before = time.time() - EXPOSURE_GRACE_S
        seconds = EXPOSURE_BUCKETS_S[size]
        cached = self._closed_exposure
        wanted = [b for b in buckets if (size, b) not in cached]
        pipe = self.client.pipeline(transaction=False)
        for bucket in wanted:
            pipe.hgetall(self.keys.exposure(size, bucket))
        fetched = dict(zip(wanted, self._call(pipe.execute) if wanted else ()))
        open_parts = []
        for bucket, found in fetched.items():
            counts = {item.decode(): int(count) for item, count in found.items()}
            if (bucket + 1) * seconds < closed_before:
                cached[(size, bucket)] = counts
            else:
                open_parts.append(counts)
        closed = tuple(b for b in buckets if (size, b) in cached)
        summed = self._closed_sums.get(size)
        if summed is None or summed[0] != closed:  # the closed buckets' sum, kept until they change
            totals: dict[str, int] = {}
            for bucket in closed:
                for item, count in cached[(size, bucket)].items():
                    totals[item] = totals.get(item, 0) + count
            summed = self._closed_sums[size] = (closed, totals)
        horizon = closed_before - SERIES_TTL_S
        for key in [k for k in cached if (k[1] + 1) * EXPOSURE_BUCKETS_S[k[0]] < horizon]:
            del cached[key]  # past anything shown
        totals = dict(summed[1])
        for counts in open_parts:
            for item, count in counts.items():
                totals[item] = totals.get(item, 0) + count
        return totals

    def exposure_of(self, item_id: str, size: str, buckets: Sequence[int]) -> int:
        """One item's impressions summed over ``buckets`` of ``size``."""
        pipe = self.client.pipeline(transaction=False)
        for bucket in buckets:
            pipe.hget(self.keys.exposure(size, bucket), item_id)
        return sum(int(n) for n in self._call(pipe.execute) if n)

    def user_list(self, user_id: str, *, unseen_only: bool = False, limit: int | None = None) -> StoredList | None:
        """The user's list (see ``decode_list`` for ``unseen_only`` and ``limit``); None if there is none."""
        raw = self._call(self.client.get, self.user_key(user_id))
        return decode_list(raw, unseen_only=unseen_only, limit=limit) if raw else None

    def popular_list(self) -> StoredList | None:
        raw = self._call(self.client.get, self.keys.popular)
        return decode_list(raw) if raw else None

    def counters(self) -> dict[str, int]:
        """Counts summed over partitions: ``{"consumed": ..., "applied": ..., ...}``."""
        totals: dict[str, int] = {}
        for field, value in self._call(self.client.hgetall, self.keys.counters).items():
            name = field.decode().partition(":")[0]
            totals[name] = totals.get(name, 0) + int(value)
        return totals

    def ping(self) -> bool:
        try:
            return bool(self.client.ping())
        except RedisError:
            return False

    def close(self) -> None:
        self.client.close()

    def _call(self, fn, *args):
        if self.cooldown_s and time.monotonic() < self._unavailable_until:
            raise StoreUnavailable("Redis did not answer a moment ago; not retrying yet")
        try:
            return fn(*args)
        except RedisError as exc:
            self._unavailable_until = time.monotonic() + self.cooldown_s
            raise StoreUnavailable(f"Redis did not answer: {exc}") from exc


class PopularCache:
    """The popular list, kept in process: what the API serves while Redis is away.

    ``get`` re-reads Redis when the copy is older than ``max_age_s`` (or there is none yet);
    ``last`` is the most recent copy that was read, however old.
    """

    def __init__(self, store: RecommendationStore, max_age_s: float = 1.0):
        self.store = store
        self.max_age_s = max_age_s
        self.last: StoredList | None = None
        self._read_at = float("-inf")

    def get(self) -> StoredList | None:
        now = time.monotonic()
        if self.last is None or now - self._read_at >= self.max_age_s:
            self.last = self.store.popular_list()
            self._read_at = now
        return self.last

