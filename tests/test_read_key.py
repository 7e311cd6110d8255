"""Reads that reveal a user's data need a key (``STREAMREC_READ_API_KEY``): every
user-specific route refused without it (401) and allowed with it; with only the write key
set, the reads that reveal history (``explain=true``, ``exclude_seen=false``, the dashboard's
user panel) still need a key."""

from __future__ import annotations

import time

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from serving.app import create_app
from core.keys import make_client
from stream.sink import ListSink

pytestmark = pytest.mark.integration

READ, WRITE = "read-secret", "write-secret"
PLAIN = "/users/u1/recommendations"
REVEALING = ["/users/u1/recommendations?explain=true", "/users/u1/recommendations?exclude_seen=false",
             "/dashboard/users/u1"]
NOT_USER_SPECIFIC = ["/dashboard", "/dashboard/panels", "/healthz", "/metrics"]


def _client(settings, **keys):
    settings = settings.model_copy(update={k: SecretStr(v) for k, v in keys.items()} | {"publish_impressions": False})
    sink = ListSink(make_client(settings.redis_url, retries=1), settings.redis_prefix)
    sink.write_batch({"u1": [("i1", 0.9), ("i2", 0.5)]}, "blend", time.time(),
                      explanations={"u1": [("cooc", "often viewed with i0, which you viewed"), ("trending", "popular now")]},
                      seen={"u1": [True, False]}, history={"u1": [("i0", "view", time.time())]})
    sink.close()
    return TestClient(create_app(settings))


def test_read_key_guards_every_user_specific_read(settings):
    with _client(settings, read_api_key=READ, api_key=WRITE) as client:
        for path in [PLAIN, *REVEALING]:
            assert client.get(path).status_code == 401, path
            refused = client.get(path, headers={"X-API-Key": "wrong"})
            assert refused.status_code == 401 and refused.json()["detail"] == "wrong X-API-Key", path
            for key in (READ, WRITE):  # the write key reads too
                assert client.get(path, headers={"X-API-Key": key}).status_code == 200, (path, key)
        assert client.get(PLAIN).json()["detail"].startswith("missing X-API-Key")
        answer = client.get("/users/u1/recommendations?explain=true&exclude_seen=false",
                            headers={"X-API-Key": READ}).json()
        assert [i["reason"] for i in answer["items"]] == ["often viewed with i0, which you viewed", "popular now"]
        page = client.get("/dashboard/users/u1", headers={"X-API-Key": READ}).text
        # their recent events, and their list as served (i1, seen, left out) with its reasons
        assert 'data-item="i0"' in page and 'data-item="i1"' not in page and "popular now" in page
        # forgetting is a write: the read key does not do it
        assert client.delete("/users/u1").status_code == 401
        assert client.delete("/users/u1", headers={"X-API-Key": READ}).status_code == 401
        assert client.delete("/users/u1", headers={"X-API-Key": WRITE}).status_code == 202
        for path in NOT_USER_SPECIFIC:
            assert client.get(path).status_code == 200, path


def test_with_only_the_write_key_history_reads_need_a_key(settings):
    with _client(settings, api_key=WRITE) as client:
        assert client.get(PLAIN).status_code == 200
        for path in REVEALING:
            assert client.get(path).status_code == 401, path
            assert client.get(path, headers={"X-API-Key": WRITE}).status_code == 200, path


def test_without_keys_reads_are_open_and_writes_refused(settings):
    with _client(settings) as client:
        for path in [PLAIN, *REVEALING]:
            assert client.get(path).status_code == 200, path
        assert client.delete("/users/u1").status_code == 403
