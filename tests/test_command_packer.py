"""core.keys.PlainArgsPacker packs every command as redis-py's own packer does."""

import random

import pytest
import redis
from hypothesis import given, settings
from hypothesis import strategies as st
from redis.connection import Connection

from core.keys import PlainArgsPacker, make_client
from stream.sink import ListSink

ARGUMENT = st.one_of(
    st.binary(max_size=40), st.binary(min_size=4094, max_size=4098), st.text(max_size=20), st.integers(), st.floats(allow_nan=False), st.booleans(),
    st.builds(bytearray, st.binary(max_size=8)), st.builds(memoryview, st.binary(max_size=8)),
)
NAME = st.sampled_from(["SET", "EVALSHA", b"HSET", "CONFIG GET", b"CLIENT  LIST", "DEL"])


def redis_py_packer():
    return Connection()._command_packer  # what a client would use without ours


def packed_or_error(packer, args):
    try:
        return b"".join(bytes(chunk) for chunk in packer.pack(*args))
    except Exception as exc:  # noqa: BLE001 - the same error type is part of the contract
        return type(exc)


@settings(max_examples=400, deadline=None)
@given(NAME, st.lists(ARGUMENT, max_size=12))
def test_packs_as_redis_py(name, args):
    ours = PlainArgsPacker(redis.Redis().get_encoder())
    command = (name, *args)
    assert packed_or_error(ours, command) == packed_or_error(redis_py_packer(), command)


def test_shortcut_taken_for_plain_arguments():
    ours = PlainArgsPacker(redis.Redis().get_encoder())

    class Refusing:
        def pack(self, *args):
            raise AssertionError("the fallback was used")

    ours.fallback = Refusing()
    assert ours.pack("EVALSHA", "f" * 40, 2, "k1", "k\u00e9", b"\x00v", -3) == [
        redis_py_packer().pack("EVALSHA", "f" * 40, 2, "k1", "k\u00e9", b"\x00v", -3)[0]]


def test_lone_surrogate_refused_as_redis_py_refuses():
    ours = PlainArgsPacker(redis.Redis().get_encoder())
    assert packed_or_error(ours, ("SET", "k", "\ud800")) is UnicodeEncodeError


def test_client_connections_use_it():
    client = make_client("redis://localhost:1/0", retries=0)
    connection = client.connection_pool.make_connection()
    assert isinstance(connection._command_packer, PlainArgsPacker)
    client.close()


@pytest.mark.integration
def test_a_sink_batch_stores_the_same_bytes_as_through_redis_py(services):
    """A batch written through make_client's client and through a plain redis-py client:
    every key holds the same value (DUMP), unicode ids, explanations and histories included."""
    rng = random.Random(3)
    users = [f"u{i}" for i in range(300)] + ["ü 1", "名/2"]
    lists = {u: [(f"i{rng.randrange(50)}", rng.random()) for _ in range(rng.randrange(0, 8))] for u in users}
    explanations = {u: [("cooc", f"often viewed with é{rng.randrange(9)}" if rng.random() < 0.8 else None)
                        for _ in lists[u]] for u in users[::2]}
    history = {u: [(f"i{rng.randrange(50)}", "view", 1_700_000_000.25)] for u in users}
    dumps = []
    for client in (make_client(services.redis_url, retries=0), redis.Redis.from_url(services.redis_url)):
        prefix = f"test-packer-{random.randrange(10**9)}"
        sink = ListSink(client, prefix, user_list_ttl_s=600, history_events=3)
        try:
            sink.write_batch(lists, "cooc", 10.5, popular=[("p", 3.0)], counters={"events": 7},
                             similar={"i1": [("i2", 0.9)]}, explanations=explanations,
                             item_metadata={"i1": {"title": "Ω"}}, history=history, series={"applied": 7})
            keys = sorted(client.scan_iter(f"{prefix}:*"))
            dumps.append({key[len(prefix):]: client.dump(key) for key in keys})
        finally:
            for key in client.scan_iter(f"{prefix}:*"):
                client.delete(key)
            client.close()
    assert len(dumps[0]) > 600 and dumps[0] == dumps[1]
