"""The list encoding: the binary form gives back what the JSON form gave, old JSON values are
still read, pages decode as slices of the whole; and a written list carries its TTL."""

from __future__ import annotations

import random

import numpy as np
import pytest
import redis

from core.keys import FORMAT_V1, KeyLayout, ListBatch, StoredList, decode_list, encode_list, encode_list_json, encode_lists
from serving.store import RecommendationStore
from stream.sink import ListSink


def random_list(rng: random.Random, n: int, scale: float = 1.0):
    alphabet = ["a", "Z", "9", "ü", "名", "🎬", " ", '"', "\\", "/", ":", "%", "é"]
    items = [("".join(rng.choice(alphabet) for _ in range(rng.randrange(1, 12))), (rng.random() - 0.3) * scale)
             for _ in range(n)]
    seen = [rng.random() < 0.3 for _ in range(n)] if rng.random() < 0.6 else None
    explained = ([(rng.choice(["cooc", "trending", "new-items"]), rng.choice([None, "liked “Heat”, ü"]))
                  for _ in range(n)] if rng.random() < 0.4 else None)
    return items, seen, explained


@pytest.mark.parametrize("scale", [1.0, 50.0, 20_000.0])
def test_binary_lists_read_back_as_the_json_form_did(scale):
    rng = random.Random(int(scale))
    for _ in range(300):
        items, seen, explained = random_list(rng, rng.randrange(0, 70), scale)
        model = rng.choice(["cooc", "agent", "trending", "someone-elses-model"])
        binary = encode_list(items, model, 1_700_000_000.123456, explained, seen)
        as_json = encode_list_json(items, model, 1_700_000_000.123456, explained, seen)
        assert binary[0] == FORMAT_V1 and as_json[:1] == b"{"
        assert decode_list(binary) == decode_list(as_json)
        for unseen_only in (False, True):
            for limit in (None, 0, 1, 10, 100):
                assert (decode_list(binary, unseen_only=unseen_only, limit=limit)
                        == decode_list(as_json, unseen_only=unseen_only, limit=limit))


@pytest.mark.parametrize("scale", [1.0, 20_000.0, 1e6])
def test_a_batch_of_lists_encodes_byte_for_byte_as_each_list_alone(scale):
    rng = random.Random(int(scale) + 1)
    for _ in range(40):
        lists, seen, explained = {}, {}, {}
        for u in range(rng.randrange(0, 12)):
            items, flags, why = random_list(rng, rng.choice([0, 1, 7, 8, 9, 50, 70]), scale)
            if items and rng.random() < 0.1:  # a score that is not finite, an id with the separator
                items[0] = (items[0][0], rng.choice([float("nan"), float("inf")]))
            if items and rng.random() < 0.05:
                items[-1] = ("x\x1fy", items[-1][1])
            lists[f"user {u}"] = items
            if flags is not None:
                seen[f"user {u}"] = flags
            if why is not None:
                explained[f"user {u}"] = why
        model = rng.choice(["cooc", "blend", "someone-elses-model", "m" * 300])
        batch = ListBatch.of_rankings(lists, seen)
        assert repr(dict(batch)) == repr(lists) and all(batch.flags[u] == seen.get(u, [False] * len(lists[u])) for u in lists)
        got = encode_lists(batch, model, 1_700_000_000.123456, explained)
        assert got == [encode_list(items, model, 1_700_000_000.123456, explained.get(u), seen.get(u))
                       for u, items in lists.items()]


def test_scores_too_large_for_fixed_point_keep_seven_digits():
    items = [("a", 123_456.789), ("b", -1e9), ("c", 0.5)]
    stored = decode_list(encode_list(items, "trending", 1.0))
    assert [i for i, _ in stored.items] == ["a", "b", "c"]
    assert stored.items[0][1] == pytest.approx(123_456.789, rel=1e-7) and stored.items[1][1] == -1e9
    assert stored.items[2][1] == 0.5


def test_a_page_is_a_slice_of_the_unseen_items():
    items = [(f"i{n}", 1.0 - n / 100) for n in range(30)]
    seen = [n % 3 == 0 for n in range(30)]
    explained = [("cooc", f"reason {n}") for n in range(30)]
    raw = encode_list(items, "agent", 5.0, explained, seen)
    page = decode_list(raw, unseen_only=True, limit=4)
    unseen = [n for n in range(30) if n % 3]
    assert page == StoredList(items=[items[n] for n in unseen[:4]], model="agent", updated_at=5.0,
                              explained=[explained[n] for n in unseen[:4]], seen=None)
    head = decode_list(raw, limit=3)
    assert head.items == items[:3] and head.seen == [True, False, False] and head.explained == explained[:3]


def test_the_older_json_forms_are_still_read():
    pairs = b'{"m":"cooc","t":1.5,"i":[["a",0.5],["b",0.25]]}'
    assert decode_list(pairs) == StoredList(items=[("a", 0.5), ("b", 0.25)], model="cooc", updated_at=1.5)
    parallel = b'{"m":"agent","t":2.0,"i":["a","b"],"s":[0.5,0.25],"x":["cooc","trending"],"r":[null,"why"],"u":[1]}'
    assert decode_list(parallel) == StoredList(items=[("a", 0.5), ("b", 0.25)], model="agent", updated_at=2.0,
                                               explained=[("cooc", None), ("trending", "why")], seen=[False, True])
    assert decode_list(parallel, unseen_only=True).items == [("a", 0.5)]


