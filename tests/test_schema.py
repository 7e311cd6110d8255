"""The event schema: what is accepted, and the reason given for what is not."""

import json
import math
import time

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core import schema
from core.errors import InvalidEvent
from core.schema import (
    _COLUMN_CHECKS,
    EVENT_TYPES,
    MAX_ID_CHARS,
    Event,
    _plain_places,
    _wires,
    decode_json,
    parse_event,
    parse_events,
    validate_event,
)

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


def assert_parses_as_one_by_one(payloads: list[bytes], default_ts: list[float | None], now: float) -> None:
    """``parse_events`` gives each payload the event, or the reason, that ``parse_event`` gives it alone."""
    default_ids = [f"t/0/{n}" for n in range(len(payloads))]
    got = parse_events(payloads, default_ts, default_ids, max_bytes=65_536, now=now)
    assert len(got) == len(payloads)
    for payload, ts, event_id, event in zip(payloads, default_ts, default_ids, got):
        try:
            want = parse_event(payload, default_ts=ts, default_event_id=event_id, max_bytes=65_536, now=now)
        except InvalidEvent as exc:
            assert isinstance(event, InvalidEvent) and event.reason == exc.reason, payload
        else:
            assert (event, repr(event), type(event.ts)) == (want, repr(want), type(want.ts)), payload


printable_text = st.characters(categories=["L", "N", "P", "S"], include_characters=" :")  # no control, no separator
printable_ids = st.text(printable_text, min_size=1, max_size=12)
odd_ids = st.sampled_from(["", "a\nb", "x" * 257, "u:1", "ü名🎬"]) | st.integers(-5, 2**70)


def plain_events(with_event_ids: bool) -> st.SearchStrategy[dict]:
    """Events a batch takes column by column, all with an ``event_id`` or all without."""
    return st.fixed_dictionaries(
        {"user_id": printable_ids, "item_id": printable_ids, "type": st.sampled_from(EVENT_TYPES),
         **({"event_id": printable_ids} if with_event_ids else {})},
        optional={"ts": st.floats(0, NOW) | st.integers(0, 2**31), "value": st.floats(allow_infinity=False,
                  allow_nan=False), "context": st.dictionaries(st.sampled_from(["a", "b:c"]), st.integers(-2**63, 2**63 - 1) | st.text(
                      printable_text, max_size=3))},
    )


def plain_batches(max_size: int = 40) -> st.SearchStrategy[list[tuple[bytes, float | None]]]:
    """Plain events, each with the broker's timestamp or none."""
    return st.tuples(st.booleans(), st.integers(0, max_size)).flatmap(lambda drawn: st.lists(st.tuples(
        plain_events(drawn[0]).map(orjson.dumps), st.none() | st.floats(0, NOW)), min_size=drawn[1], max_size=drawn[1]))


events_with_odd_fields = st.fixed_dictionaries(
    {"item_id": printable_ids | odd_ids, "type": st.sampled_from([*EVENT_TYPES, "like"])},
    optional={"user_id": printable_ids | odd_ids | st.none(), "ts": st.floats() | st.none() | st.sampled_from(
        ["2024-01-02T03:04:05Z", "2024-01-02T03:04:05", "x", NOW + 2 * 86_400]),
              "event_id": printable_ids | odd_ids | st.none(), "value": st.floats() | st.none() | st.just("1"),
              "context": st.none() | st.just([1]), "other": st.integers()},
)


def oversize() -> bytes:
    return b"{" + b" " * 70_000 + b"}"


odd_payloads = (events_with_odd_fields.map(lambda e: json.dumps(e).encode()) | st.sampled_from(STRUCT_PATH_PAYLOADS)
                | st.binary(max_size=30) | st.builds(oversize))


@settings(max_examples=60)
@given(plain_batches())
def test_a_batch_of_plain_events_parses_as_one_by_one(batch):
    assert_parses_as_one_by_one([payload for payload, _ in batch], [ts for _, ts in batch], NOW)


@settings(max_examples=60)
@given(plain_batches(), st.lists(st.tuples(st.integers(0, 40), odd_payloads, st.none() | st.floats(0, NOW)), max_size=4))
def test_any_batch_parses_as_one_by_one(batch, odd):
    """Anything at all among plain events, rejects too: each gets what it would alone."""
    for at, payload, ts in odd:
        batch.insert(at, (payload, ts))
    assert_parses_as_one_by_one([payload for payload, _ in batch], [ts for _, ts in batch], NOW)


