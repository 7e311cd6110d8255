"""The Redis key layout and the list encoding: what the worker writes and the API reads.

The one module that knows them (``stream.sink`` writes, ``serving.store`` reads).

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
  again after a crash never counts twice;
- ``P:workers``      a sorted set of worker ids by the time of their last report (the
  dashboard and ``/metrics`` find the live workers without scanning the keys);
- ``P:history:<user>`` the user's recent events for the dashboard: a list, newest batch first,
  of JSON arrays ``[[item, type, ts], ...]``, cut to ``user_history_events`` batches, with
  the list's TTL;
- ``P:series:<minute>`` a hash per minute (epoch minutes) of what the workers did in it
  (``consumed``, ``applied``, ``online_hits``, ``shown:<strategy>``, ``fresh:<bucket>`` ...,
  see ``core.metrics.increments``), expiring after ``SERIES_TTL_S``;
- ``P:exposure:5m:<n>`` and ``P:exposure:1h:<n>`` hashes of impressions per item, in
  5-minute and hourly buckets of serve time (epoch seconds // 300 or // 3600), expiring
  after 2 hours and ``SERIES_TTL_S``.

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

import re
import struct
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from itertools import repeat
from urllib.parse import quote

import numpy as np
import orjson
import redis
from redis.backoff import ExponentialBackoff
from redis.cluster import RedisCluster
from redis.connection import (
    HIREDIS_AVAILABLE,
    HiredisRespSerializer,
    PythonRespSerializer,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry

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
_HEAD_ARRAY = np.dtype([("version", "u1"), ("flags", "u1"), ("code", "u1"), ("updated_at", "<f8"), ("n", "<u2")])
assert _HEAD_ARRAY.itemsize == _HEAD.size  # packed: one array's bytes are the headers one after the other
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


class ListBatch(Mapping[str, list[tuple[str, float]]]):
    """Several users' lists of one batch, held as arrays: a mapping of user id to
    ``(item id, score)`` pairs that ``encode_lists`` encodes without per-item Python.

    Parameters
    ----------
    users
        The users, in order.
    ids
        Every user's item ids, one after the other (the first user's ``lengths[0]`` ids first).
    lengths
        Items per user.
    scores
        ``(len(users), width)`` float64, a user's first ``lengths[j]`` cells hold its scores.
    seen
        ``(len(users), width)`` bool, the items the user has seen (``None``: none is).

    >>> batch = ListBatch(["u", "v"], ["a", "b", "c"], [2, 1], np.array([[0.5, 0.25], [1.0, -np.inf]]),
    ...                   np.array([[False, True], [False, False]]))
    >>> batch["u"], batch.flags["v"], "w" in batch, len(batch)
    ([('a', 0.5), ('b', 0.25)], [False], False, 2)
    """

    __slots__ = ("users", "ids", "lengths", "scores", "seen", "_starts", "_at")

    def __init__(self, users: Sequence[str], ids: Sequence[str], lengths: Sequence[int], scores: np.ndarray,
                 seen: np.ndarray | None = None):
        self.users = list(users)
        self.ids = ids
        self.lengths = list(lengths)
        self.scores = scores
        self.seen = seen
        self._starts: list[int] | None = None
        self._at: dict[str, int] | None = None

    @classmethod
    def of_rankings(cls, rankings: Mapping[str, Ranking], seen: Mapping[str, Sequence[bool]] | None = None
                    ) -> ListBatch:
        """From plain lists (and per-item seen flags, any user left out seeing none)."""
        users = list(rankings)
        seen = seen or {}
        lengths, ids, scores, marks = [], [], [], []
        for user_id in users:
            ranking = rankings[user_id]
            lengths.append(len(ranking))
            if ranking:
                user_ids, user_scores = zip(*ranking)
                ids += user_ids
                scores += user_scores
                flags = seen.get(user_id)
                marks += flags if flags else (False,) * len(ranking)
        width = max(lengths, default=0)
        cells = np.arange(width) < np.array(lengths, dtype=np.int64)[:, None]
        table = np.full((len(users), width), -np.inf)
        table[cells] = scores
        seen_table = None
        if any(marks):
            seen_table = np.zeros((len(users), width), dtype=bool)
            seen_table[cells] = marks
        return cls(users, ids, lengths, table, seen_table)

    def _index(self) -> dict[str, int]:
        if self._at is None:
            self._at = {user_id: j for j, user_id in enumerate(self.users)}
            self._starts = np.concatenate([[0], np.cumsum(self.lengths, dtype=np.int64)]).tolist()
        return self._at

    def items_of(self, user_id: str) -> list[str]:
        """The user's item ids, best first."""
        j = self._index()[user_id]
        return list(self.ids[self._starts[j] : self._starts[j + 1]])

    def __getitem__(self, user_id: str) -> list[tuple[str, float]]:
        j = self._index()[user_id]
        return list(zip(self.items_of(user_id), self.scores[j, : self.lengths[j]].tolist()))

    def __contains__(self, user_id: object) -> bool:
        return user_id in self._index()

    def __iter__(self) -> Iterator[str]:
        return iter(self.users)

    def __len__(self) -> int:
        return len(self.users)

    @property
    def flags(self) -> dict[str, list[bool]]:
        """User id -> per item, whether the user has seen it."""
        if self.seen is None:
            return {user_id: [False] * n for user_id, n in zip(self.users, self.lengths)}
        return {user_id: row[:n] for user_id, row, n in zip(self.users, self.seen.tolist(), self.lengths)}


