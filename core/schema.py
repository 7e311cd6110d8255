"""The event schema: what a producer may publish, and how raw bytes become an ``Event``.

Validation is strict and every rejection carries a reason (fields the schema does not
name are ignored, so producers can add their own), because a rejected event is
not dropped: the worker sends it to the dead-letter topic with that reason.

>>> e = parse_event(b'{"user_id": "u1", "item_id": "i9", "type": "click", "ts": 1700000000}')
>>> (e.user_id, e.item_id, e.type, e.ts)
('u1', 'i9', 'click', 1700000000.0)
>>> parse_event(b'{"user_id": "u1", "type": "click"}')
Traceback (most recent call last):
...
core.errors.InvalidEvent: missing field 'item_id'
"""

from __future__ import annotations

import math
import time
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from operator import attrgetter
from typing import Annotated, Any, Literal

import msgspec
import orjson
from msgspec import Meta
from msgspec.structs import astuple

from core.errors import InvalidEvent

INTERACTION_TYPES = ("view", "click", "add_to_cart", "purchase")
ITEM_TYPE = "item"
"""An ``item`` event carries an item's metadata in ``context`` (title, description, category) and no user."""
EVENT_TYPES = (*INTERACTION_TYPES, ITEM_TYPE)
MAX_ID_CHARS = 256
MAX_EVENT_BYTES = 64 * 1024
MAX_FUTURE_S = 24 * 3600
_Id = Annotated[str, Meta(min_length=1, max_length=MAX_ID_CHARS)] | int
"""An id: 1-256 printable characters; integers are accepted and turned into strings."""


@dataclass(slots=True, frozen=True)
class Event:
    """One user-item interaction; the unit every model learns from."""

    user_id: str
    item_id: str
    type: str
    ts: float
    event_id: str = ""
    value: float | None = None
    context: dict[str, Any] | None = field(default=None, compare=False)

    def to_json(self) -> bytes:
        return orjson.dumps({k: v for k, v in asdict(self).items() if v is not None})


def new_event_id() -> str:
    return uuid.uuid4().hex


def _check_id(name: str, value: str | int) -> str:
    """An id as a string: ``EventIn`` checked its type and length; ints become strings."""
    if type(value) is str and value.isprintable():
        return value  # the common case, checked in one go
    value = str(value)
    if len(value) > MAX_ID_CHARS:
        raise InvalidEvent(f"field '{name}' is longer than {MAX_ID_CHARS} characters")
    if not value.isprintable():
        raise InvalidEvent(f"field '{name}' contains control characters")
    return value


def _check_ts(value: float | str, now: float) -> float:
    if type(value) is float and 0.0 <= value <= now + MAX_FUTURE_S:
        return value  # the common case, checked in one go (NaN fails it)
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise InvalidEvent(f"field 'ts' is not epoch seconds or ISO-8601: {value[:40]!r}") from None
        if parsed.tzinfo is None:
            raise InvalidEvent("field 'ts' has no time zone")
        ts = parsed.timestamp()
    else:
        ts = float(value)
    if not math.isfinite(ts):
        raise InvalidEvent("field 'ts' is not finite")
    if ts < 0:
        raise InvalidEvent("field 'ts' is before 1970")
    if ts > now + MAX_FUTURE_S:
        raise InvalidEvent("field 'ts' is more than a day in the future")
    return ts


class EventIn(msgspec.Struct, frozen=True):
    """An event as producers publish it: one JSON object per Kafka message, keyed by ``user_id``.

    The one definition of the wire format: the worker, ``POST /events`` (and its OpenAPI
    document) and ``streamrec validate`` all check events against it (``parse_event``).
    Fields it does not name are ignored, so producers can add their own.
    """

    item_id: _Id
    type: Literal["view", "click", "add_to_cart", "purchase", "item"]
    user_id: Annotated[str, Meta(max_length=MAX_ID_CHARS)] | int | None = None
    """Required but for ``item`` events, which carry none (or an empty one)."""
    ts: Annotated[float | str, Meta(description="epoch seconds, or ISO-8601 with a time zone; "
                                    "default: the broker timestamp")] | None = None
    event_id: _Id | None = None
    value: Annotated[float, Meta(description="price, rating")] | None = None
    context: Annotated[dict[str, Any], Meta(description="recomm_id credits a click to the answer that "
                                            "showed the item; an item event's metadata")] | None = None


