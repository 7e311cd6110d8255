"""The worker's writes to Redis: each batch's lists, popular list, counters and metrics.

The key layout and the encoding are ``core.keys``'; the API reads what this writes
(``serving.store``).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence

import orjson
import redis
from redis.exceptions import RedisError

from core.errors import StoreUnavailable
from core.keys import (
    EXPOSURE_BUCKETS_S,
    EXPOSURE_TTL_S,
    SERIES_TTL_S,
    WORKER_REPORT_TTL_S,
    KeyLayout,
    ListBatch,
    encode_list,
    encode_lists,
    is_cluster,
)

Ranking = Sequence[tuple[str, float]]

# One script for a batch's users: SET each list (KEYS[i], ARGV[i + 3] for i <= ARGV[3]) with
# a TTL of ARGV[1] seconds, then LPUSH each user's events of the batch (the other KEYS) to
# their history, cut to its newest ARGV[2] entries, with the same TTL. (Packing the values
# into one argument saves the client its per-argument work, but costs the server as much
# again in string.sub: bench/sink_cpu.py.)
_WRITE_USERS = """
local ttl, keep, lists = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
for i = 1, lists do
    redis.call('SET', KEYS[i], ARGV[i + 3], 'EX', ttl)
end
for i = lists + 1, #KEYS do
    if redis.call('LPUSH', KEYS[i], ARGV[i + 3]) > keep then  -- a shorter list has nothing to cut
        redis.call('LTRIM', KEYS[i], 0, keep - 1)
    end
    redis.call('EXPIRE', KEYS[i], ttl)
