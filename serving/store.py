"""The Redis store: the one module that knows the key layout and the encoding.

Keys (``P`` is ``Settings.redis_prefix``; ids are percent-encoded, never used raw, so no
id can reach into another key or a pattern):

- ``P:recs:<user>``  a user's top-k list (binary, see below), with a TTL (``user_list_ttl_s``);
- ``P:popular``      the current popular list, for users without history;
- ``P:similar:<item>`` an item's most similar items, same encoding and TTL as user lists;
- ``P:workers:<id>`` each worker's metrics (lag, latency histograms), JSON, expiring a
  minute after the worker's last batch;
- ``P:items``        a hash of item metadata (item id -> JSON: title, category, ...), from
  ``item`` events (hash fields are binary-safe: ids go in as they are);
- ``P:counters``     a hash of the worker's counts per partition (``consumed:<partition>`` ...),
  written as absolute values from the worker's checkpointed state, so a batch applied
  again after a crash never counts twice.

A list is stored in a compact binary form (``encode_list``): about 120 bytes for a top-10
list instead of about 210 as JSON, with the same ids and scores coming back; with Redis's
per-key overhead that keeps 1M users' top-10 lists under 300 MB. Values of the older JSON
forms (``{"m", "t", "i", "s"}`` and ``"i": [[item_id, score], ...]``) are still read: a
binary value starts with a version byte, a JSON one with ``{``. (So an API from before the
binary form cannot read what a newer worker writes: upgrade the APIs first.) The users'
lists of a batch are written by one Lua script inside the batch's transaction: one command
and one reply per batch rather than per user.
"""

from __future__ import annotations

import struct
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from urllib.parse import quote

import numpy as np
import orjson
import redis
from redis.backoff import ExponentialBackoff
from redis.cluster import RedisCluster
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

FORMAT_V1 = 1
"""First byte of a binary list (a JSON one starts with ``{``)."""
ID_SEPARATOR = "\x1f"
"""ASCII unit separator between ids: ids are printable (``stream/schema.py``), so never inside one."""
MODEL_CODES = ("cooc", "trending", "blend", "embeddings", "river-mf", "purchase-rerank", "content", "agent")
"""Model names stored as one byte (index + 1); append only, the codes are in Redis. 0: name inline."""
_MODEL_CODE = {name: n + 1 for n, name in enumerate(MODEL_CODES)}
_HEAD = struct.Struct("<BBBdH")  # version, flags, model code, updated_at, number of items
_SEEN, _EXPLAINED, _FLOAT32 = 1, 2, 4  # flags
_FIXED_SCALE = 10**SCORE_DECIMALS
_FIXED_MAX = 2**31 - 1
_U32 = struct.Struct("<I")
_NUMPY = orjson.OPT_SERIALIZE_NUMPY