def event_json_schema() -> dict[str, Any]:
    """``EventIn`` as a JSON Schema (the API's OpenAPI document shows it for ``POST /events``).

    >>> schema = event_json_schema()
    >>> schema["required"], schema["properties"]["type"]["enum"][:2]
    (['item_id', 'type'], ['add_to_cart', 'click'])
    """
    return msgspec.json.schema(EventIn)["$defs"]["EventIn"]


_EXPECTED = {"user_id": "a string", "item_id": "a string", "event_id": "a string", "value": "a number",
             "ts": "a number or an ISO-8601 string", "context": "an object"}


def _reason(error: msgspec.ValidationError, obj: dict) -> str:
    """``msgspec``'s message about ``obj``, in the words the dead-letter topic has always used."""
    message = str(error)
    if message.startswith("Object missing required field"):
        return f"missing field '{message.split('`')[1]}'"
    text, _, at = message.partition(" - at `$.")
    name = at.rstrip("`").split(".")[0].split("[")[0]
    if not name:
        return f"event must be a JSON object, got {text.rpartition('got ')[2].strip('`')}"
    if name == "type":
        return f"unknown event type {str(obj.get('type'))[:40]!r}; expected one of {', '.join(EVENT_TYPES)}"
    if "length >=" in text:
        return f"field '{name}' is empty"
    if "length <=" in text:
        return f"field '{name}' is longer than {MAX_ID_CHARS} characters"
    got = text.rpartition("got ")[2].strip("`") if "got " in text else "an invalid value"
    return f"field '{name}' must be {_EXPECTED.get(name, 'valid')}, got {got}"


def validate_event(
    obj: Any, *, default_ts: float | None = None, default_event_id: str | None = None, now: float | None = None
) -> Event:
    """Build an ``Event`` from a decoded JSON object, or raise ``InvalidEvent``.

    ``default_ts`` stands in for a missing ``ts`` (the worker passes the broker timestamp);
    ``default_event_id`` for a missing ``event_id`` (the worker passes one derived from the
    record's topic, partition and offset, so a re-read record gets the same id).
    """
    try:
        wire = msgspec.convert(obj, EventIn)
    except msgspec.ValidationError as exc:
        raise InvalidEvent(_reason(exc, obj if isinstance(obj, dict) else {})) from None
    return _event_of(wire, default_ts, default_event_id, time.time() if now is None else now)


def _event_of(wire: EventIn, default_ts: float | None, default_event_id: str | None, now: float) -> Event:
    """The ``Event`` of a converted ``EventIn``, or ``InvalidEvent`` for what its types do not say."""
    type_, user_id, item_id, ts = wire.type, wire.user_id, wire.item_id, wire.ts
    is_item = type_ == ITEM_TYPE
    if not is_item and (user_id is None or user_id == ""):
        raise InvalidEvent("missing field 'user_id'" if user_id is None else "field 'user_id' is empty")
    ts = (now if default_ts is None else default_ts) if ts is None else _check_ts(ts, now)
    value = wire.value
    if value is not None and not math.isfinite(value):
        raise InvalidEvent("field 'value' is not finite")
    event_id = wire.event_id
    if event_id is None:
        event_id = default_event_id or new_event_id()
    else:
        event_id = _check_id("event_id", event_id)
    user_id = "" if is_item and not user_id else _check_id("user_id", user_id)
    return Event(user_id, _check_id("item_id", item_id), type_, ts, event_id, value, wire.context)


def _reject_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        dup = next(k for k, _ in pairs if k in seen or seen.add(k))
        raise InvalidEvent(f"duplicate key {dup!r}")
    return obj


def _reject_constant(name: str) -> Any:
    raise InvalidEvent(f"{name} is not valid JSON")


def decode_json(raw: bytes, *, max_bytes: int = MAX_EVENT_BYTES) -> Any:
    """Decode one JSON document, rejecting oversize payloads, NaN/Infinity and duplicate keys."""
    if len(raw) > max_bytes:
        raise InvalidEvent(f"event is {len(raw)} bytes, over the {max_bytes}-byte limit")
    try:
        obj = _decode(raw)  # NaN and Infinity are not JSON: rejected here
    except msgspec.DecodeError as exc:
        raise InvalidEvent(f"not valid JSON: {exc}") from None
    if isinstance(obj, dict) and raw.count(b":") > len(obj) and _maybe_duplicate_keys(raw, obj):
        import json

        json.loads(raw, object_pairs_hook=_reject_duplicate_keys, parse_constant=_reject_constant)
    return obj


_decode = msgspec.json.Decoder().decode


