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
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from itertools import count, repeat
from operator import attrgetter, sub
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
    now = time.time() if now is None else now
    return _event_from(raw, _wire(raw, max_bytes) if raw else None, default_ts, default_event_id, max_bytes, now)


def _event_from(raw: bytes | None, wire: Any, default_ts: float | None, default_event_id: str | None,
                max_bytes: int, now: float) -> Event:
    """``parse_event`` of ``raw``, whose ``_wire`` is ``wire``: the event, or ``InvalidEvent`` raised."""
    if not raw:
        raise InvalidEvent("empty message")
    if wire is not None:
        return _event_of(wire, default_ts, default_event_id, now)
    # too long, not decodable or naming more than EventIn's fields: the general path
    return validate_event(decode_json(raw, max_bytes=max_bytes), default_ts=default_ts,
                          default_event_id=default_event_id, now=now)


_decode_wire = msgspec.json.Decoder(EventIn).decode
_EVENT_IN_FIELDS = EventIn.__struct_fields__


def _wire(raw: bytes, max_bytes: int, decode: Callable[[bytes], Any] = _decode_wire) -> Any:
    """``raw`` decoded into an ``EventIn`` (or what ``decode`` gives), when that is surely
    what ``decode_json`` then ``msgspec.convert`` would give (``_names_only_its_fields``);
    ``None`` when it may not be."""
    if len(raw) > max_bytes:
        return None
    try:
        wire = decode(raw)
    except msgspec.DecodeError:  # ValidationError too: the general path says why
        return None
    return wire if _names_only_its_fields(raw, wire) else None


def _names_only_its_fields(raw: bytes, wire: Any) -> bool:
    """Whether ``raw``, decoded into ``wire``, held nothing but ``wire``'s fields.

    Decoding into a struct ignores fields it does not name, keeps the last of a repeated key
    and treats ``null`` as absent, where ``decode_json`` sees every key. Every ``:`` outside
    a string follows a key, so when ``raw`` has exactly as many colons as the struct has
    fields set, at every depth, plus the colons inside their strings (counted without
    ``\\u`` escapes, which could spell one), it held nothing else: no other field, no
    ``null``, no repeated key.
    """
    values = astuple(wire)
    colons, fields_set = raw.count(b":"), len(values) - values.count(None)
    if colons == fields_set:  # the common case: one colon per field, none in its strings nor left over
        return True
    if b"\\u" in raw:
        return False
    fields_set += "".join([value for value in values if type(value) is str]).count(":")
    if wire.context is not None:
        fields_set += _keys_and_colons(wire.context)
    return colons == fields_set


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

    Each raw is decoded once (``_wires``; in a batch with a raw that does not decode, or is
    too long, the ones before it are decoded again, one by one). The plain events among them
    (``_plain_places``) are checked column by column and built in C, without a Python step
    per event; each other one takes the rest of ``parse_event``'s way from its wire.
    """
    now = time.time() if now is None else now
    wires = _wires(raws, max_bytes)
    places, plain = _plain_places(wires, now)
    if None in map(_ts_of, plain) or None in map(_event_id_of, plain):  # _event_of's defaults
        for i in places:
            wire = wires[i]
            if wire.ts is None:
                wire.ts = now if default_ts[i] is None else default_ts[i]
            if wire.event_id is None:
                wire.event_id = default_event_ids[i] or new_event_id()
    # built in C from the checked wires' fields (as Event(...) would, a third of its cost)
    events: list[Any] = msgspec.convert(plain, list[Event], from_attributes=True)
    if len(places) == len(wires):
        return events
    built = dict(zip(places, events))  # by place
    return [built[i] if i in built else _event_or_reason(raw, wire, ts, event_id, max_bytes, now)
            for i, raw, wire, ts, event_id in zip(count(), raws, wires, default_ts, default_event_ids)]


_BatchWire = msgspec.defstruct("_BatchWire", [
    (f.name, f.type) if f.default is msgspec.NODEFAULT else (f.name, f.type, f.default)
    for f in msgspec.structs.fields(EventIn)])
"""``EventIn`` but not frozen: a batch's missing ``ts`` and ``event_id`` are filled in on it."""
_decode_batch_wire = msgspec.json.Decoder(_BatchWire).decode
_ts_of, _event_id_of = attrgetter("ts"), attrgetter("event_id")


