"""Idle expiry: every model forgets items (and users) for good, and its memory stops growing
on a stream whose ids churn."""

from __future__ import annotations

import pickle

import orjson
import pytest

from core.schema import Event
from core.settings import Settings
from online_models import MODELS
from online_models import cooc as cooc_module
from online_models import trending as trending_module
from online_models.base import Recommender
from online_models.capabilities import SimilarItems
from stream.pipeline import Record
from stream.worker import Worker
from tests.doubles import Nothing
from tests.test_models import LEARN, PROBE_USERS, fresh, seen_by, trained

# models whose learning of unrelated items leaves the others' rankings alone (no shared
# random draws, no shared learned weights): reusing a freed row must be invisible in them
DETERMINISTIC = ["trending", "cooc", "content"]


def _items(ranking) -> list[str]:
    return [i for i, _ in ranking]


@pytest.fixture(params=["small", "large"], autouse=True)
def catalogue_path(request, monkeypatch) -> str:
    """Each test on both storage paths: the test catalogues are small, so "large" lowers
    the thresholds past which cooc keeps sparse neighbour rows and trending a cached top."""
    if request.param == "large":
        monkeypatch.setattr(cooc_module, "_DENSE_ITEMS", 16)
        monkeypatch.setattr(trending_module, "_DENSE_BELOW", 8)
        monkeypatch.setattr(trending_module, "_MIN_CACHE", 4)
    return request.param


@pytest.mark.parametrize("name", sorted(MODELS))
def test_forget_item(name: str) -> None:
    model = trained(name)
    catalogue = {e.item_id for e in LEARN}
    before = model.state_sizes()
    model.forget_items(["A3", "no-such-item"])  # unknown ids are ignored
    for user in PROBE_USERS:
        assert "A3" not in _items(model.recommend(user, 1_000))
    assert "A3" not in _items(model.recommend_many(PROBE_USERS, 1_000)["a0"])
    if isinstance(model, SimilarItems):
        assert model.similar_items("A3", 5) == []
        assert "A3" not in _items(model.similar_items("A4", 1_000))
    after = model.state_sizes()
    assert after["items"] == before["items"] - 1 == len(catalogue) - 1

    # users who met the item keep learning and ranking; the item comes back afresh
    seen = seen_by(LEARN)
    assert "A3" in set().union(*seen.values())
    model.learn_one(Event(user_id="a0", item_id="A3", type="click", ts=50_000.0))
    model.learn_one(Event(user_id="a1", item_id="A5", type="click", ts=50_001.0))
    assert model.recommend("a0", 5) and model.recommend("a1", 5)
    assert model.state_sizes()["items"] == len(catalogue)

    # the forgetting survives a pickle round trip
    model.forget_items(["A5"])
    twin = pickle.loads(pickle.dumps(model))
    assert _items(twin.recommend("a1", 1_000)) == _items(model.recommend("a1", 1_000))
    assert "A5" not in _items(twin.recommend("a1", 1_000))


@pytest.mark.parametrize("name", DETERMINISTIC)
def test_reused_rows_carry_nothing_over(name: str) -> None:
    """A new item that takes a forgotten item's row ranks exactly as one with a row of its own."""
    later = [Event(user_id=u, item_id="NEW", type="purchase", ts=60_000.0 + n) for n, u in enumerate(("a0", "b3"))]
    later += [Event(user_id="a5", item_id=i, type="view", ts=60_100.0 + n) for n, i in enumerate(("NEW", "A1"))]

    reused = trained(name)
    reused.forget_items(["A3", "B4"])
    reused.learn_many(later)  # NEW takes a freed row

    own_row = trained(name)
    own_row.forget_items(["A3", "B4"])
    for n, item in enumerate(("X1", "X2")):  # occupy the freed rows first
        own_row.learn_one(Event(user_id="x", item_id=item, type="view", ts=59_000.0 + n))
    own_row.learn_many(later)
    own_row.forget_user("x")
    own_row.forget_items(["X1", "X2"])

    for user in PROBE_USERS:
        mine, theirs = reused.recommend(user, 1_000), own_row.recommend(user, 1_000)
        assert _items(mine) == _items(theirs), user
        assert [s for _, s in mine] == pytest.approx([s for _, s in theirs], rel=1e-6, abs=1e-9)


def _churn(model: Recommender, rounds: int, items_per_round: int = 30, users_per_round: int = 15) -> list[int]:
    """Each round brings new users and new items; what is two rounds old is forgotten.
    Returns the pickled size of the model after each round."""
    sizes, ts = [], 0.0
    for r in range(rounds):
        items = [f"r{r}i{n}" for n in range(items_per_round)]
        events = []
        for u in range(users_per_round):
            for n in range(6):
                ts += 1.0
                events.append(Event(user_id=f"r{r}u{u}", item_id=items[(u * 7 + n * 3) % items_per_round],
                                    type="view" if n % 3 else "click", ts=ts))
        model.learn_many(events)
        model.recommend_many([f"r{r}u{u}" for u in range(users_per_round)], 10)
        if r >= 2:
            for u in range(users_per_round):
                model.forget_user(f"r{r - 2}u{u}")
            model.forget_items([f"r{r - 2}i{n}" for n in range(items_per_round)])
        sizes.append(len(pickle.dumps(model)))
    return sizes


@pytest.mark.parametrize("name", sorted(MODELS))
def test_memory_plateaus_when_ids_churn(name: str) -> None:
    model = fresh(name)
    sizes = _churn(model, rounds=16)
    live = model.state_sizes()
    assert live["items"] <= 3 * 30 and live["users"] <= 3 * 15
    # the state of rounds 4..16 holds as many ids as that of round 4: it must not keep growing
    assert sizes[-1] <= 1.25 * sizes[3], sizes


# -- the worker's idle expiry (a pure unit test: Kafka and Redis stand-ins) -------------

def test_worker_forgets_idle_users_and_items(tmp_path) -> None:
    day = 86_400.0
    settings = Settings(_env_file=None, state_dir=tmp_path, topic="t", user_idle_expiry_s=7 * day,
                        item_idle_expiry_s=7 * day)
    worker = Worker(settings, consumer=Nothing(), dlq_producer=Nothing(), sink=Nothing())
    events = [("old-user", "old-item", 0.0), ("old-user", "kept-item", 1.0),
              ("new-user", "kept-item", 10 * day), ("new-user", "new-item", 10 * day + 1)]
    t0 = 1_600_000_000.0
    worker.process([Record("t", 0, n, int((t0 + ts) * 1000), user.encode(),
                            orjson.dumps({"user_id": user, "item_id": item, "type": "view", "ts": t0 + ts}))
                    for n, (user, item, ts) in enumerate(events)])
    assert worker.pipeline.state_sizes()["model_items"] == 3

    worker.pipeline.expire_idle()
    assert set(worker.pipeline.last_active) == {"new-user"} and set(worker.pipeline.item_last_active) == {"kept-item", "new-item"}
    sizes = worker.pipeline.state_sizes()
    assert sizes["model_items"] == 2 and sizes["users"] == 1 and sizes["items"] == 2
    assert "old-item" not in [i for i, _ in worker.model.recommend("new-user", 100)]
    assert "old-item" not in [i for i, _ in worker.pipeline.popularity.top(100)]