def _maybe_duplicate_keys(raw: bytes, obj: dict) -> bool:
    """Whether ``raw`` may hold a key that orjson silently collapsed into ``obj``.

    Every ``:`` in a JSON text either follows a key or sits inside a string, so without
    ``\\u`` escapes (which could spell a colon) ``raw`` has a duplicate key exactly when it
    has more colons than ``obj`` has keys (at every depth) plus colons inside its strings.
    This keeps ISO-8601 timestamps, ids with colons and nested ``context`` objects off the
    slow, exact check.
    """
    return b"\\u" in raw or raw.count(b":") > _keys_and_colons(obj)


def _keys_and_colons(value: Any) -> int:
    if isinstance(value, str):
        return value.count(":")
    if isinstance(value, dict):
        return sum(1 + key.count(":") + _keys_and_colons(v) for key, v in value.items())
    if isinstance(value, list):
        return sum(map(_keys_and_colons, value))
    return 0


def parse_event(
    raw: bytes | None,
    *,
    default_ts: float | None = None,
    default_event_id: str | None = None,
    max_bytes: int = MAX_EVENT_BYTES,
    now: float | None = None,
) -> Event:
    """Decode and validate one event from raw bytes, or raise ``InvalidEvent``.

    An event that names only ``EventIn``'s fields, each once, is decoded straight into an
    ``EventIn`` (msgspec checks the types while it reads, about half the cost of a dict
    converted after); anything else, valid or not, takes ``decode_json`` and
    ``validate_event``, which explain a rejection. Either way the same event, or reason.
    """
    if not raw:
        raise InvalidEvent("empty message")
    now = time.time() if now is None else now
    wire = _wire(raw, max_bytes)
    if wire is not None:
        return _event_of(wire, default_ts, default_event_id, now)
    obj = decode_json(raw, max_bytes=max_bytes)
    return validate_event(obj, default_ts=default_ts, default_event_id=default_event_id, now=now)


_decode_wire = msgspec.json.Decoder(EventIn).decode
_EVENT_IN_FIELDS = EventIn.__struct_fields__


def _wire(raw: bytes, max_bytes: int) -> EventIn | None:
    """``raw`` decoded into an ``EventIn``, when that is surely what ``decode_json`` then
    ``msgspec.convert`` would give; ``None`` when it may not be.

    Decoding into a struct ignores fields it does not name, keeps the last of a repeated key
    and treats ``null`` as absent, where ``decode_json`` sees every key. Every ``:`` outside
    a string follows a key, so when ``raw`` has exactly as many colons as the struct has
    fields set, at every depth, plus the colons inside their strings (counted without
    ``\\u`` escapes, which could spell one), it held nothing else: no other field, no
    ``null``, no repeated key.
    """
    if len(raw) > max_bytes:
        return None
    try:
        wire = _decode_wire(raw)
    except msgspec.DecodeError:  # ValidationError too: the general path says why
        return None
    colons, fields_set = raw.count(b":"), len(_EVENT_IN_FIELDS) - astuple(wire).count(None)
    if colons == fields_set:  # the common case: one colon per field, none in its strings nor left over
        return wire
    if b"\\u" in raw:
        return None
    for value in (wire.item_id, wire.type, wire.user_id, wire.ts, wire.event_id):
        if type(value) is str:
            fields_set += value.count(":")
    if wire.context is not None:
        fields_set += _keys_and_colons(wire.context)
    return wire if colons == fields_set else None


def parse_events(
    raws: Sequence[bytes | None],
    default_ts: Sequence[float | None],
    default_event_ids: Sequence[str | None],
    *,
    max_bytes: int = MAX_EVENT_BYTES,
    now: float | None = None,
) -> list[Event | InvalidEvent]:
    """``parse_event`` of each of ``raws`` (with the same-place default ``ts`` and
    ``event_id``), the event or the ``InvalidEvent`` that says why not, all with one ``now``.

    >>> good = b'{"user_id": "u1", "item_id": "i9", "type": "view", "ts": 5}'
    >>> [(e.item_id, e.ts, e.event_id) if isinstance(e, Event) else e.reason
    ...  for e in parse_events([good, b"{", good], [None, None, None], ["a", "b", "c"], now=9.0)]
    [('i9', 5.0, 'a'), 'not valid JSON: Input data was truncated', ('i9', 5.0, 'c')]

    A batch of plain events (what ``_wire`` takes, printable string ids, a ``user_id``, a
    ``ts`` in range) is checked column by column, the same checks as ``_event_of`` makes
    but without a Python step per event; a batch with anything else is split in halves
    until the parts are plain, or small enough to take ``parse_event`` event by event.
    """
    now = time.time() if now is None else now
    events: list[Event | InvalidEvent] = []
    _parse_part(raws, default_ts, default_event_ids, max_bytes, now, events)
    return events


