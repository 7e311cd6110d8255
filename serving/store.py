"""The Redis store: the one module that knows the key layout and the encoding.

Keys (``P`` is ``Settings.redis_prefix``; ids are percent-encoded, never used raw, so no
id can reach into another key or a pattern):

- ``P:recs:<user>``  a user's top-k list, JSON, with a TTL (``user_list_ttl_s``);
- ``P:popular``      the current popular list, for users without history;
- ``P:similar:<item>`` an item's most similar items, same encoding and TTL as user lists;
- ``P:workers:<id>`` each worker's metrics (lag, latency histograms), JSON, expiring a
  minute after the worker's last batch;
- ``P:items``        a hash of item metadata (item id -> JSON: title, category, ...), from
  ``item`` events (hash fields are binary-safe: ids go in as they are);
- ``P:counters``     a hash of the worker's counts per partition (``consumed:<partition>`` ...),
  written as absolute values from the worker's checkpointed state, so a batch applied
  again after a crash never counts twice.

A list is stored as ``{"m": model, "t": updated_at, "i": [item_id, ...], "s": [score, ...]}``
(ids and scores in two parallel arrays: one numpy rounding per list instead of one Python
call per item; the older ``"i": [[item_id, score], ...]`` form is still read). The users'
lists of a batch are written by one Lua script inside the batch's transaction: one command
and one reply per batch rather than per user.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from urllib.parse import quote

import numpy as np
import orjson
import redis
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry

from streamrec.errors import StoreUnavailable

Ranking = Sequence[tuple[str, float]]


@dataclass(frozen=True, slots=True)
class StoredList:
    items: list[tuple[str, float]]
    model: str
    updated_at: float
    explained: list[tuple[str, str | None]] | None = None
    """Per item: the strategy that chose it and a reason in words (when the model says)."""
    seen: list[bool] | None = None
    """Per item: whether the user has already interacted with it (None: nothing is)."""


SCORE_DECIMALS = 5


def encode_list(
    items: Ranking,
    model: str,
    updated_at: float,
    explained: Sequence[tuple[str, str | None]] | None = None,
    seen: Sequence[bool] | None = None,
) -> bytes:
    """One list as JSON; scores rounded to ``SCORE_DECIMALS`` decimals; strategies (``x``)
    and reasons (``r``) only when the model explains its lists; the positions of items the
    user has seen (``u``) only when there are some.

    >>> encode_list([("a", 0.1234567), ("b", 2.0)], "cooc", 1.0)
    b'{"m":"cooc","t":1.0,"i":["a","b"],"s":[0.12346,2.0]}'
    """
    ids, scores = zip(*items) if items else ((), ())
    scores = np.round(np.array(scores, dtype=np.float64), SCORE_DECIMALS)
    obj = {"m": model, "t": round(updated_at, 3), "i": ids, "s": scores}
    if explained is not None:
        obj["x"], obj["r"] = zip(*explained) if explained else ((), ())
    if seen is not None and any(seen):
        obj["u"] = [n for n, is_seen in enumerate(seen) if is_seen]
    return orjson.dumps(obj, option=_NUMPY)


_NUMPY = orjson.OPT_SERIALIZE_NUMPY


def decode_list(raw: bytes) -> StoredList:
    """The inverse of ``encode_list`` (also reads the older ``[[item_id, score], ...]`` form).

    >>> decode_list(encode_list([("a", 0.5)], "cooc", 1.0))
    StoredList(items=[('a', 0.5)], model='cooc', updated_at=1.0, explained=None, seen=None)
    """
    obj = orjson.loads(raw)
    scores = obj.get("s")
    items = list(zip(obj["i"], scores)) if scores is not None else [(i, s) for i, s in obj["i"]]
    explained = list(zip(obj["x"], obj["r"])) if "x" in obj else None
    seen = None
    if "u" in obj:
        seen = [False] * len(items)
        for n in obj["u"]:
            seen[n] = True
    return StoredList(items=items, model=obj["m"], updated_at=obj["t"], explained=explained, seen=seen)


# SET every KEYS[i] to ARGV[i + 1] with a TTL of ARGV[1] seconds
_SET_ALL_WITH_TTL = """
local ttl = ARGV[1]
for i, key in ipairs(KEYS) do
    redis.call('SET', key, ARGV[i + 1], 'EX', ttl)
