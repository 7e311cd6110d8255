"""Every served model explains its items: for a planted history, each reason names the
item of the user's history that led to it."""

from __future__ import annotations

import pytest

from online_models import make_model
from online_models.capabilities import Explains
from core.schema import Event

# x is always viewed after a, y after b: the planted pairs
PAIRS = {"a": "x", "b": "y"}


def planted(model, crowd: int = 60):
    ts = 0.0
    for n in range(crowd):
        for first, second in PAIRS.items():
            for item in (first, second, f"noise{n % 7}"):
                ts += 1
                model.learn_one(Event(user_id=f"{first}-{n}", item_id=item, type="view", ts=ts))
    for item in ("a", "b"):  # the user under test: a then b, nothing else
        ts += 1
        model.learn_one(Event(user_id="me", item_id=item, type="click", ts=ts))
    return model


@pytest.mark.parametrize("name", ["trending", "cooc", "embeddings", "blend", "river-mf", "purchase-rerank", "content",
                                  "agent", "sasrec"])
def test_every_registered_model_explains_every_item(name):
    model = planted(make_model(name))
    assert isinstance(model, Explains)
    ranking = model.recommend("me", 10, exclude={"a", "b"})
    items = [item for item, _ in ranking]
    explained = model.explain_items("me", items)
    assert len(explained) == len(items)
    for strategy, reason in explained:
        assert isinstance(strategy, str) and strategy
        assert isinstance(reason, str) and reason, f"{name}: no reason for an item of {explained}"


def test_cooc_names_the_history_item_that_led_to_each():
    model = planted(make_model("cooc"))
    reasons = dict(zip("xy", model.explain_items("me", ["x", "y"])))
    assert reasons["x"] == ("cooc", "often viewed with a, which you viewed")
    assert reasons["y"] == ("cooc", "often viewed with b, which you viewed")
    # an item that co-occurs with nothing of the user's is there for its popularity
    assert model.explain_items("nobody", ["x"]) == [("trending", "popular now")]
    assert model.explain_items("me", ["never-seen"]) == [("cooc", None)]


def test_embeddings_names_the_nearest_recent_item():
    model = planted(make_model("embeddings", seed=1))
    reasons = dict(zip("xy", model.explain_items("me", ["x", "y"])))
    assert reasons["x"] == ("embeddings", "close to a, which you viewed recently")
    assert reasons["y"] == ("embeddings", "close to b, which you viewed recently")
    assert model.explain_items("nobody", ["x"]) == [("trending", "popular now")]


def test_sasrec_names_the_item_each_follows():
    model = planted(make_model("sasrec"))
    assert model.explain_items("me", ["x", "y"]) == [("sasrec", "often viewed after a, which you viewed"),
                                                     ("sasrec", "often viewed after b, which you viewed")]
    assert model.explain_items("nobody", ["x"]) == [("trending", "popular now")]


def test_blend_delegates_each_item_to_the_part_that_ranked_it():
    model = planted(make_model("blend"))  # the default served model: cooc + embeddings + sequence
    ranked = model.recommend_many(["me", "nobody"], 5, {"me": {"a", "b"}})
    items = [item for item, _ in ranked["me"]]
    assert set(items[:2]) == {"x", "y"}
    explained = dict(zip(items, model.explain_items("me", items)))
    parts = model._models
    for item, (strategy, reason) in explained.items():
        if strategy == "trending":
            assert reason == "popular now"
            continue
        assert strategy in parts and reason == parts[strategy].explain_items("me", [item])[0][1]
    for item, because in (("x", "a"), ("y", "b")):
        assert explained[item][1] in (f"often viewed with {because}, which you viewed",
                                      f"close to {because}, which you viewed recently",
                                      f"often clicked after {because}")
    # a user the last ranking did not hold is ranked again; one without history gets "popular now"
    assert model.explain_items("nobody", [i for i, _ in ranked["nobody"]][:1]) == [("trending", "popular now")]
    model.recommend("someone-else", 3)
    assert model.explain_items("me", ["x"])[0][1] == explained["x"][1]