def encode_list(
    items: Ranking,
    model: str,
    updated_at: float,
    explained: Sequence[tuple[str, str | None]] | None = None,
    seen: Sequence[bool] | None = None,
) -> bytes:
    """One list in the binary form ``decode_list`` reads.

    Layout: header (version, flags, model code, ``updated_at`` rounded to ms as a float64,
    item count), the model name when it has no code (length byte + UTF-8), the scores rounded
    to ``SCORE_DECIMALS`` decimals as int32 counts of 1e-5 (read back as exactly the floats
    the JSON form held; float32 when one is beyond +-21474.8 or not finite), a bitmap of the
    items the user has seen (only when some are), the strategies and reasons as JSON (only
    when the model explains), then the ids joined by ``ID_SEPARATOR``. A list this form cannot
    hold (an id with the separator, a model name over 255 bytes, over 65535 items) is stored
    as JSON instead.

    >>> decode_list(encode_list([("a", 0.1234567), ("b", 2.0)], "cooc", 1.0))
    StoredList(items=[('a', 0.12346), ('b', 2.0)], model='cooc', updated_at=1.0, explained=None, seen=None)
    """
    ids, scores = zip(*items) if items else ((), ())
    n = len(ids)
    joined = ID_SEPARATOR.join(ids).encode()
    code = _MODEL_CODE.get(model, 0)
    name = b"" if code else model.encode()
    if n > 0xFFFF or len(name) > 255 or joined.count(b"\x1f") != max(n - 1, 0):
        return encode_list_json(items, model, updated_at, explained, seen)
    values = np.array(scores, dtype=np.float64)
    fixed = np.rint(values * _FIXED_SCALE)  # what np.round(values, 5) rounds to, in units of 1e-5
    if not n or np.abs(fixed).max() <= _FIXED_MAX:  # False for NaN too
        flags, packed = 0, fixed.astype("<i4").tobytes()
    else:
        flags, packed = _FLOAT32, np.round(values, SCORE_DECIMALS).astype("<f4").tobytes()
    parts = [b"", bytes((len(name),)) + name if not code else b"", packed]
    if seen is not None and any(seen):
        flags |= _SEEN
        parts.append(np.packbits(np.asarray(seen, dtype=bool), bitorder="little").tobytes())
    if explained is not None:
        flags |= _EXPLAINED
        blob = orjson.dumps([list(x) for x in zip(*explained)] if explained else [[], []])
        parts.append(_U32.pack(len(blob)) + blob)
    parts[0] = _HEAD.pack(FORMAT_V1, flags, code, round(updated_at, 3), n)
    parts.append(joined)
    return b"".join(parts)


