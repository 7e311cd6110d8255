"""Each model against a planted pattern (the contract itself: ``tests/test_checks.py``)."""

from __future__ import annotations

import copy
import random

import pytest
import torch

from core.schema import Event
from online_models import make_model
from online_models.base import Recommender

torch.set_num_threads(1)

# small, fast settings where the defaults are sized for real logs
FAST: dict[str, dict] = {
    "embeddings": {"n_factors": 8, "batch_size": 8, "n_negatives": 16, "seed": 3},
    "purchase-rerank": {"min_purchases": 1, "n_candidates": 20},
    "blend": {"models": {"cooc": {}, "embeddings": {"n_factors": 8, "batch_size": 8, "n_negatives": 16}, "sequence": {}}},
    "sasrec": {"n_factors": 8, "window": 5, "batch_size": 8, "n_negatives": 16, "seed": 3},
}
TYPES = ("view", "click", "add_to_cart", "purchase")


def group_stream(n_users: int = 10, n_items: int = 20, per_user: int = 12, seed: int = 0) -> list[Event]:
    """Users ``a*`` meet only items ``A*``, users ``b*`` only items ``B*``, interleaved in time.

    Ratings (``value``) are 5 within the group; each user also rates two items of the
    other group 1, so that rating models see what a user dislikes.
    """
    rng = random.Random(seed)
    todo = []
    for group, other in (("a", "B"), ("b", "A")):
        for u in range(n_users):
            items = rng.sample(range(n_items), per_user)
            evs = [(f"{group}{u}", f"{group.upper()}{i}", 5.0) for i in items]
            evs += [(f"{group}{u}", f"{other}{i}", 1.0) for i in rng.sample(range(n_items), 2)]
            rng.shuffle(evs)
            todo.append(evs)
    out = []
    t = 0.0
    while any(todo):
        evs = rng.choice([e for e in todo if e])
        user, item, value = evs.pop()
        t += 1.0
        kind = rng.choice(TYPES) if value > 1 else "view"
        out.append(Event(user_id=user, item_id=item, type=kind, ts=t, value=value, context={"page": "home"}))
    return out


def implicit(events: list[Event]) -> list[Event]:
    """The group stream without the cross-group ratings (for models that count every event)."""
    return [e for e in events if e.value is None or e.value > 1]


STREAM = group_stream()
LEARN = STREAM[:-20]
LATER = STREAM[-20:]
PROBE_USERS = ["a0", "b3", "a5", "never-seen"]


def fresh(name: str) -> Recommender:
    return make_model(name, **copy.deepcopy(FAST.get(name, {})))


def trained(name: str) -> Recommender:
    model = fresh(name)
    for event in LEARN:
        model.learn_one(event)
    return model


def seen_by(events: list[Event]) -> dict[str, set[str]]:
    seen: dict[str, set[str]] = {}
    for e in events:
        seen.setdefault(e.user_id, set()).add(e.item_id)
    return seen


def _group_first(model: Recommender, events: list[Event], users=("a1", "b2", "a7", "b8"), top: int = 3) -> None:
    seen = seen_by(events)
    for u in users:
        rec = [i for i, _ in model.recommend(u, top, seen[u])]
        assert rec and all(i[0] == u[0].upper() for i in rec), f"{type(model).__name__}: {u} got {rec}"


@pytest.mark.parametrize("name", ["cooc", "sequence", "embeddings", "purchase-rerank", "blend"])
def test_planted_groups_implicit(name: str) -> None:
    events = implicit(group_stream(n_users=12, per_user=12, seed=1))
    model = fresh(name)
    # the embeddings need a few passes' worth of steps on a stream this small
    for event in events * (3 if name in ("embeddings", "blend") else 1):
        model.learn_one(event)
    _group_first(model, events)


def test_planted_groups_river_mf() -> None:
    events = group_stream(n_users=12, per_user=12, seed=1)
    model = make_model("river-mf", latent_lr=0.1, n_factors=4, seed=1)
    for _ in range(30):
        for event in events:
            model.learn_one(event)
    _group_first(model, events, top=1)
    assert model.predict_one("a1", "A3") > model.predict_one("a1", "B3")


def test_planted_popularity_trending() -> None:
    model = make_model("trending", half_life_s=None)
    for t, item in enumerate("xxxxyyyzzw"):
        model.learn_one(Event(user_id=f"u{t}", item_id=item, type="view", ts=float(t)))
    assert [i for i, _ in model.recommend("anyone", 3, {"y"})] == ["x", "z", "w"]


def test_purchase_rerank_prefers_items_that_sell() -> None:
    rng = random.Random(0)
    events, t = [], 0.0
    for u in range(200):
        for item in rng.sample(["sells", "browsed", "other1", "other2"], 2):
            t += 1
            events.append(Event(user_id=f"u{u}", item_id=item, type="click", ts=t))
            if item == "sells":
                t += 1
                events.append(Event(user_id=f"u{u}", item_id=item, type="purchase", ts=t))
    # 'browsed' gets many more clicks, so popularity alone would rank it first
    for u in range(200, 400):
        t += 1
        events.append(Event(user_id=f"u{u}", item_id="browsed", type="click", ts=t))
    counts = {"half_life_s": None, "event_weights": {"purchase": 0.0}}  # popularity counts clicks only
    model = make_model("purchase-rerank", base="trending", base_params=counts, purchase_weight=0.8,
                       purchase_window_s=50.0)
    base = make_model("trending", **counts)
    for e in events:
        model.learn_one(e)
        base.learn_one(e)
    assert base.recommend("new", 1)[0][0] == "browsed"
    assert model.recommend("new", 1)[0][0] == "sells"


def test_large_catalogue_paths_agree_with_dense(monkeypatch) -> None:
    """Cooc's sparse rows and trending's cached popular list rank as the dense versions do."""
    import online_models.cooc as cooc_module
    import online_models.trending as trending_module

    rng = random.Random(5)
    events = [
        Event(user_id=f"u{rng.randrange(60)}", item_id=f"i{int(rng.paretovariate(0.8)) % 900}",
              type=rng.choice(TYPES), ts=float(t))
        for t in range(4000)
    ]
    seen = seen_by(events)
    dense = make_model("cooc", max_neighbours=None)
    for e in events:
        dense.learn_one(e)
    monkeypatch.setattr(cooc_module, "_DENSE_ITEMS", 64)
    monkeypatch.setattr(trending_module, "_DENSE_BELOW", 32)
    sparse = make_model("cooc", max_neighbours=None)
    for e in events:
        sparse.learn_one(e)
    assert sparse._dense is None and dense._dense is not None
    for u in ["u1", "u7", "u30", "nobody"]:
        a, b = dense.recommend(u, 10, seen.get(u)), sparse.recommend(u, 10, seen.get(u))
        assert [s for _, s in a] == pytest.approx([s for _, s in b], rel=1e-5)
        assert {i for i, _ in a[:5]} == {i for i, _ in b[:5]} or a[4][1] == pytest.approx(a[5][1])
    a, b = dense.similar_items("i1", 5), sparse.similar_items("i1", 5)
    assert [i for i, _ in a] == [i for i, _ in b]
    assert [s for _, s in a] == pytest.approx([s for _, s in b], rel=1e-5)
