"""The feedback loop end to end: the agent serves a list with strategies and reasons, the API
publishes the impression, a click that names the answer is credited to the strategy that
chose the item; items carry categories the API filters on."""

from __future__ import annotations


import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from online_models import make_model
from serving.app import create_app
from tests.helpers import running_worker, served, wait_for

pytestmark = pytest.mark.integration
KEY = {"X-API-Key": "s3cret"}
GENRE = {**{f"a{i}": "Drama" for i in range(6)}, **{f"b{i}": "Comedy" for i in range(6)}}


def test_click_on_a_served_item_rewards_its_strategy(settings):
    settings = settings.model_copy(update={"api_key": SecretStr("s3cret"), "model": "agent"})
    with TestClient(create_app(settings)) as api, running_worker(settings, model=make_model("agent")) as worker:
        for item, genre in GENRE.items():
            answer = api.post("/events", headers=KEY,
                              json={"type": "item", "item_id": item, "context": {"title": item, "category": genre}})
            assert answer.status_code == 202, answer.text
        history = [(f"u{u}", f"{'a' if u % 2 else 'b'}{(u + j) % 6}") for u in range(12) for j in range(4)]
        history += [("probe", "a0"), ("probe", "b1")]
        for user, item in history:
            answer = api.post("/events", json={"user_id": user, "item_id": item, "type": "click"}, headers=KEY)
            assert answer.status_code == 202, answer.text
        wait_for(lambda: served(worker) == len(GENRE) + len(history), 60,
                 lambda: f"{len(GENRE) + len(history)} items and events applied, got {worker.totals}")

        # explain=true reveals the user's history: it needs a key once one is configured
        body = wait_for(lambda: (b := api.get("/users/probe/recommendations", headers=KEY,
                                              params={"k": 6, "explain": "true"}).json())["source"] == "personal" and b,
                        30, "the probe's list")
        assert body["model"] == "agent" and len(body["recomm_id"]) == 32
        assert all(e["strategy"] and e["reason"] for e in body["items"]), body["items"]
        clicked = body["items"][0]
        wait_for(lambda: body["recomm_id"] in worker.pipeline.impressions, 30, "the impression to reach the worker")

        before = worker.model.stats()["arms"][clicked["strategy"]]["rewards"]
        api.post("/events", headers=KEY, json={"user_id": "probe", "item_id": clicked["item_id"], "type": "click",
                                                "context": {"recomm_id": body["recomm_id"]}})
        wait_for(lambda: worker.metrics.attributed == 1, 30, "the click to be attributed")
        assert worker.model.stats()["arms"][clicked["strategy"]]["rewards"] == before + 1

        drama = api.get("/users/probe/recommendations", params={"k": 50, "category": "Drama"}).json()["items"]
        assert drama and {GENRE[e["item_id"]] for e in drama} == {"Drama"}

        def pages_of_one_list():  # the click's batch may still be writing the probe's new list (write-behind)
            everything = api.get("/users/probe/recommendations", params={"k": 50}).json()["items"]
            second_page = api.get("/users/probe/recommendations", params={"k": 2, "offset": 2}).json()["items"]
            again = api.get("/users/probe/recommendations", params={"k": 50}).json()["items"]
            return everything == again and (everything, second_page)

        everything, second_page = wait_for(pages_of_one_list, 30, "two reads of the probe's list between writes")
        assert [e["item_id"] for e in second_page] == [e["item_id"] for e in everything[2:4]]
        # the next batch writes the worker's metrics snapshot, attribution included
        api.post("/events", json={"user_id": "u1", "item_id": "a1", "type": "view"}, headers=KEY)
        wait_for(lambda: "streamrec_feedback_attributed_total 1.0" in api.get("/metrics").text, 30,
                 "the attribution in /metrics")
        assert f'streamrec_bandit_arm_rewards_total{{arm="{clicked["strategy"]}"}}' in api.get("/metrics").text