def test_lists_the_binary_form_cannot_hold_are_stored_as_json():
    odd = [("a\x1fb", 1.0), ("c", 0.5)]  # an id the event schema would refuse
    raw = encode_list(odd, "cooc", 1.0)
    assert raw[:1] == b"{" and decode_list(raw).items == odd
    long_name = "m" * 300
    assert encode_list([("a", 1.0)], long_name, 1.0)[:1] == b"{"
    assert decode_list(encode_list([("a", 1.0)], "my-model", 1.0)).model == "my-model"


def test_an_unknown_format_is_refused():
    with pytest.raises(ValueError, match="unknown list format"):
        decode_list(bytes([9]) + bytes(20))


def test_a_top10_list_is_small():
    rng = random.Random(1)
    items = [(f"i{rng.randrange(100_000)}", rng.random()) for _ in range(10)]
    raw = encode_list(items, "cooc", 1_700_000_000.0)
    # header 13 + 4 bytes a score + the ids and separators: a 128-byte allocation in Redis
    assert len(raw) == 13 + 40 + sum(len(i) for i, _ in items) + 9 <= 124


@pytest.mark.integration
def test_written_lists_expire_and_read_back(services):
    client = redis.Redis.from_url(services.redis_url)
    prefix = f"test-store-{random.randrange(10**9)}"
    store, sink = RecommendationStore(client, prefix), ListSink(client, prefix, user_list_ttl_s=600)
    try:
        lists = {"ü 1": [("a", 0.5), ("b", 0.25)], "u2": []}
        similar = {"a": [("b", 0.9)], "x/ü": [], "c": [("d", 1.5), ("e", 1e9)]}
        sink.write_batch(lists, "cooc", 10.0, popular=[("p", 3.0)], seen={"ü 1": [True, False]}, similar=similar)
        for item_id, items in similar.items():  # the bytes each list alone encodes to
            assert client.get(KeyLayout(prefix).similar(item_id)) == encode_list(items, "cooc", 10.0)
        stored = store.user_list("ü 1")
        assert stored == StoredList(items=[("a", 0.5), ("b", 0.25)], model="cooc", updated_at=10.0,
                                    seen=[True, False])
        assert store.user_list("ü 1", unseen_only=True).items == [("b", 0.25)]
        assert store.user_list("u2").items == [] and store.user_list("nobody") is None
        assert 0 < client.ttl(store.user_key("ü 1")) <= 600
        assert store.popular_list().items == [("p", 3.0)] and store.similar_list("a").items == [("b", 0.9)]
        client.set(store.user_key("old"), b'{"m":"cooc","t":1.0,"i":["x"],"s":[0.5]}')
        assert store.user_list("old").items == [("x", 0.5)]
    finally:
        for key in client.scan_iter(f"{store.prefix}:*"):
            client.delete(key)
        client.close()


@pytest.mark.integration
def test_histories_keep_their_newest_batches_and_every_write_sets_the_ttl(services):
    client = redis.Redis.from_url(services.redis_url)
    prefix = f"test-store-{random.randrange(10**9)}"
    store, sink = RecommendationStore(client, prefix), ListSink(client, prefix, user_list_ttl_s=600, history_events=3)
    users = ["a", "ü 2", "名/3", "x" * 300]  # ids that need quoting, a long one
    try:
        for batch in range(6):
            some = users[: 1 + batch % len(users)]
            lists = {u: [(f"i{batch}", 1.0 / (batch + 1)), ("ü", -0.5)] for u in some}
            history = {u: [(f"i{batch}", "view", float(batch)), (f"j{batch}", "click", batch + 0.5)] for u in some}
            sink.write_batch(lists, "cooc", 10.0 + batch, explanations={some[0]: [("cooc", "why"), ("cooc", None)]},
                             history=history, similar={f"i{batch}": [("ü", 0.5)]})
            for u in some:
                assert store.user_list(u).items == [(f"i{batch}", round(1.0 / (batch + 1), 5)), ("ü", -0.5)]
                assert store.user_list(u).updated_at == 10.0 + batch and store.similar_list(f"i{batch}")
        written = {u: [b for b in range(6) if users.index(u) <= b % len(users)] for u in users}
        for u in users:
            expected = [(f"{item}{b}", kind, ts) for b in reversed(written[u][-3:])
                        for item, kind, ts in (("j", "click", b + 0.5), ("i", "view", float(b)))]
            assert store.history(u) == expected
            assert 0 < client.ttl(store.user_key(u)) <= 600 and 0 < client.ttl(store.keys.history(u)) <= 600
        assert store.user_list("a").explained == [("cooc", "why"), ("cooc", None)]
    finally:
        for key in client.scan_iter(f"{store.prefix}:*"):
            client.delete(key)
        client.close()


def test_scores_decode_without_numpy_types():
    stored = decode_list(encode_list([("a", np.float32(0.5)), ("b", 1)], "cooc", 1.0))
    assert all(type(s) is float for _, s in stored.items)


def test_keys_quote_every_id_as_quote_does():
    from urllib.parse import quote

    from core.keys import KeyLayout

    rng = random.Random(4)
    alphabet = [chr(c) for c in range(32, 127)] + ["ü", "名", "🎬", "\u00a0"]
    keys = KeyLayout("p")
    for _ in range(3000):
        user = "".join(rng.choice(alphabet) for _ in range(rng.randrange(1, 10)))
        assert keys.user(user) == f"p:recs:{quote(user, safe='')}"
        assert keys.history(user) == f"p:history:{quote(user, safe='')}"
    for users in (["a", "b-1", "c_d.e~"], ["a", "b c", "ü"], []):
        assert keys.users(users) == [keys.user(u) for u in users]
        assert keys.histories(users) == [keys.history(u) for u in users]
