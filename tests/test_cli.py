"""The command line as a user runs it: real processes, real services."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request

import pytest

from streamrec.services import free_port
from tests.helpers import read_topic, wait_for


def streamrec(*args: str, env: dict | None = None, stdin: bytes | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "streamrec", *args], input=stdin, capture_output=True,
                          env={**os.environ, **(env or {})}, timeout=120)


def test_validate_lists_each_bad_line_with_its_reason(tmp_path):
    events = tmp_path / "events.jsonl"
    events.write_text('{"user_id": "u1", "item_id": "i1", "type": "click"}\n'
                      '{"user_id": "u1", "type": "click"}\n\n'
                      'nope\n'
                      '{"user_id": "u2", "item_id": "i2", "type": "purchase", "value": 9.5}\n')
    result = streamrec("validate", str(events))
    assert result.returncode == 1
    reported = result.stdout.decode().splitlines()
    assert reported[0] == "line 2: missing field 'item_id'"
    assert reported[1].startswith("line 4: not valid JSON") and len(reported) == 2
    assert "2 valid, 2 invalid" in result.stderr.decode()
    events.write_text('{"user_id": "u1", "item_id": "i1", "type": "click"}\n')
    assert streamrec("validate", str(events)).returncode == 0


def test_openapi_prints_the_document():
    result = streamrec("openapi")
    assert result.returncode == 0
    document = json.loads(result.stdout)
    assert {"/users/{user_id}/recommendations", "/events", "/metrics", "/items/{item_id}/similar"} <= set(document["paths"])


def service_env(settings) -> dict[str, str]:
    return {"STREAMREC_KAFKA_BOOTSTRAP": settings.kafka_bootstrap, "STREAMREC_REDIS_URL": settings.redis_url,
            "STREAMREC_TOPIC": settings.topic, "STREAMREC_GROUP_ID": settings.group_id,
            "STREAMREC_REDIS_PREFIX": settings.redis_prefix, "STREAMREC_STATE_DIR": str(settings.state_dir)}


@pytest.mark.integration
def test_publish_from_flags_and_from_stdin(settings):
    env = service_env(settings)
    one = streamrec("publish", "--user", "u1", "--item", "i9", "--type", "purchase", "--value", "12.5", env=env)
    assert one.returncode == 0, one.stderr
    lines = b'{"user_id": "u2", "item_id": "i1", "type": "view"}\n{"user_id": "u2"}\n'
    many = streamrec("publish", "-", env=env, stdin=lines)
    assert many.returncode == 1 and b"line 2: missing field 'item_id' (not sent)" in many.stderr
    records = read_topic(settings.kafka_bootstrap, settings.topic, 2)
    sent = sorted((json.loads(r.value)["user_id"], json.loads(r.value)["type"], r.key) for r in records)
    assert sent == [("u1", "purchase", b"u1"), ("u2", "view", b"u2")]


@pytest.mark.integration
def test_up_serves_and_stops_on_ctrl_c(settings):
    port = free_port()
    env = {**os.environ, **service_env(settings), "STREAMREC_API_PORT": str(port)}
    up = subprocess.Popen([sys.executable, "-m", "streamrec", "up"], env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        banner = b""
        deadline = time.monotonic() + 90
        while b"Ctrl-C stops everything" not in banner and time.monotonic() < deadline and up.poll() is None:
            banner += up.stdout.readline()
        assert f"http://127.0.0.1:{port}/users/u1/recommendations".encode() in banner
        assert streamrec("publish", "--user", "u1", "--item", "i9", env=service_env(settings)).returncode == 0
        streamrec("publish", "--user", "u2", "--item", "i9", env=service_env(settings))

        def popular():
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/users/newcomer/recommendations") as r:
                return json.load(r)["items"]

        assert wait_for(popular, 30, "the worker to publish a popular list")[0]["item_id"] == "i9"
    finally:
        os.killpg(up.pid, signal.SIGINT)  # what Ctrl-C does: the whole foreground group
        assert up.wait(timeout=30) == 0
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1)
