"""core.keys.PlainArgsPacker packs every command as redis-py's own packer does."""

import redis
from hypothesis import given, settings
from hypothesis import strategies as st
from redis.connection import Connection

from core.keys import PlainArgsPacker, make_client

ARGUMENT = st.one_of(
    st.binary(max_size=40), st.text(max_size=20), st.integers(), st.floats(allow_nan=False), st.booleans(),
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