ONE_BY_ONE = 16
"""A part of a batch that is not all plain and this short takes ``parse_event`` event by event."""


def _parse_part(raws: Sequence[bytes | None], default_ts: Sequence[float | None],
                default_event_ids: Sequence[str | None], max_bytes: int, now: float,
                events: list[Event | InvalidEvent]) -> None:
    plain = _plain_events(raws, default_ts, default_event_ids, max_bytes, now)
    if plain is not None:
        events += plain
    elif len(raws) > ONE_BY_ONE:
        half = len(raws) // 2
        _parse_part(raws[:half], default_ts[:half], default_event_ids[:half], max_bytes, now, events)
        _parse_part(raws[half:], default_ts[half:], default_event_ids[half:], max_bytes, now, events)
    else:
        for raw, ts, event_id in zip(raws, default_ts, default_event_ids):
            try:
                events.append(parse_event(raw, default_ts=ts, default_event_id=event_id, max_bytes=max_bytes,
                                          now=now))
            except InvalidEvent as exc:
                events.append(exc)


_BatchWire = msgspec.defstruct("_BatchWire", [
    (f.name, f.type) if f.default is msgspec.NODEFAULT else (f.name, f.type, f.default)
    for f in msgspec.structs.fields(EventIn)])
"""``EventIn`` but not frozen: a batch's missing ``ts`` and ``event_id`` are filled in on it."""
_decode_batch_wire = msgspec.json.Decoder(_BatchWire).decode
_columns = [attrgetter(name) for name in ("user_id", "item_id", "type", "ts", "event_id", "value", "context")]
"""Each field of ``EventIn`` (the colon sum counts them all), in ``Event``'s order."""


def _plain_events(raws: Sequence[bytes | None], default_ts: Sequence[float | None],
                  default_event_ids: Sequence[str | None], max_bytes: int, now: float) -> list[Event] | None:
    """The events of ``raws`` when every one is plain (see ``parse_events``); ``None`` otherwise."""
    n = len(raws)
    if not n or not all(raws) or max(map(len, raws)) > max_bytes:
        return None
    try:
        wires = list(map(_decode_batch_wire, raws))
        joined = b"".join(raws)
    except (msgspec.DecodeError, TypeError):  # ValidationError too; TypeError: a value that is not bytes
        return None
    users, items, _, times, event_ids, values, contexts = columns = [list(map(c, wires)) for c in _columns]
    try:  # join: every one a string; printable, as _check_id takes it unchanged
        users_joined, items_joined = "".join(users), "".join(items)
    except TypeError:  # an id that is None or an int
        return None
    if "" in users or not users_joined.isprintable() or not items_joined.isprintable():
        return None
    # _wire's colon count, summed: each raw holds at least as many colons as it counts, so equal sums, equal each
    colons, fields_set = joined.count(b":"), len(_EVENT_IN_FIELDS) * n - sum(column.count(None) for column in columns)
    if colons != fields_set:
        if b"\\u" in joined:
            return None
        strings = [value for value in (*times, *event_ids) if type(value) is str]
        fields_set += (users_joined.count(":") + items_joined.count(":") + "".join(strings).count(":")
                       + sum(_keys_and_colons(context) for context in contexts if context is not None))
        if colons != fields_set:
            return None
    given = [ts for ts in times if ts is not None] if None in times else times
    if given and not (set(map(type, given)) == {float} and min(given) >= 0.0 and max(given) <= now + MAX_FUTURE_S):
        return None  # a string, or one _check_ts would reject
    if values.count(None) != n and not all(map(math.isfinite, filter(None, values))):
        return None
    if event_ids.count(None) == n:
        for wire, default in zip(wires, default_event_ids):
            wire.event_id = default or new_event_id()
    elif None in event_ids:
        return None
    else:
        try:
            if not "".join(event_ids).isprintable():
                return None
        except TypeError:
            return None
    if len(given) < n:
        for wire, default in zip(wires, default_ts):
            if wire.ts is None:
                wire.ts = now if default is None else default
    # built in C from the checked wires' fields (as Event(...) would, a third of its cost)
    return msgspec.convert(wires, list[Event], from_attributes=True)