def encode_lists(
    batch: ListBatch,
    model: str,
    updated_at: float,
    explained: Mapping[str, Sequence[tuple[str, str | None]]] | None = None,
) -> list[bytes]:
    """``encode_list`` of every user's list in ``batch`` (in its order), byte for byte, with
    the scores rounded, range-checked and packed for all users at once. ``explained``: the
    users' explanations (a user left out has none), as ``encode_list`` takes them.

    >>> batch = ListBatch(["u"], ["a", "b"], [2], np.array([[0.1234567, 2.0]]))
    >>> encode_lists(batch, "cooc", 1.0) == [encode_list([("a", 0.1234567), ("b", 2.0)], "cooc", 1.0)]
    True
    """
    users, lengths, n_users = batch.users, batch.lengths, len(batch.users)
    code = _MODEL_CODE.get(model, 0)
    name = b"" if code else model.encode()
    explained = explained or {}
    width = batch.scores.shape[1] if batch.scores.ndim == 2 else 0
    if not n_users or len(name) > 255 or width > 0xFFFF:
        return [encode_list(batch[u], model, updated_at, explained.get(u), _flags_of(batch, j))
                for j, u in enumerate(users)]
    counts = np.asarray(lengths, dtype=np.int64)
    valid = np.arange(width) < counts[:, None]
    with np.errstate(invalid="ignore", over="ignore"):
        fixed = np.rint(batch.scores * _FIXED_SCALE)  # as encode_list: units of 1e-5
        magnitude = np.where(valid, np.abs(fixed), 0.0)
        fits = magnitude.max(axis=1, initial=0.0) <= _FIXED_MAX  # False for NaN too
        packed = np.where(valid, fixed, 0.0).astype("<i4")
    flags = np.zeros(n_users, dtype=np.uint8)
    bit_sizes, bits, bits_width = np.zeros(n_users, dtype=np.int64), b"", 0
    if batch.seen is not None:
        marks = batch.seen & valid
        seen_any = marks.any(axis=1)
        flags[seen_any] |= _SEEN
        bit_sizes = np.where(seen_any, (counts + 7) // 8, 0)  # a row's first (n + 7) // 8 bytes: its bitmap
        bitmaps = np.packbits(marks, axis=1, bitorder="little")
        bits_width, bits = bitmaps.shape[1], bitmaps.tobytes()
    why = [b""] * n_users
    if explained:
        before, blob = None, b""
        for j, user_id in enumerate(users):
            reasons = explained.get(user_id)
            if reasons is not None:
                flags[j] |= _EXPLAINED
                if reasons != before:  # users given the same reasons (a popularity list) share one blob
                    text = orjson.dumps(tuple(zip(*reasons)) if reasons else ((), ()))  # tuples: JSON arrays
                    before, blob = reasons, _U32.pack(len(text)) + text
                why[j] = blob
    heads = np.zeros(n_users, dtype=_HEAD_ARRAY)
    heads["version"], heads["flags"], heads["code"], heads["updated_at"], heads["n"] = (
        FORMAT_V1, flags, code, round(updated_at, 3), counts)
    # every user's ids are one slice of all ids joined (the separator between two users' left out)
    ids = batch.ids
    joined = ID_SEPARATOR.join(ids).encode()
    separators = np.flatnonzero(np.frombuffer(joined, dtype=np.uint8) == ord(ID_SEPARATOR))
    firsts = np.zeros(n_users + 1, dtype=np.int64)  # each user's first id, in ``ids``
    np.cumsum(counts, out=firsts[1:])
    plain = fits
    if len(separators) != max(len(ids) - 1, 0):  # an id holds the separator: those lists go as JSON
        sizes = np.fromiter(map(len, map(str.encode, ids)), dtype=np.int64, count=len(ids))
        separators = np.cumsum(sizes + 1)[:-1] - 1
        holds = np.fromiter((ID_SEPARATOR in item for item in ids), dtype=np.int64, count=len(ids))
        within = np.concatenate([[0], np.cumsum(holds)])
        plain = fits & (within[firsts[1:]] == within[firsts[:-1]])
    id_at = np.concatenate([[0], separators + 1, [len(joined) + 1]])  # where each id starts (and an end)
    id_starts = id_at[firsts[:-1]]
    id_stops = np.maximum(id_at[firsts[1:]] - 1, id_starts)
    head_at = np.arange(n_users + 1) * _HEAD.size
    score_at = np.arange(n_users) * (4 * width)
    bit_at = np.arange(n_users) * bits_width
    out = list(map(b"".join, zip(
        _slices(heads.tobytes(), head_at[:-1], head_at[1:]),
        repeat(b"" if code else bytes((len(name),)) + name),
        _slices(packed.tobytes(), score_at, score_at + 4 * counts),
        _slices(bits, bit_at, bit_at + bit_sizes),
        why,
        _slices(joined, id_starts, id_stops),
    )))
    for j in np.flatnonzero(~plain).tolist():  # float32 scores, or the JSON form
        user_id = users[j]
        out[j] = encode_list(batch[user_id], model, updated_at, explained.get(user_id), _flags_of(batch, j))
    return out


def _slices(data: bytes, starts: np.ndarray, stops: np.ndarray) -> Iterator[bytes]:
    """``data[start:stop]`` for each pair, without a Python loop."""
    return map(data.__getitem__, map(slice, starts.tolist(), stops.tolist()))


def _flags_of(batch: ListBatch, j: int) -> list[bool] | None:
    return None if batch.seen is None else batch.seen[j, : batch.lengths[j]].tolist()


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
    client = redis.Redis.from_url(
        url, retry_on_error=[RedisConnectionError, RedisTimeoutError], health_check_interval=30, **options
    )
    encoder = client.get_encoder()
    if encoder.encoding.lower().replace("-", "") == "utf8" and encoder.encoding_errors == "strict":
        # read by every connection the pool makes from now on (it makes them on first use)
        client.connection_pool.connection_kwargs["command_packer"] = PlainArgsPacker(encoder)
    return client


_PLAIN_ARGS = frozenset((bytes, str, int))


class PlainArgsPacker:
    r"""redis-py's command packer, with a shortcut for a command whose arguments are all
    ``bytes``, ``str`` or ``int`` (exact types) and whose name is one word: packed in
    Python as redis-py's encoder would (UTF-8, ints in decimal), one ``bytes.join`` of the
    pieces. The sink's one EVALSHA per batch carries ~8,000 arguments and ~4 MB: redis-py
    calls its encoder per argument and hiredis's ``pack_command`` copies it slowly (about 3x
    this join's time). Anything else goes through redis-py's own packer.

    >>> import redis
    >>> packer = PlainArgsPacker(redis.Redis().get_encoder())
    >>> packer.pack("SET", "k\u00e9", b"v", 7)
    [b'*4\r\n$3\r\nSET\r\n$3\r\nk\xc3\xa9\r\n$1\r\nv\r\n$1\r\n7\r\n']
    >>> packer.pack("SET", "k", 1.5) == packer.fallback.pack("SET", "k", 1.5)  # a float: redis-py's way
    True
    """

    def __init__(self, encoder) -> None:
        in_python = PythonRespSerializer(6000, encoder.encode)  # redis-py's buffer cutoff
        self.fallback = HiredisRespSerializer(in_python.pack, encoder.encode) if HIREDIS_AVAILABLE else in_python

    def pack(self, *args) -> list[bytes]:
        if not (_PLAIN_ARGS.issuperset(map(type, args)) and len(args[0].split()) == 1):
            return self.fallback.pack(*args)
        if not _BYTES.issuperset(map(type, args)):  # a str that is not UTF-8 raises, as redis-py
            args = [arg if type(arg) is bytes else arg.encode() if type(arg) is str else b"%d" % arg for arg in args]
        sizes = list(map(len, args))
        if max(sizes) < len(_SIZE_HEADS):
            heads = map(_SIZE_HEADS.__getitem__, sizes)
        else:
            heads = [b"\r\n$%d\r\n" % size for size in sizes]
        # "*<n>", then "\r\n$<size>\r\n" before each argument, and "\r\n" after the last
        pieces = [b"\r\n"] * (2 * len(args) + 2)
        pieces[0] = b"*%d" % len(args)
        pieces[1:-1:2] = heads
        pieces[2:-1:2] = args
        return [b"".join(pieces)]


_BYTES = frozenset((bytes,))
_SIZE_HEADS = [b"\r\n$%d\r\n" % size for size in range(4096)]  # the common sizes' heads, made once


SERIES_TTL_S = 25 * 3600
"""Per-minute series and hourly exposure live a day (and an hour to spare)."""
EXPOSURE_BUCKETS_S = {"5m": 300, "1h": 3600}
EXPOSURE_TTL_S = {"5m": 2 * 3600, "1h": SERIES_TTL_S}
WORKER_REPORT_TTL_S = 60
"""A worker that has not reported for this long is not live."""


class KeyLayout:
    """The keys under one prefix (see the module docstring); ids are percent-encoded.

    >>> keys = KeyLayout("p")
    >>> keys.user("a b"), keys.similar("x/y"), keys.popular, keys.worker("w1")
    ('p:recs:a%20b', 'p:similar:x%2Fy', 'p:popular', 'p:workers:w1')
    """

    def __init__(self, prefix: str):
        self.prefix = prefix
        self.popular = f"{prefix}:popular"
        self.counters = f"{prefix}:counters"
        self.items = f"{prefix}:items"
        self.workers_pattern = f"{prefix}:workers:*"
        self.workers_index = f"{prefix}:workers"
        self._user_head, self._history_head = f"{prefix}:recs:", f"{prefix}:history:"
        self._similar_head = f"{prefix}:similar:"

    def user(self, user_id: str) -> str:
        return self._user_head + _quoted(user_id)

    def similar(self, item_id: str) -> str:
        return self._similar_head + _quoted(item_id)

    def worker(self, worker_id: str) -> str:
        return f"{self.prefix}:workers:{quote(worker_id, safe='')}"

    def history(self, user_id: str) -> str:
        return self._history_head + _quoted(user_id)

    def users(self, user_ids: Sequence[str]) -> list[str]:
        """``user`` of each id (one check of all ids for the common case: none needs quoting).

        >>> KeyLayout("p").users(["a", "b c"])
        ['p:recs:a', 'p:recs:b%20c']
        """
        return _keyed(self._user_head, user_ids)

    def histories(self, user_ids: Sequence[str]) -> list[str]:
        """``history`` of each id."""
        return _keyed(self._history_head, user_ids)

    def similars(self, item_ids: Sequence[str]) -> list[str]:
        """``similar`` of each id.

        >>> KeyLayout("p").similars(["a", "x/y"])
        ['p:similar:a', 'p:similar:x%2Fy']
        """
        return _keyed(self._similar_head, item_ids)

    def series(self, minute: int) -> str:
        return f"{self.prefix}:series:{minute}"

    def exposure(self, size: str, bucket: int) -> str:
        return f"{self.prefix}:exposure:{size}:{bucket}"


_UNRESERVED = re.compile(r"[A-Za-z0-9_.~-]*")


def _quoted(key: str) -> str:
    """``quote(key, safe="")``, without its work for the common id that needs no quoting.

    >>> _quoted("u-1_a.b~"), _quoted("a b/ü")
    ('u-1_a.b~', 'a%20b%2F%C3%BC')
    """
    return key if _UNRESERVED.fullmatch(key) else quote(key, safe="")


def _keyed(head: str, ids: Sequence[str]) -> list[str]:
    """``head + _quoted(id)`` of each id."""
    if _UNRESERVED.fullmatch("".join(ids)):
        return list(map(head.__add__, ids))
    return [head + _quoted(key) for key in ids]


def is_cluster(client) -> bool:
    """Whether ``client`` talks to a Redis Cluster (no transaction or script spans its shards)."""
    return isinstance(client, RedisCluster)