end
return #KEYS
"""


def make_client(url: str, *, retries: int, socket_timeout_s: float = 2.0) -> redis.Redis:
    """A client that retries connection errors with exponential backoff (-1: retry forever)."""
    return redis.Redis.from_url(
        url,
        socket_timeout=socket_timeout_s,
        socket_connect_timeout=socket_timeout_s,
        retry=Retry(ExponentialBackoff(cap=2.0, base=0.05), retries),
        retry_on_error=[RedisConnectionError, RedisTimeoutError],
        health_check_interval=30,
    )


class RecommendationStore:
    """Reads and writes live recommendation lists in Redis.

    Parameters
    ----------
    client
        A ``redis.Redis`` (see ``make_client``).
    prefix
        Namespace of every key.
    user_list_ttl_s
        Time to live of each user's list: lists of users gone quiet expire on their own.
    cooldown_s
        After Redis failed to answer, reads fail at once (``StoreUnavailable``) for this
        long instead of waiting on Redis again: the API's event loop must not stall on a
        dead store. 0 (the default) tries Redis every time.
    """

    def __init__(self, client: redis.Redis, prefix: str = "streamrec", user_list_ttl_s: int = 30 * 24 * 3600,
                 cooldown_s: float = 0.0):
        self.client = client
        self.prefix = prefix
        self.user_list_ttl_s = user_list_ttl_s
        self.cooldown_s = cooldown_s
        self._unavailable_until = float("-inf")
        self._popular_key = f"{prefix}:popular"
        self._counters_key = f"{prefix}:counters"
        self._items_key = f"{prefix}:items"
        self._set_all = client.register_script(_SET_ALL_WITH_TTL)

    def user_key(self, user_id: str) -> str:
        return f"{self.prefix}:recs:{quote(user_id, safe='')}"

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
        """Write users' lists, the popular list, similar-item lists and counter values in one transaction."""
        pipe = self.client.pipeline(transaction=True)
        keys = [self.user_key(user_id) for user_id in lists]
        explanations, seen = explanations or {}, seen or {}
        values = [encode_list(items, model, updated_at, explanations.get(user_id), seen.get(user_id))
                  for user_id, items in lists.items()]
        for item_id, items in (similar or {}).items():
            keys.append(self.similar_key(item_id))
            values.append(encode_list(items, model, updated_at))
        if keys:
            self._set_all(keys=keys, args=[self.user_list_ttl_s, *values], client=pipe)
        if popular is not None:
            pipe.set(self._popular_key, encode_list(popular, "trending", updated_at))
        if counters:
            pipe.hset(self._counters_key, mapping=dict(counters))
        if item_metadata:
            pipe.hset(self._items_key, mapping={item: orjson.dumps(meta) for item, meta in item_metadata.items()})
        if worker_metrics is not None:
            worker_id, metrics = worker_metrics
            pipe.set(f"{self.prefix}:workers:{quote(worker_id, safe='')}", orjson.dumps(metrics), ex=60)
        self._call(pipe.execute)

    def workers_metrics(self) -> list[dict]:
        """The metrics every live worker last reported."""
        keys = list(self._call(self.client.scan_iter, f"{self.prefix}:workers:*"))
        values = self._call(self.client.mget, keys) if keys else []
        return [orjson.loads(v) for v in values if v]

    def similar_key(self, item_id: str) -> str:
        return f"{self.prefix}:similar:{quote(item_id, safe='')}"

    def similar_list(self, item_id: str) -> StoredList | None:
        raw = self._call(self.client.get, self.similar_key(item_id))
        return decode_list(raw) if raw else None

    def item_metadata(self, item_ids: Sequence[str]) -> list[dict | None]:
        """Metadata of each item (title, category, ...), None where none was given."""
        if not item_ids:
            return []
        raw = self._call(self.client.hmget, self._items_key, list(item_ids))
        return [orjson.loads(v) if v else None for v in raw]

    def delete_user(self, user_id: str) -> None:
        """Remove the user's list: the next read answers as for a new user."""
        self._call(self.client.delete, self.user_key(user_id))

    def user_list(self, user_id: str) -> StoredList | None:
        raw = self._call(self.client.get, self.user_key(user_id))
        return decode_list(raw) if raw else None

    def popular_list(self) -> StoredList | None:
        raw = self._call(self.client.get, self._popular_key)
        return decode_list(raw) if raw else None

    def counters(self) -> dict[str, int]:
        """Counts summed over partitions: ``{"consumed": ..., "applied": ..., ...}``."""
        totals: dict[str, int] = {}
        for field, value in self._call(self.client.hgetall, self._counters_key).items():
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

