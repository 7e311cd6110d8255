"""The API against hostile input: schemathesis generates requests for every route from the
app's own OpenAPI document (valid and invalid ones), sent to the app backed by real Redis;
no request may get a server error.

(The cases are sent through a TestClient rather than schemathesis' pytest plugin, which
does not run under this pytest version.)
"""

from __future__ import annotations

import json

import pytest
import redis
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from pydantic import SecretStr
from schemathesis import GenerationMode

from serving.app import create_app
from serving.store import RecommendationStore

pytestmark = pytest.mark.integration

API_KEY = "fuzz-key"
SCHEMA = schemathesis.openapi.from_dict(create_app().openapi())


def send(client: TestClient, case):
    """Send a generated case with the right API key, so write endpoints' validation is reached."""
    body = getattr(case, "body", None)
    if body is None or type(body).__name__ == "NotSet":
        content = None
    else:
        content = body if isinstance(body, bytes) else json.dumps(body, default=str).encode()
    headers = {k: str(v) for k, v in (case.headers or {}).items()} | {"X-API-Key": API_KEY}
    return client.request(case.method, case.formatted_path, params=case.query or None, headers=headers,
                          content=content)


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=["valid", "invalid"])
def test_no_request_gets_a_server_error(settings, mode):
    settings = settings.model_copy(update={"api_key": SecretStr(API_KEY)})
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:

        @given(case=SCHEMA.as_strategy(generation_mode=mode))
        @hypothesis_settings(max_examples=100, deadline=None, suppress_health_check=list(HealthCheck))
        def check(case):
            response = send(client, case)
            assert response.status_code < 500, f"{case.method} {case.formatted_path}: {response.text}"
            if mode is GenerationMode.NEGATIVE and response.status_code >= 400:
                assert response.json().get("detail"), "a 4xx says why"

        check()


@pytest.mark.parametrize("user_id", ["*", "a:b", "recs:*", "x y", "%2A", "ü", "[a-z]?"])
def test_ids_never_reach_redis_raw(user_id):
    store = RecommendationStore(redis.Redis(), prefix="p")  # the key layout only: nothing is sent
    key = store.user_key(user_id)
    suffix = key.removeprefix("p:recs:")
    assert not set(suffix) & set("*?[]: \\"), key
    assert store.user_key(user_id + "x") != key
