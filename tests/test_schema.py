"""The event schema: what is accepted, and the reason given for what is not."""

import json
import math
import time

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from core.errors import InvalidEvent
from core.schema import EVENT_TYPES, MAX_ID_CHARS, Event, decode_json, parse_event, validate_event

NOW = 1_800_000_000.0


def raw(**fields) -> bytes:
    return orjson.dumps({"user_id": "u1", "item_id": "i1", "type": "click", **fields})


def test_minimal_event_gets_defaults():
    event = parse_event(raw(), default_ts=123.0)
    assert (event.user_id, event.item_id, event.type, event.ts) == ("u1", "i1", "click", 123.0)
    assert len(event.event_id) == 32 and event.value is None and event.context is None


def test_default_event_id_is_used_when_absent_and_given_one_wins():
    assert parse_event(raw(), default_event_id="t/0/7").event_id == "t/0/7"
    assert parse_event(raw(event_id="e1"), default_event_id="t/0/7").event_id == "e1"


def test_iso_timestamps_and_numeric_ids():
    event = parse_event(orjson.dumps({"user_id": 7, "item_id": 9, "type": "view", "ts": "2024-01-02T03:04:05Z"}))
    assert (event.user_id, event.item_id) == ("7", "9")
    assert event.ts == 1704164645.0


def test_round_trip_through_json():
    event = Event(user_id="u", item_id="i", type="purchase", ts=5.0, event_id="e", value=9.5, context={"a": 1})
    assert parse_event(event.to_json()) == event


@pytest.mark.parametrize(
    "payload, reason",
    [
        (b"not json", "not valid JSON"),
        (b"", "empty message"),
        (b"[1, 2]", "must be a JSON object"),
        (raw(type="buy"), "unknown event type"),
        (orjson.dumps({"user_id": "u", "type": "click"}), "missing field 'item_id'"),
        (raw(user_id=""), "'user_id' is empty"),
        (raw(user_id=["u"]), "'user_id' must be a string"),
        (raw(user_id=True), "'user_id' must be a string"),
        (raw(item_id="x" * (MAX_ID_CHARS + 1)), "longer than 256"),
        (raw(item_id="a\nb"), "control characters"),
        (raw(ts="yesterday"), "not epoch seconds or ISO-8601"),
        (raw(ts=-1), "before 1970"),
        (raw(ts=NOW + 10 * 86400), "in the future"),
        (raw(value="12"), "'value' must be a number"),
        (raw(context=[1]), "'context' must be an object"),
        (b'{"user_id": "u", "item_id": "i", "type": "click", "value": NaN}', "not valid JSON"),
        (b'{"user_id": "u", "item_id": "i", "type": "click", "value": Infinity}', "not valid JSON"),
        (b'{"user_id": "u", "user_id": "v", "item_id": "i", "type": "click"}', "duplicate key 'user_id'"),
        (raw(context={"pad": "x" * 70_000}), "over the 65536-byte limit"),
    ],
)
def test_bad_events_are_rejected_with_a_reason(payload, reason):
    with pytest.raises(InvalidEvent) as info:
        parse_event(payload, now=NOW)
    assert reason in info.value.reason


def test_item_events_carry_metadata_and_need_no_user():
    event = parse_event(orjson.dumps({"item_id": "i7", "type": "item", "context": {"title": "Alien", "category": "Sci-Fi"}}))
    assert (event.user_id, event.item_id, event.context["category"]) == ("", "i7", "Sci-Fi")
    assert parse_event(event.to_json()) == event  # as the worker reads what the API published
    with pytest.raises(InvalidEvent, match="missing field 'user_id'"):
        parse_event(orjson.dumps({"item_id": "i7", "type": "view"}))


def test_unknown_fields_are_ignored():
    assert parse_event(raw(session="s1")).user_id == "u1"


ids = st.text(min_size=1, max_size=40).filter(str.isprintable)


@given(user=ids, item=ids, kind=st.sampled_from(EVENT_TYPES), ts=st.floats(0, NOW), value=st.none() | st.floats(-1e9, 1e9))
def test_any_valid_event_survives_encoding(user, item, kind, ts, value):
    event = validate_event({"user_id": user, "item_id": item, "type": kind, "ts": ts, "value": value}, now=NOW)
    assert parse_event(event.to_json(), now=NOW) == event


@given(st.binary(max_size=200))
def test_arbitrary_bytes_either_parse_or_raise_invalid_event(payload):
    try:
        event = parse_event(payload, now=time.time())
    except InvalidEvent as exc:
        assert exc.reason
    else:
        assert event.type in EVENT_TYPES and math.isfinite(event.ts)