end
return #KEYS
"""


class ListSink:
    """Writes a batch's effects to Redis in one transaction.

    Parameters
    ----------
    client
        A ``redis.Redis`` or ``RedisCluster`` (see ``core.keys.make_client``; the worker's
        retries forever, so a Redis outage blocks it rather than loses a batch).
    prefix
        Namespace of every key.
    user_list_ttl_s
        Time to live of each user's list: lists of users gone quiet expire on their own.
    history_events
        Batches of each user's recent events kept for the dashboard (0: none).
    """

    def __init__(self, client: redis.Redis, prefix: str = "streamrec", user_list_ttl_s: int = 30 * 24 * 3600,
                 history_events: int = 20):
        self.client = client
        self.keys = KeyLayout(prefix)
        self.user_list_ttl_s = user_list_ttl_s
        self.history_events = history_events
        self._cluster = is_cluster(client)
        # a script and a transaction must keep to one shard's keys: in a cluster, plain pipelines
        self._write_users = None if self._cluster else client.register_script(_WRITE_USERS)

    def write_batch(
        self,
        lists: Mapping[str, Ranking],
        model: str,
        updated_at: float,
        popular: Ranking | None = None,
        counters: Mapping[str, int] | None = None,
        similar: Mapping[str, Ranking] | None = None,
        worker_metrics: tuple[str, Mapping] | None = None,
        explanations: Mapping[str, Sequence[tuple[str, str | None]]] | None = None,
        item_metadata: Mapping[str, Mapping] | None = None,
        seen: Mapping[str, Sequence[bool]] | None = None,
        *,
        history: Mapping[str, Sequence[tuple[str, str, float]]] | None = None,
        series: Mapping[str, float] | None = None,
        exposures: Mapping[int, Mapping[str, int]] | None = None,
        encoded: Sequence[bytes] | None = None,
    ) -> None:
        """Write users' lists, the popular list, similar-item lists and counter values in one transaction.

        ``lists`` may be a ``core.keys.ListBatch`` (what the worker's pipeline gives): it
        carries its seen flags, and ``seen`` is not read.

        With them, for the dashboard: each user's events of this batch (``history``), what
        the batch adds to this minute's ``series``, and the ``exposures`` read since the last
        batch (impressions per item, per 5-minute bucket of serve time; see ``add_series``).

        ``encoded``: the users' lists already encoded (``core.keys.encode_lists`` of ``lists``,
        ``model``, ``updated_at`` and ``explanations``; the worker encodes them on its loop's
        thread, so that the writer thread holds the interpreter only briefly).

        On a Redis Cluster the keys live on several shards, which no transaction spans: the
        lists go first, and the rest only once every shard took them, so the counters never
        count lists that are not there. (Lists and counters are absolute values: a batch
        written again after a crash leaves the same state.)
        """
        if not isinstance(lists, ListBatch):  # plain lists: one encoder for all (the bytes encode_list gives)
            lists = ListBatch.of_rankings(lists, seen)
        keys = self.keys.users(lists.users)
        values = encode_lists(lists, model, updated_at, explanations or {}) if encoded is None else list(encoded)
        if similar:  # encoded as users' lists are (the bytes encode_list gives each)
            similar_lists = ListBatch.of_rankings(similar)
            keys += self.keys.similars(similar_lists.users)
            values += encode_lists(similar_lists, model, updated_at)
        history_keys, history_values = [], []
        if history and self.history_events:
            history_keys = self.keys.histories(list(history))
            history_values = [orjson.dumps(events[-self.history_events:]) for events in history.values()]
        if self._cluster:
            if keys:
                lists_pipe = self.client.pipeline()
                for key, value in zip(keys, values):
                    lists_pipe.set(key, value, ex=self.user_list_ttl_s)
                self._call(lists_pipe.execute)
            pipe = self.client.pipeline()
            for key, value in zip(history_keys, history_values):
                pipe.lpush(key, value)
                pipe.ltrim(key, 0, self.history_events - 1)
                pipe.expire(key, self.user_list_ttl_s)
        else:
            pipe = self.client.pipeline(transaction=True)
            if keys or history_keys:
                self._write_users(keys=keys + history_keys, client=pipe, args=[
                    self.user_list_ttl_s, self.history_events, len(keys), *values, *history_values])
        self._add_series(pipe, series, exposures, updated_at)
        if popular is not None:
            pipe.set(self.keys.popular, encode_list(popular, "trending", updated_at))
        if counters:
            pipe.hset(self.keys.counters, mapping=dict(counters))
        if item_metadata:
            pipe.hset(self.keys.items, mapping={item: orjson.dumps(meta) for item, meta in item_metadata.items()})
        if worker_metrics is not None:
            worker_id, metrics = worker_metrics
            report = {**metrics, "worker": worker_id, "model": model, "reported_at": round(updated_at, 3)}
            pipe.set(self.keys.worker(worker_id), orjson.dumps(report), ex=WORKER_REPORT_TTL_S)
            reported = time.time()  # wall time, as the report's TTL counts
            pipe.zadd(self.keys.workers_index, {worker_id: reported})
            pipe.zremrangebyscore(self.keys.workers_index, "-inf", reported - SERIES_TTL_S)
        self._call(pipe.execute)

    def _add_series(self, pipe, series: Mapping[str, float] | None, exposures: Mapping[int, Mapping[str, int]] | None,
                    now: float) -> None:
        if series:
            key = self.keys.series(int(now // 60))
            for name, value in series.items():
                pipe.hincrbyfloat(key, name, value)
            pipe.expire(key, SERIES_TTL_S)
        horizon = now - SERIES_TTL_S
        for bucket, counts in (exposures or {}).items():
            if bucket * EXPOSURE_BUCKETS_S["5m"] < horizon or not counts:
                continue  # older than anything the dashboard shows (a first start reads the whole topic)
            for size, seconds in EXPOSURE_BUCKETS_S.items():
                key = self.keys.exposure(size, bucket * EXPOSURE_BUCKETS_S["5m"] // seconds)
                for item, count in counts.items():
                    pipe.hincrby(key, item, count)
                pipe.expire(key, EXPOSURE_TTL_S[size])

    def add_series(self, series: Mapping[str, float] | None, exposures: Mapping[int, Mapping[str, int]] | None,
                   now: float | None = None) -> None:
        """Add to the per-minute series and the exposure buckets outside a batch (the worker
        read impressions while no events came)."""
        pipe = self.client.pipeline(transaction=False)
        self._add_series(pipe, series, exposures, time.time() if now is None else now)
        self._call(pipe.execute)

    def delete_users(self, user_ids: Sequence[str]) -> None:
        """Remove the users' lists and recent events (forgotten users)."""
        if user_ids:
            self._call(self.client.delete, *[key for u in user_ids for key in (self.keys.user(u), self.keys.history(u))])

    def close(self) -> None:
        self.client.close()

    @staticmethod
    def _call(fn, *args):
        try:
            return fn(*args)
        except RedisError as exc:
            raise StoreUnavailable(f"Redis did not answer: {exc}") from exc
