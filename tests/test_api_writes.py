"""Write endpoints end to end: POST /events and DELETE /users through real Kafka, a real
worker and real Redis; similar items read back."""

from __future__ import annotations


import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from online_models.cooc import Cooc
from serving.app import create_app
from tests.helpers import running_worker, served, wait_for

pytestmark = pytest.mark.integration
KEY = {"X-API-Key": "s3cret"}


@pytest.fixture
def write_settings(settings):
    return settings.model_copy(update={"api_key": SecretStr("s3cret"), "similar_refresh_s": 0.0})


def test_writes_need_the_api_key(settings, write_settings):
    with TestClient(create_app(settings)) as api:
        refused = api.post("/events", json={"user_id": "u", "item_id": "i", "type": "click"})
        assert refused.status_code == 403 and "STREAMREC_API_KEY" in refused.json()["detail"]
    with TestClient(create_app(write_settings)) as api:
        assert api.post("/events", json={}, headers={"X-API-Key": "wrong"}).status_code == 401
        assert api.delete("/users/u1").status_code == 401


def test_post_events_validates_like_the_worker_and_publishes(write_settings):
    with TestClient(create_app(write_settings)) as api, running_worker(write_settings, model=Cooc()) as worker:
        bad = api.post("/events", content=b'{"user_id": "u1", "item_id": "i1", "type": "like"}', headers=KEY)
        assert bad.status_code == 422 and "unknown event type" in bad.json()["detail"]
        nan = api.post("/events", content=b'{"user_id": "u1", "item_id": "i1", "type": "view", "value": NaN}',
                       headers=KEY)
        assert nan.status_code == 422 and "not valid JSON" in nan.json()["detail"]
        ids = []
        for user, item in [("a", "x"), ("a", "y"), ("b", "x"), ("b", "y"), ("c", "x")]:
            accepted = api.post("/events", json={"user_id": user, "item_id": item, "type": "click"}, headers=KEY)
            assert accepted.status_code == 202
            ids.append(accepted.json()["event_id"])
        assert len(set(ids)) == 5
        wait_for(lambda: served(worker) == 5, 30, "the posted events applied")
        body = api.get("/users/c/recommendations").json()
        assert body["source"] == "personal" and body["items"][0]["item_id"] == "y"
        similar = wait_for(lambda: api.get("/items/x/similar", params={"k": 3}).json().get("items"), 30,
                           "similar items of x")
        assert similar[0]["item_id"] == "y"
        assert api.get("/items/never-seen/similar").status_code == 404


def test_delete_user_forgets_everywhere(write_settings):
    with TestClient(create_app(write_settings)) as api, running_worker(write_settings, model=Cooc()) as worker:
        for user, item in [("gone", "x"), ("gone", "y"), ("stay", "x"), ("stay", "z")]:
            api.post("/events", json={"user_id": user, "item_id": item, "type": "click"}, headers=KEY)
        wait_for(lambda: served(worker) == 4, 30, "the events applied")
        assert api.get("/users/gone/recommendations").json()["source"] == "personal"

        answer = api.delete("/users/gone", headers=KEY)
        assert answer.status_code == 202 and answer.json() == {"user_id": "gone", "status": "forgetting"}
        assert api.get("/users/gone/recommendations").json()["source"] == "popular"
        wait_for(lambda: "gone" not in worker.pipeline.seen, 30, "the worker to obey the control command")
        assert "gone" not in worker.pipeline.last_active
        assert worker.model.recommend("gone", 5) == worker.model.recommend("never-seen", 5)
        # a later batch must not bring the list back: wait for a marker event behind the command
        api.post("/events", json={"user_id": "stay", "item_id": "w", "type": "click"}, headers=KEY)
        wait_for(lambda: served(worker) == 5, 30, "the marker event applied")
        assert api.get("/users/gone/recommendations").json()["source"] == "popular"
        assert api.get("/users/stay/recommendations").json()["source"] == "personal"


def test_seen_items_per_event_type_and_per_request(write_settings):
    shop = write_settings.model_copy(update={"seen_types": ["view", "click", "add_to_cart"]})  # soap is bought again
    with TestClient(create_app(shop)) as api, running_worker(shop, model=Cooc()) as worker:
        for user, item, kind in [("a", "soap", "click"), ("a", "towel", "click"), ("b", "soap", "click"),
                                 ("b", "towel", "click"), ("c", "soap", "purchase"), ("c", "sponge", "view")]:
            api.post("/events", json={"user_id": user, "item_id": item, "type": kind}, headers=KEY)
        wait_for(lambda: served(worker) == 6, 30, "the events applied")
        default = [e["item_id"] for e in api.get("/users/c/recommendations").json()["items"]]
        assert "soap" in default, "a purchase does not make an item seen here"
        assert "sponge" not in default, "a view does"
        everything = [e["item_id"] for e in api.get("/users/c/recommendations", headers=KEY,  # history: keyed
                                                    params={"exclude_seen": "false"}).json()["items"]]
        assert {"soap", "sponge", "towel"} <= set(everything)