def _wires(raws: Sequence[bytes | None], max_bytes: int) -> list[Any]:
    """``_wire`` of each of ``raws`` (a ``_BatchWire``; ``None`` for an empty raw too), with
    ``map``s when they all decode: ``_names_only_its_fields`` only for those that have more
    colons than fields set."""
    try:
        if all(raws) and max(map(len, raws), default=0) <= max_bytes:
            wires = list(map(_decode_batch_wire, raws))
            fields_set = list(map(sub, repeat(len(_EVENT_IN_FIELDS)), map(tuple.count, map(astuple, wires), repeat(None))))
            if b"".join(raws).count(b":") == sum(fields_set):  # a colon per field set or more in each: equal each
                return wires  # the common case of _names_only_its_fields, for all at once
            colons = map(bytes.count, raws, repeat(b":"))
            return [wire if colon_count == field_count or _names_only_its_fields(raw, wire) else None
                    for raw, wire, colon_count, field_count in zip(raws, wires, colons, fields_set)]
    except (msgspec.DecodeError, TypeError):  # ValidationError too; TypeError: a raw that is not bytes
        pass
    return [_wire(raw, max_bytes, _decode_batch_wire) if raw else None for raw in raws]


def _event_or_reason(raw: bytes | None, wire: Any, default_ts: float | None, default_event_id: str | None,
                     max_bytes: int, now: float) -> Event | InvalidEvent:
    """What ``parse_event`` gives or raises for ``raw``, whose ``_wire`` is ``wire``."""
    try:
        return _event_from(raw, wire, default_ts, default_event_id, max_bytes, now)
    except InvalidEvent as exc:
        return exc


def _given(column: Sequence[Any]) -> Sequence[Any]:
    return [value for value in column if value is not None] if None in column else column


def _all_printable(ids: Iterable[Any]) -> bool:
    try:
        return "".join(ids).isprintable()
    except TypeError:  # one is not a string
        return False


def _all_plain_ts(times: Sequence[Any], now: float) -> bool:
    given = _given(times)
    return not given or (set(map(type, given)) == {float} and min(given) >= 0.0 and max(given) <= now + MAX_FUTURE_S)


_NOT_PLAIN = object()
"""What a column's check of one value gives when ``_event_of`` would reject it (or say more)."""


def _checked(check: Callable[..., Any], *args: Any) -> Any:
    try:
        return check(*args)
    except InvalidEvent:
        return _NOT_PLAIN


def _user_checked(user: Any, now: float) -> Any:
    # any falsy id (0 too) is not plain: _event_of makes an item event's "" and rejects another's
    return _NOT_PLAIN if not user else _checked(_check_id, "user_id", user)


def _id_checked(name: str, optional: bool) -> Callable[[Any, float], Any]:
    def checked(id_: Any, now: float) -> Any:
        return id_ if optional and id_ is None else _checked(_check_id, name, id_)  # None: an event_id to fill in
    return checked


_COLUMN_CHECKS: tuple[tuple[str, Callable[[Sequence[Any], float], bool], Callable[[Any, float], Any]], ...] = (
    # a field; whether _event_of keeps all of a column's values as they are (in one go); its check of one value
    ("user_id", lambda users, now: "" not in users and _all_printable(users), _user_checked),
    ("item_id", lambda items, now: _all_printable(items), _id_checked("item_id", optional=False)),
    ("event_id", lambda ids, now: _all_printable(_given(ids)), _id_checked("event_id", optional=True)),
    ("ts", _all_plain_ts, lambda ts, now: ts if ts is None else _checked(_check_ts, ts, now)),
    ("value", lambda values, now: all(map(math.isfinite, filter(None, values))),
     lambda value, now: value if value is None or math.isfinite(value) else _NOT_PLAIN),
)
"""The column checks of ``_plain_places`` (tests/test_schema.py checks that each pair agrees)."""


def _plain_places(wires: list[Any], now: float) -> tuple[list[int], list[Any]]:
    """The places of the plain events among ``wires`` (``None`` where there is none), and
    their wires, checked: those ``_event_of`` takes (a non-empty ``user_id``, ids and ``ts``
    that ``_check_id`` and ``_check_ts`` take, a finite ``value``). Each check runs on a whole
    column, and value by value (``_check_id``'s, ``_check_ts``') only where that fails; the
    wires of those still plain then hold the checked values (an int id made a string, an ISO
    ``ts`` made seconds: what ``_event_of`` takes as it is, should it see them again)."""
    if None in wires:
        places = [i for i, wire in enumerate(wires) if wire is not None]
        plain = [wires[i] for i in places]
    else:
        places, plain = list(range(len(wires))), wires
    for name, all_plain, check in _COLUMN_CHECKS:
        column = list(map(attrgetter(name), plain))
        if not all_plain(column, now):
            checked = list(map(check, column, repeat(now)))
            kept = [n for n, value in enumerate(checked) if value is not _NOT_PLAIN]
            places, plain = [places[n] for n in kept], [plain[n] for n in kept]
            for wire, n in zip(plain, kept):
                setattr(wire, name, checked[n])
    return places, plain
