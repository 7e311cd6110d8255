"""``explain_rows`` (a batch of lists explained on arrays) says what ``explain_items`` says,
user by user, on random lists with holes: ``TorchEmbeddings`` on its own index and on
another one (items it never met, freed rows), across chunks; ``Blend`` on random cuts of
its last ranking with holes inside the lists."""

from __future__ import annotations

import random

import numpy as np
import pytest

import online_models.embeddings as embeddings_module
from core.schema import Event
from online_models import make_model
from online_models._arrays import IdIndex
from online_models.blend import Blend
from tests.test_ranking_paths import random_stream


def random_lists(rng: random.Random, n_users: int, width: int, n_rows: int) -> np.ndarray:
    """Rows in ``[0, n_rows)``, distinct within a list, with holes inside and after lists
    (and some empty lists)."""
    rows = np.full((n_users, width), -1, dtype=np.int64)
    for j in range(n_users):
        length = rng.randrange(0, width + 1)
        rows[j, :length] = rng.sample(range(n_rows), min(length, n_rows))
        for column in range(length):
            if rng.random() < 0.2:
                rows[j, column] = -1
    return rows


def per_user(model, users: list[str], rows: np.ndarray, index: IdIndex) -> list:
    return [model.explain_items(user, [index.ids[r] for r in row if r >= 0]) for user, row in zip(users, rows.tolist())]


@pytest.mark.parametrize("cells", [None, 200])  # 200: a few users per chunk
def test_embeddings_explain_rows_says_what_explain_items_says(monkeypatch, cells) -> None:
    if cells is not None:
        monkeypatch.setattr(embeddings_module, "_EXPLAIN_CELLS", cells)
    events = random_stream(2500, 70, 250, seed=11)
    model = make_model("embeddings", n_factors=8, batch_size=16, window=6)
    for start in range(0, len(events), 250):
        model.learn_many(events[start : start + 250])
    model.forget_user("u5")
    model.forget_items(["i3", "i7"])  # freed rows: ids the other index still lists
    users = ["nobody", "u5", *sorted({e.user_id for e in events})]
    rng = random.Random(3)
    own = random_lists(rng, len(users), 12, len(model._items))
    own = np.where(np.isin(own, model._items.free), -1, own)  # a freed row is never listed
    assert model.explain_rows(users, own, model._items) == per_user(model, users, own, model._items)
    other = IdIndex()
    for item in ["never-learnt", "i3", *(f"i{n}" for n in range(250))]:
        if item not in other.rows:
            other.add(item)
    rows = random_lists(rng, len(users), 15, len(other))
    got = model.explain_rows(users, rows, other)
    assert got == per_user(model, users, rows, other)
    said = {reason for explained in got for reason in explained}
    assert ("trending", "popular now") in said and ("embeddings", None) in said  # new users; unknown items
    assert sum(1 for _, reason in said if reason and reason.startswith("close to")) > 10
    assert model.explain_rows(users, rows[:, :0], other) == [[] for _ in users]


def test_blend_explain_rows_with_holes_says_what_explain_items_says() -> None:
    events = random_stream(3000, 80, 300, seed=12)
    model = Blend(models={"cooc": {}, "embeddings": {"n_factors": 8, "batch_size": 16}, "trending": {}},
                  weights={"cooc": 1.0, "embeddings": 0.5, "trending": 0.3})
    for start in range(0, len(events), 300):
        model.learn_many(events[start : start + 300])
    users = ["nobody", *sorted({e.user_id for e in events})]
    ranked = model.recommend_rows(users, 20)
    rng = random.Random(4)
    rows = ranked.rows.copy()
    for j in range(len(users)):  # cut after a random length, holes inside
        rows[j, rng.randrange(0, 21) :] = -1
        rows[j, [c for c in range(20) if rng.random() < 0.25]] = -1
    got = model.explain_rows(users, rows, ranked.index)
    assert got == per_user(model, users, rows, ranked.index)
    assert {"cooc", "embeddings"} <= {strategy for explained in got for strategy, _ in explained}


@pytest.mark.filterwarnings("ignore:invalid value:RuntimeWarning")  # an infinite vector
@pytest.mark.parametrize("unbounded", [False, True], ids=["bounded", "an-infinite-vector"])
def test_embeddings_explain_rows_for_users_with_one_recent_item(unbounded: bool) -> None:
    """Users with one recent item (named without a cosine, when the vectors are bounded)
    among users with more, their own item listed too: what ``explain_items`` says, also
    when a vector is infinite (then every user's cosines are taken)."""
    events = random_stream(1200, 60, 120, seed=5)
    model = make_model("embeddings", n_factors=8, batch_size=16, window=6)
    model.learn_many(events)
    singles = [f"new{n}" for n in range(40)]
    model.learn_many([Event(user_id=user, item_id=f"i{n % 30}", type="view", ts=1e4 + n)
                      for n, user in enumerate(singles)])
    if unbounded:
        model._item_in.numpy()[model._items.get("i4")] = np.inf
    users = [*singles, *sorted({e.user_id for e in events})[:40], "nobody"]
    rng = random.Random(7)
    rows = random_lists(rng, len(users), 14, len(model._items))
    rows[: len(singles), 0] = [model._items.get(f"i{n % 30}") for n in range(len(singles))]  # their own item
    rows[: len(singles), 1] = [model._items.get(f"i{n % 30 + 1}") for n in range(len(singles))]  # another
    got = model.explain_rows(users, rows, model._items)
    assert got == per_user(model, users, rows, model._items)
    reasons = [reason for explained in got[: len(singles)] for _, reason in explained]
    assert None in reasons and sum(1 for reason in reasons if reason and reason.startswith("close to")) > 100