def test_the_plain_event_fast_path_parses_as_the_general_path_does() -> None:
    """Every payload gives the event (or the reason) that ``validate_event``'s general
    conversion gives: the plain-event shortcut in ``parse_event`` changes nothing."""
    now = time.time()
    plain = {"user_id": "u1", "item_id": "i9", "type": "view", "ts": 1_700_000_000.5}
    variants = [plain, {**plain, "ts": 1_700_000_000}, {**plain, "ts": 2**60}, {**plain, "ts": -1.0},
                {**plain, "ts": -0.0}, {**plain, "ts": now + 2 * 86_400}, {**plain, "ts": True},
                {**plain, "ts": "2024-01-01T00:00:00Z"}, {**plain, "ts": None}, {**plain, "user_id": ""},
                {**plain, "item_id": ""}, {**plain, "user_id": "x" * 257}, {**plain, "item_id": "y" * 256},
                {**plain, "user_id": "a\nb"}, {**plain, "user_id": 42}, {**plain, "type": "item"},
                {**plain, "type": "like"}, {**plain, "type": 3}, {"user_id": "u1", "item_id": "i9", "type": "view",
                                                               "value": 2.0}, {**plain, "event_id": "e1"},
                {**plain, "user_id": "a:b"}, {**plain, "item_id": "ü名🎬"}, {**plain, "user_id": None}]
    payloads = [orjson.dumps(v) for v in variants] + [
        b'{"user_id":"u1","user_id":"u2","item_id":"i","type":"view"}',  # a repeated key
        b'{"user_id":"a\\u003ab","item_id":"i","type":"click","ts":5}', b'{"ts": 1e400, "a": 1, "b": 2, "c": 3}',
        b'{"user_id":"u","item_id":"i","type":"view","ts":100000000000000000000000000000}',
        b'[1, 2, 3, 4]', b'{"user_id":"u","item_id":"i","type":"view","ts":NaN}', b"{" + b" " * 70_000 + b"}"]
    assert_parses_as_the_general_path(payloads + STRUCT_PATH_PAYLOADS, now)


# what decoding straight into EventIn could get wrong: fields it does not name, nulls, repeated
# keys (at any depth), colons in strings and keys, escapes that spell one
STRUCT_PATH_PAYLOADS = [
    b'{"user_id":"u","item_id":"i","type":"view","ts":5,"event_id":"e:1","value":2,"context":{"recomm_id":"r"}}',
    b'{"user_id":"u","item_id":"i","type":"view","ts":5,"event_id":"e1","extra":1}',
    b'{"user_id":"u","item_id":"i","type":"view","ts":5,"value":null}',
    b'{"user_id":"u","item_id":"i","type":"view","value":null,"ts":5,"session":"s"}',
    b'{"user_id":"u","item_id":"i","type":"view","ts":5,"ts":6}',
    b'{"user_id":"u","item_id":"i","type":"view","ts":5,"context":{"a":1,"a":2}}',
    b'{"user_id":"u","item_id":"i","type":"view","ts":5,"context":{"a":{"b":1,"b":2}}}',
    b'{"user_id":"u","item_id":"i","type":"view","ts":5,"context":{"a:b":"c:d","l":[{"x":1},{"x":2}]}}',
    b'{"user_id":"u","item_id":"i","type":"view","ts":5,"context":{"a":"\\u003a","a":1}}',
    b'{"user_id":"u\\u003a","item_id":"i","type":"view","ts":5,"ts":6}',
    b'{"user_id":"u:1","item_id":"i","type":"view","ts":"2024-01-02T03:04:05+00:00","event_id":7}',
    b'{"user_id":"u","item_id":"i","type":"view","ts":"2024-01-02T03:04:05"}',
    b'{"user_id":"u","item_id":"i","type":"item","context":{"title":"A: B"}}',
    b'{"user_id":"","item_id":"i","type":"item","context":{}}',
    b'{"user_id":null,"item_id":"i","type":"item"}',
    b'{"item_id":"i","type":"item","context":{"title":"t"},"context":{"title":"u"}}',
    b'{"user_id":"u","item_id":"i","type":"view","ts":5,"value":1e400}',
    b'{"user_id":"u","item_id":"i","type":"view","ts":5,"context":[1]}',
    b'{"user_id":"u","item_id":"i","type":"view","ts":5,"event_id":""}',
    b'{"user_id":"u","item_id":"i","type":"view","ts":5,"event_id":"e\\nf"}',
    b'{"user_id":"u","item_id":12345678901234567890123,"type":"view","ts":5}',
    b'{"user_id":"u","item_id":"i","type":"view","ts":5} ', b' {"user_id":"u","item_id":"i","type":"view","ts":5}x',
    b'{"user_id":"u","item_id":"i","type":"view","ts":-0.0,"value":-0.0}',
]


def assert_parses_as_the_general_path(payloads: list[bytes], now: float) -> None:
    """``parse_event`` gives each payload the event, or the reason, that ``decode_json``
    then ``validate_event`` give it."""
    defaults = {"default_ts": 1_700_000_000.0, "now": now}
    for n, payload in enumerate(payloads):
        try:
            want = validate_event(decode_json(payload, max_bytes=65_536), default_event_id=f"e/{n}", **defaults)
        except InvalidEvent as exc:
            with pytest.raises(InvalidEvent) as got:
                parse_event(payload, default_event_id=f"e/{n}", max_bytes=65_536, **defaults)
            assert got.value.reason == exc.reason, payload
        else:
            got = parse_event(payload, default_event_id=f"e/{n}", max_bytes=65_536, **defaults)
            assert (got, repr(got), type(got.ts)) == (want, repr(want), type(want.ts)), payload


keys = st.sampled_from(["user_id", "item_id", "type", "ts", "event_id", "value", "context", "other", "a:b"])
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=False, allow_infinity=False)
    | st.sampled_from(["view", "click", "item", "u:1", "2024-01-02T03:04:05Z", ""]) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(keys, inner, max_size=3), max_leaves=6)


@given(st.lists(st.tuples(keys, json_values), min_size=1, max_size=8), st.sampled_from([b":", b" : ", b":\t"]),
       st.booleans())
def test_any_object_parses_as_the_general_path(pairs, colon, escaped):
    """Objects built from the schema's names, repeated keys allowed, in any spacing, with
    integers past 64 bits and strings escaped (``\\u``) or not."""
    body = b",".join(json.dumps(k).encode() + colon + json.dumps(v, ensure_ascii=escaped).encode() for k, v in pairs)
    assert_parses_as_the_general_path([b"{" + body + b"}"], NOW)
