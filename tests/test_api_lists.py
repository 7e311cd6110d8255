"""GET /users/{id}/recommendations answers from a stored list as it always did.

Each list is stored twice, in the older JSON form and in the binary one, and read through the
API with many query combinations: both answers must equal what the list itself says (ids,
scores rounded to 5 decimals, seen items left out or kept, strategies and reasons with
``explain``, the model and ``updated_at``), and the parameters are checked as before.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import redis
from fastapi.testclient import TestClient

from core.keys import encode_list, encode_list_json
from serving.app import create_app
from serving.store import RecommendationStore

pytestmark = pytest.mark.integration

UNICODE = ["película-ü", "名前", "🎬 x", 'q"uote', "back\\slash", "sp ace", "a/b", "%41", "é" * 40]
LISTS = {
    "plain": dict(items=[(f"i{n}", 1.0 / (n + 1) + 1e-7 * n) for n in range(50)], model="cooc"),
    "unicode": dict(items=[(u, 0.5 - n / 100) for n, u in enumerate(UNICODE)], model="trending"),
    "seen": dict(items=[(f"s{n}", 2.0 - n / 7) for n in range(30)], model="cooc",
                 seen=[n % 4 == 1 for n in range(30)]),
    "explained": dict(items=[(f"e{n}", 10.0 - n) for n in range(12)], model="agent",
                      explained=[("cooc" if n % 2 else "new-items", None if n % 3 else f"because “{n}” ü")
                                 for n in range(12)],
                      seen=[n == 0 for n in range(12)]),
    "empty": dict(items=[], model="cooc"),
    "all-seen": dict(items=[("a", 1.0), ("b", 0.5)], model="blend", seen=[True, True]),
    "big-scores": dict(items=[("x", 12_345.678901), ("y", -0.000004), ("z", 3e-6)], model="someone-elses-model"),
}
UPDATED_AT = 1_700_000_000.1234567


def expected(spec: dict, user_id: str, *, k: int, offset: int, exclude_seen: bool, explain: bool) -> dict:
    """What the route answered before the binary form, from the list itself."""
    items, model = spec["items"], spec["model"]
    seen = spec.get("seen") or [False] * len(items)
    explained = spec.get("explained") or [(model, None)] * len(items)
    rows = [(i, float(np.round(s, 5)), x, r) for (i, s), (x, r), is_seen in zip(items, explained, seen)
            if not (exclude_seen and is_seen)]
    page = rows[offset : offset + k]
    return {
        "user_id": user_id,
        "items": [{"item_id": i, "score": s, **({"strategy": x, "reason": r} if explain else {})}
                  for i, s, x, r in page],
        "model": model, "updated_at": round(UPDATED_AT, 3), "source": "personal", "degraded": False,
    }


@pytest.fixture
def api_and_store(settings):
    client = redis.Redis.from_url(settings.redis_url)
    store = RecommendationStore(client, settings.redis_prefix)
    with TestClient(create_app(settings)) as api:
        yield api, store
    for key in client.scan_iter(f"{settings.redis_prefix}:*"):
        client.delete(key)
    client.close()


def test_answers_are_the_same_from_either_form(api_and_store):
    api, store = api_and_store
    for name, spec in LISTS.items():
        args = (spec["items"], spec["model"], UPDATED_AT, spec.get("explained"), spec.get("seen"))
        store.client.set(store.user_key(f"json {name}"), encode_list_json(*args))
        store.client.set(store.user_key(f"bin {name}"), encode_list(*args))
    for name, spec in LISTS.items():
        for k, offset, exclude_seen, explain in itertools.product((1, 3, 10, 100), (0, 2, 40), (True, False),
                                                                  (False, True)):
            params = {"k": k, "offset": offset, "exclude_seen": str(exclude_seen).lower(),
                      "explain": str(explain).lower()}
            for form in ("json", "bin"):
                response = api.get(f"/users/{form} {name}/recommendations", params=params)
                assert response.status_code == 200, response.text
                answer = response.json()
                recomm_id = answer.pop("recomm_id")
                assert len(recomm_id) == 32 and int(recomm_id, 16) >= 0
                want = expected(spec, f"{form} {name}", k=k, offset=offset, exclude_seen=exclude_seen,
                                explain=explain)
                assert answer == want, (name, form, params)


def test_the_default_query_and_the_popular_fallback(api_and_store):
    api, store = api_and_store
    spec = LISTS["seen"]
    store.client.set(store.user_key("someone"), encode_list(spec["items"], "cooc", UPDATED_AT, None, spec["seen"]))
    store.client.set(store.keys.popular, encode_list([("p1", 3.0), ("p2", 2.0)], "trending", UPDATED_AT))
    answer = api.get("/users/someone/recommendations").json()
    assert answer["items"] == expected(spec, "someone", k=10, offset=0, exclude_seen=True, explain=False)["items"]
    newcomer = api.get("/users/newcomer/recommendations", params={"k": 1}).json()
    assert newcomer["source"] == "popular" and newcomer["model"] == "trending"
    assert newcomer["items"] == [{"item_id": "p1", "score": 3.0}]


@pytest.mark.parametrize("path, loc", [
    ("/users/u/recommendations?k=0", ["query", "k"]),
    ("/users/u/recommendations?k=1001", ["query", "k"]),
    ("/users/u/recommendations?k=ten", ["query", "k"]),
    ("/users/u/recommendations?offset=1001", ["query", "offset"]),
    ("/users/u/recommendations?category=", ["query", "category"]),
    ("/users/u/recommendations?category=%07", ["query", "category"]),
    ("/users/u/recommendations?explain=perhaps", ["query", "explain"]),
    ("/users/u/recommendations?k=5&k=0", ["query", "k"]),  # the last of a repeated parameter counts
    ("/users/%01/recommendations", ["path", "user_id"]),
    ("/users/" + "x" * 257 + "/recommendations", ["path", "user_id"]),
])
def test_bad_parameters_get_a_422_that_says_why(api_and_store, path, loc):
    api, _ = api_and_store
    response = api.get(path)
    assert response.status_code == 422
    detail = response.json()["detail"]
    assert detail[0]["loc"] == loc and detail[0]["msg"]


def test_path_and_query_errors_come_together(api_and_store):
    api, _ = api_and_store
    detail = api.get("/users/%01/recommendations?k=0").json()["detail"]
    assert [e["loc"] for e in detail] == [["path", "user_id"], ["query", "k"]]


def test_accepted_spellings_are_those_fastapi_accepted(api_and_store):
    api, store = api_and_store
    store.client.set(store.user_key("u"), encode_list([(f"i{n}", 1.0) for n in range(5)], "cooc", 1.0,
                                                      None, [True, False, False, False, False]))
    assert len(api.get("/users/u/recommendations?k=0&k=2").json()["items"]) == 2
    assert len(api.get("/users/u/recommendations?exclude_seen=0&k=10").json()["items"]) == 5
    assert len(api.get("/users/u/recommendations?exclude_seen=yes&k=10").json()["items"]) == 4
    assert api.get("/users/u/recommendations?explain=on&k=1").json()["items"][0]["strategy"] == "cooc"
    assert api.get("/users/u/recommendations?unknown=1").status_code == 200


def test_the_openapi_document_lists_every_parameter(api_and_store):
    api, _ = api_and_store
    operation = api.get("/openapi.json").json()["paths"]["/users/{user_id}/recommendations"]["get"]
    params = {p["name"]: p for p in operation["parameters"]}
    assert list(params) == ["user_id", "k", "offset", "category", "explain", "exclude_seen", "X-API-Key"]
    assert params["user_id"]["in"] == "path" and params["user_id"]["schema"]["maxLength"] == 256
    assert params["k"]["schema"] == {"default": 10, "maximum": 1000, "minimum": 1, "title": "K", "type": "integer"}
    assert "422" in operation["responses"]