def encode_list_json(
    items: Ranking,
    model: str,
    updated_at: float,
    explained: Sequence[tuple[str, str | None]] | None = None,
    seen: Sequence[bool] | None = None,
) -> bytes:
    """The older JSON form (still read; written only for lists the binary form cannot hold).

    >>> encode_list_json([("a", 0.1234567), ("b", 2.0)], "cooc", 1.0)
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


def decode_list(raw: bytes, *, unseen_only: bool = False, limit: int | None = None) -> StoredList:
    """The inverse of ``encode_list``; also reads both older JSON forms.

    ``unseen_only`` leaves out the items the user has seen (``seen`` is then None) and
    ``limit`` keeps the first so many of the rest: a request decodes only the page it serves.

    >>> decode_list(b'{"m":"cooc","t":1.0,"i":[["a",0.5]]}')
    StoredList(items=[('a', 0.5)], model='cooc', updated_at=1.0, explained=None, seen=None)
    """
    if raw[:1] == b"{":
        return _head(_decode_json(raw), unseen_only, limit)
    version, flags, code, updated_at, n = _HEAD.unpack_from(raw)
    if version != FORMAT_V1:
        raise ValueError(f"unknown list format {version}")
    pos = _HEAD.size
    if code:
        model = MODEL_CODES[code - 1]
    else:
        model = raw[pos + 1 : pos + 1 + raw[pos]].decode()
        pos += 1 + raw[pos]
    scores = np.frombuffer(raw, "<f4" if flags & _FLOAT32 else "<i4", n, pos)
    pos += 4 * n
    seen = keep = None
    if flags & _SEEN:
        size = (n + 7) // 8
        bits = np.unpackbits(np.frombuffer(raw, np.uint8, size, pos), count=n, bitorder="little")
        pos += size
        if unseen_only:
            keep = np.flatnonzero(bits == 0)[:limit].tolist()
        else:
            seen = bits[:limit].astype(bool).tolist()
    explained = None
    if flags & _EXPLAINED:
        (size,) = _U32.unpack_from(raw, pos)
        strategies, reasons = orjson.loads(raw[pos + 4 : pos + 4 + size])
        explained = list(zip(strategies, reasons))
        pos += 4 + size
    if keep is None:  # the first ``limit`` items: split no further than needed
        stop = n if limit is None else min(n, limit)
        ids = raw[pos:].decode().split(ID_SEPARATOR, stop)[:stop] if stop else []
        scores = scores[:stop]
        explained = explained[:stop] if explained is not None else None
    else:
        every = raw[pos:].decode().split(ID_SEPARATOR)
        ids = [every[i] for i in keep]
        scores = scores[keep]
        explained = [explained[i] for i in keep] if explained is not None else None
    if flags & _FLOAT32:  # orjson writes a float32 as its shortest decimal: 12345678.0, not 12345678.00000001
        scores = orjson.loads(orjson.dumps(scores, option=_NUMPY))
    else:  # exactly the floats np.round(x, 5) gave the JSON form: rint(x * 1e5) / 1e5
        scores = (scores / _FIXED_SCALE).tolist()
    return StoredList(items=list(zip(ids, scores)), model=model, updated_at=updated_at, explained=explained, seen=seen)


def _head(stored: StoredList, unseen_only: bool, limit: int | None) -> StoredList:
    """``stored`` without the seen items if asked, cut to ``limit`` items (for the JSON forms)."""
    items, explained, seen = stored.items, stored.explained, stored.seen
    if unseen_only and seen:
        kept = [n for n, is_seen in enumerate(seen) if not is_seen]
        items = [items[n] for n in kept]
        explained = [explained[n] for n in kept] if explained is not None else None
    if unseen_only:
        seen = None
    if limit is not None:
        items = items[:limit]
        explained = explained[:limit] if explained is not None else None
        seen = seen[:limit] if seen is not None else None
    return StoredList(items=items, model=stored.model, updated_at=stored.updated_at, explained=explained, seen=seen)


def _decode_json(raw: bytes) -> StoredList:
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


CLUSTER_SCHEMES = {"redis+cluster": "redis", "rediss+cluster": "rediss"}
_CLUSTER_FOREVER = 1_000_000  # retries: about 23 days at the 2 s backoff cap


def make_client(url: str, *, retries: int, socket_timeout_s: float = 2.0) -> redis.Redis | RedisCluster:
    """A client that retries connection errors with exponential backoff (-1: retry forever).

    ``redis+cluster://host:port`` (``rediss+cluster://`` with TLS) names any node of a Redis
    Cluster: the client learns the others and routes each key to its shard.
    """
    scheme, sep, rest = url.partition("://")
    cluster = bool(sep) and scheme in CLUSTER_SCHEMES
    if cluster and retries < 0:  # the cluster client counts attempts down and knows no "forever"
        retries = _CLUSTER_FOREVER
    options = dict(
        socket_timeout=socket_timeout_s,
        socket_connect_timeout=socket_timeout_s,
        retry=Retry(ExponentialBackoff(cap=2.0, base=0.05), retries),
    )
    if cluster:
        return RedisCluster.from_url(f"{CLUSTER_SCHEMES[scheme]}://{rest}", **options)
    return redis.Redis.from_url(
        url, retry_on_error=[RedisConnectionError, RedisTimeoutError], health_check_interval=30, **options
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
        self._cluster = isinstance(client, RedisCluster)
        # a script and a transaction must keep to one shard's keys: in a cluster, plain pipelines
        self._set_all = None if self._cluster else client.register_script(_SET_ALL_WITH_TTL)

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
        """Write users' lists, the popular list, similar-item lists and counter values in one transaction.

        On a Redis Cluster the keys live on several shards, which no transaction spans: the
        lists go first, and the rest only once every shard took them, so the counters never
        count lists that are not there. (Lists and counters are absolute values: a batch
        written again after a crash leaves the same state.)
        """
        keys = [self.user_key(user_id) for user_id in lists]
        explanations, seen = explanations or {}, seen or {}
        values = [encode_list(items, model, updated_at, explanations.get(user_id), seen.get(user_id))
                  for user_id, items in lists.items()]
        for item_id, items in (similar or {}).items():
            keys.append(self.similar_key(item_id))
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
        mget = self.client.mget_nonatomic if self._cluster else self.client.mget  # keys on several shards
        values = self._call(mget, keys) if keys else []
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

    def user_list(self, user_id: str, *, unseen_only: bool = False, limit: int | None = None) -> StoredList | None:
        """The user's list (see ``decode_list`` for ``unseen_only`` and ``limit``); None if there is none."""
        raw = self._call(self.client.get, self.user_key(user_id))
        return decode_list(raw, unseen_only=unseen_only, limit=limit) if raw else None

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