def test_a_batch_of_plain_events_is_checked_column_by_column():
    """Not each event through ``parse_event`` (what the tests above compare it with): the
    batch's columns, however its events name their ``ts``, ``event_id`` and ``value`` (an int
    id, an ISO ``ts``: checked value by value, then still plain)."""
    plain = [raw(ts=5.0), raw(ts=6, event_id="e"), raw(user_id="u:1"), raw(value=0.0) + b"\n", raw(user_id=7, event_id=8),
             raw(ts="2024-01-02T03:04:05Z"),
             raw(value=-2.5, context={"recomm_id": "r:1", "a": {"b": [1, {"c": "d"}]}})]
    for payloads in (plain, [raw(event_id=f"e:{n}", type="item") for n in range(3)]):
        defaults = [None, 7.0, 8.0, None, 9.0, None, 1.0][: len(payloads)]
        assert _plain_places(_wires(payloads, 65_536), NOW)[0] == list(range(len(payloads)))
        assert_parses_as_one_by_one(payloads, defaults, NOW)
    for odd in (raw(user_id=""), raw(ts="2024-01-02T03:04:05"), raw(ts=NOW * 2), raw(item_id="a\tb"), raw(event_id="e\x01"),
                raw(value=None), raw(session="s"),
                b'{"user_id":"u","item_id":"i","type":"view","context":{"a":1,"a":2}}',
                b'{"user_id":"u\\u003a","item_id":"i","type":"view","ts":5,"ts":6}', b""):
        assert _plain_places(_wires([raw(), odd, raw()], 65_536), NOW)[0] == [0, 2], odd
        assert_parses_as_one_by_one([raw(), odd, raw()], [None, None, 1.0], NOW)


def test_a_mixed_batch_is_decoded_once_and_only_what_is_not_plain_goes_one_by_one(monkeypatch):
    odd = {3: raw(ts="2024-01-02T03:04:05Z"), 17: raw(user_id=7), 18: raw(session="s"), 30: b"{", 31: raw(ts=NOW * 2),
           32: raw(type="item", user_id=None, context={"title": "t"}), 39: b""}
    payloads = [odd.get(n, raw(ts=float(n), **({"event_id": f"e{n}"} if n % 2 else {}))) for n in range(40)]
    decoded, one_by_one = [], []
    decode, event_or_reason = schema._decode_batch_wire, schema._event_or_reason
    monkeypatch.setattr(schema, "_decode_batch_wire", lambda payload: decoded.append(payload) or decode(payload))
    monkeypatch.setattr(schema, "_event_or_reason", lambda payload, *rest: one_by_one.append(payload)
                        or event_or_reason(payload, *rest))
    assert_parses_as_one_by_one(payloads, [None, 1.0] * 20, NOW)
    assert one_by_one == [odd[n] for n in (18, 30, 31, 32, 39)]  # an ISO ts and an int id are plain
    assert sorted(decoded) == sorted(payload for payload in payloads if payload)  # each once


ids_and_odd_values = st.none() | printable_ids | odd_ids | st.just("a\x00")
times_and_odd_values = st.none() | st.floats() | st.sampled_from(
    [-0.0, 0.0, NOW + 86_400, NOW + 86_400.5, "2024-01-02T03:04:05Z", "x", ""]) | st.integers(0, 5)


@given(st.lists(ids_and_odd_values), st.lists(times_and_odd_values), st.lists(st.none() | st.floats()))
def test_each_column_check_in_one_go_agrees_with_its_value_by_value_check(ids, times, values):
    """``_plain_places`` checks a column at once, and value by value only where that fails:
    in one go, a column passes only when each value's check keeps it as it is."""
    columns = {"user_id": ids, "item_id": ids, "event_id": ids, "ts": times, "value": values}
    for name, all_plain, check in _COLUMN_CHECKS:
        column = tuple(columns[name])
        assert all_plain(column, NOW) == all(check(value, NOW) is value for value in column), (name, column)


@pytest.mark.parametrize("user_id", [0, 0.0, False, "", None])
def test_an_item_event_with_a_falsy_user_id_parses_as_one_by_one(user_id):
    """``_event_of`` gives an item event with any falsy ``user_id`` the empty one: the batch
    path must not take an int 0 as the id "0"."""
    item = json.dumps({"user_id": user_id, "item_id": "i1", "type": "item", "ts": 1.6e9}).encode()
    click = json.dumps({"user_id": "u1", "item_id": "i1", "type": "click", "ts": 1.6e9}).encode()
    assert_parses_as_one_by_one([click, item, click], [None] * 3, NOW)
