"""The worker's writes to Redis: each batch's lists, popular list, counters and metrics.

The key layout and the encoding are ``core.keys``'; the API reads what this writes
(``serving.store``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import orjson
import redis
from redis.exceptions import RedisError

from core.errors import StoreUnavailable
from core.keys import KeyLayout, encode_list, is_cluster

Ranking = Sequence[tuple[str, float]]

# SET every KEYS[i] to ARGV[i + 1] with a TTL of ARGV[1] seconds
_SET_ALL_WITH_TTL = """
local ttl = ARGV[1]
for i, key in ipairs(KEYS) do
    redis.call('SET', key, ARGV[i + 1], 'EX', ttl)
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
    """

    def __init__(self, client: redis.Redis, prefix: str = "streamrec", user_list_ttl_s: int = 30 * 24 * 3600):
        self.client = client
        self.keys = KeyLayout(prefix)
        self.user_list_ttl_s = user_list_ttl_s
        self._cluster = is_cluster(client)
        # a script and a transaction must keep to one shard's keys: in a cluster, plain pipelines
        self._set_all = None if self._cluster else client.register_script(_SET_ALL_WITH_TTL)

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
    ) -> None:
        """Write users' lists, the popular list, similar-item lists and counter values in one transaction.

        On a Redis Cluster the keys live on several shards, which no transaction spans: the
        lists go first, and the rest only once every shard took them, so the counters never
        count lists that are not there. (Lists and counters are absolute values: a batch
        written again after a crash leaves the same state.)
        """
        keys = [self.keys.user(user_id) for user_id in lists]
        explanations, seen = explanations or {}, seen or {}
        values = [encode_list(items, model, updated_at, explanations.get(user_id), seen.get(user_id))
                  for user_id, items in lists.items()]
        for item_id, items in (similar or {}).items():
            keys.append(self.keys.similar(item_id))
            values.append(encode_list(items, model, updated_at))
        if self._cluster:
            if keys:
                lists_pipe = self.client.pipeline()
                for key, value in zip(keys, values):
                    lists_pipe.set(key, value, ex=self.user_list_ttl_s)
                self._call(lists_pipe.execute)
            pipe = self.client.pipeline()
        else:
            pipe = self.client.pipeline(transaction=True)
            if keys:
                self._set_all(keys=keys, args=[self.user_list_ttl_s, *values], client=pipe)
        if popular is not None:
            pipe.set(self.keys.popular, encode_list(popular, "trending", updated_at))
        if counters:
            pipe.hset(self.keys.counters, mapping=dict(counters))
        if item_metadata:
            pipe.hset(self.keys.items, mapping={item: orjson.dumps(meta) for item, meta in item_metadata.items()})
        if worker_metrics is not None:
            worker_id, metrics = worker_metrics
            pipe.set(self.keys.worker(worker_id), orjson.dumps(metrics), ex=60)
        self._call(pipe.execute)

    def delete_users(self, user_ids: Sequence[str]) -> None:
        """Remove the users' lists (forgotten users)."""
        if user_ids:
            self._call(self.client.delete, *[self.keys.user(u) for u in user_ids])

    def close(self) -> None:
        self.client.close()

    @staticmethod
    def _call(fn, *args):
        try:
            return fn(*args)
        except RedisError as exc:
            raise StoreUnavailable(f"Redis did not answer: {exc}") from exc
