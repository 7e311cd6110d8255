"""The sequence model's batch paths rank as its definition does, and it can fill its lists
from a popularity it does not own.

- ``recommend_rows`` (arrays, for the blend's fusion) gives ``recommend_many``'s lists,
  which equal per-user ``recommend`` and a pure-Python scoring of the model's state, on
  the sparse and the dense path, with and without excluded items.
- Handed the worker's popularity (``use_popularity``), it neither learns nor shares nor
  forgets it, and fills lists from it, items it never met included.
"""

from __future__ import annotations

import math
import pickle
from array import array

import numpy as np
import pytest

from core.schema import Event
from online_models import make_model, sequence_ranking
from online_models._arrays import IdIndex, RankedRows
from online_models.capabilities import RanksRows
from online_models.sequence import Sequential
from online_models.trending import Trending
from tests.test_batch_ranking import assert_same_ranking
from tests.test_ranking_paths import random_stream, seen_by


def reference_sequence(model, user_id: str, k: int, exclude=()) -> list[tuple[str, float]]:
    """The docstring's score, item by item in plain Python (all successors, no cap), then
    the popular fill."""
    ids = model._items.ids
    history = model._histories.get(user_id)
    scores: dict[int, float] = {}
    if history is not None:
        rows, times = history[0].tolist()[::-1], history[1].tolist()[::-1]  # most recent first
        source = [model.recency_decay**d for d in range(len(rows))]
        if model.recency_half_life_s is not None:
            source = [a * 2 ** (-(times[0] - t) / model.recency_half_life_s) for a, t in zip(source, times)]
        total = sum(source)
        source = [a / total for a in source]
        rates, most = model.repeat_rates().tolist(), model.repeat_counts
        repeat = {}
        for d, row in enumerate(rows):
            if row not in repeat:
                repeat[row] = rates[d * most + min(rows.count(row), most) - 1]
        rest = max(1.0 - sum(repeat.values()), 0.0)
        for a, row in zip(source, rows):
            successors = model._successors[row]
            factor = a * rest / (model._out_total[row] + model.shrinkage)
            for target, weight in zip(successors.rows, successors.weights):
                scores[target] = scores.get(target, 0.0) + factor * weight
        for row, rate in repeat.items():
            scores[row] = scores.get(row, 0.0) + rate
    excluded = set(exclude or ())
    ranked = sorted((-s, r) for r, s in scores.items() if s > 0 and ids[r] not in excluded)[:k]
    out = [(ids[r], -s) for s, r in ranked]
    taken = {item for item, _ in out} | excluded
    out += [(item, 0.0) for item, _ in model._trending.top(len(model._items)) if item not in taken][: k - len(out)]
    return out


def trained(events, **params):
    model = make_model("sequence", **params)
    for start in range(0, len(events), 250):  # micro-batches, as the worker learns them
        model.learn_many(events[start : start + 250])
    return model


@pytest.mark.parametrize("params", [{"max_successors": None}, {"max_successors": None, "recency_half_life_s": 20.0}])
@pytest.mark.parametrize("dense_slots", [sequence_ranking._DENSE_SLOTS, 500])
def test_batch_ranking_is_the_definition(monkeypatch, params: dict, dense_slots: int) -> None:
    monkeypatch.setattr(sequence_ranking, "_DENSE_SLOTS", dense_slots)  # 500: a few users per dense chunk
    events = random_stream(3000, 80, 300, seed=7)
    model = trained(events, **params)
    users = ["nobody", *sorted({e.user_id for e in events})]
    seen = seen_by(events)
    seen["nobody"] = {"i1", "never-learnt"}
    for k in (1, 10, 60, 400):
        for exclude in (None, seen):
            many = model.recommend_many(users, k, exclude)
            assert list(many) == users
            for user in users:
                expected = reference_sequence(model, user, k, exclude.get(user) if exclude else ())
                assert_same_ranking(many[user], expected, rel=1e-9)
                assert model.recommend(user, k, exclude.get(user) if exclude else None) == many[user]


def alike_users_stream(seed: int) -> list[Event]:
    """A stream learned first, then many new users with one or two clicks on popular
    items: users of a batch with the same recent items (at the same ages or not)."""
    events = random_stream(2000, 60, 80, seed=seed)
    rng = np.random.default_rng(seed)
    for j in range(300):
        clicks = [f"i{rng.integers(4)}" for _ in range(1 + j % 2)]
        gap = 10.0 * (1 + j % 3)  # the same clicks at three ages
        events += [Event(user_id=f"new{j}", item_id=item, type="click", ts=2000.0 + gap * c)
                   for c, item in enumerate(clicks)]
    return events


@pytest.mark.parametrize("params", [{"max_successors": None}, {"max_successors": None, "recency_half_life_s": 20.0},
                                    {"max_successors": 3}])
@pytest.mark.parametrize("collide", ["none", "ages", "all"])
def test_alike_users_are_ranked_once_as_each_alone(monkeypatch, params: dict, collide: str) -> None:
    """Users with the same recent items are ranked once per batch (``_alike_users``), and
    each still gets its own list: the definition's (``reference_sequence``), its
    ``recommend``, and its excluded items left out; the same arrays as ranking every user
    apart (``_ranked_rows``), with a cap on successors too. Hash collisions, where only the
    comparison of recent items and ages tells users apart: ``ages``, the same items at other
    ages hash alike; ``all``, every user hashes to one key, also the users who exclude items."""
    if collide == "ages":
        monkeypatch.setattr(sequence_ranking, "_mix", lambda m: (np.arange(m) < m // 2).astype(np.int64) * 7)
    if collide == "all":
        monkeypatch.setattr(sequence_ranking, "_mix", lambda m: np.zeros(m, dtype=np.int64))
        monkeypatch.setattr(sequence_ranking, "_ALONE", 0)
    model = trained(alike_users_stream(seed=11), **params)
    users = ["nobody", "ghost", *[f"new{j}" for j in range(300)], *sorted({f"u{j}" for j in range(60)})]
    first, alike = model._alike_users(users, {}, model._held(users))
    assert first is not None and np.array_equal(alike[first], np.arange(len(first)))
    if collide == "none":  # (colliding, those unlike the first of their key are ranked alone)
        assert len(first) < len(users) // 2  # mostly alike: ranked once each
    seen = {f"new{j}": {"i1", "i2"} for j in range(0, 300, 7)} | {"nobody": {"i0"}}
    for k in (1, 10, 40):
        for exclude in (None, seen):
            ranked = model.recommend_rows(users, k, exclude)
            apart = model._ranked_rows(users, k, exclude or {})
            assert np.array_equal(ranked.rows, apart.rows) and np.array_equal(ranked.scores, apart.scores)
            if params["max_successors"] is not None:
                continue
            many = ranked.rankings(users)
            for user in users:
                mine = exclude.get(user) if exclude else None
                assert_same_ranking(many[user], reference_sequence(model, user, k, mine or ()), rel=1e-9)
                assert model.recommend(user, k, mine) == many[user]


def test_a_popular_list_shorter_than_a_users_own() -> None:
    """Handed a popularity that knows fewer items than a user lists, the model fills the
    others' lists with them and leaves the user's own list as it is."""
    popularity, model = Trending(), make_model("sequence")
    assert model.use_popularity(popularity)
    for t, (user, item) in enumerate([("a", "x"), ("a", "y"), ("a", "z"), ("a", "w"), ("b", "x"), ("c", "q")]):
        event = Event(user_id=user, item_id=item, type="click", ts=float(t))
        if item == "w":
            popularity.learn_one(event)
        model.learn_one(event)
    users = ["a", "b", "c", "nobody"]
    ranked = model.recommend_rows(users, 10).rankings(users)
    assert [item for item, _ in ranked["a"]] == ["z", "y", "w", "x"]  # w: listed, not added again
    assert ranked["nobody"] == [("w", 0.0)] and ranked["c"][-1] == ("w", 0.0)
    assert ranked == {user: model.recommend(user, 10) for user in users}


@pytest.mark.parametrize("params", [{}, {"recency_half_life_s": 20.0}])
def test_a_replica_with_items_but_no_users(params: dict) -> None:
    """A replica that merged a peer's items but learned no user ranks and explains anyone
    by popularity, as the definition says."""
    peer, replica = trained(random_stream(500, 20, 40, seed=6), **params), make_model("sequence", **params)
    replica.merge_item_delta(peer.item_delta())
    users = ["x", "y", "x"]
    ranked = replica.recommend_rows(users, 5)
    assert ranked.rows.shape == (3, 5)
    for user, ranking in zip(users, [[(replica._items.ids[r], s) for r, s in zip(row, scores)]
                                     for row, scores in zip(ranked.rows.tolist(), ranked.scores.tolist())]):
        assert ranking == reference_sequence(replica, user, 5)
    assert replica.explain_rows(users, ranked.rows, ranked.index) == [[("trending", "popular now")] * 5] * 3


@pytest.mark.parametrize("max_successors", [None, 4])
def test_recommend_rows_are_recommend_many(max_successors) -> None:
    """The arrays name, in the model's rows, the lists ``recommend_many`` gives, on both
    the sparse path (many users) and the dense one (one user, a small catalogue)."""
    events = random_stream(2500, 60, 200, seed=3)
    model = trained(events, max_successors=max_successors)
    assert isinstance(model, RanksRows)
    users = ["nobody", *sorted({e.user_id for e in events}), "u1"]  # a user twice: one row each
    seen = seen_by(events)
    for k in (0, 1, 10, 250):
        for exclude in (None, seen):
            ranked = model.recommend_rows(users, k, exclude)
            assert isinstance(ranked, RankedRows) and ranked.index is model._items
            assert ranked.rows.shape == ranked.scores.shape == (len(users), min(k, len(model._items)))
            listed = ranked.rows >= 0
            assert (listed == (ranked.scores > -math.inf)).all()
            assert (np.sort(listed, axis=1)[:, ::-1] == listed).all()  # each list first, then padding
            many = model.recommend_many(users, k, exclude)
            for j, user in enumerate(users):
                got = [(model._items.ids[r], s) for r, s in zip(ranked.rows[j].tolist(), ranked.scores[j].tolist())
                       if r >= 0]
                assert got == many[user] == model.recommend(user, k, exclude.get(user) if exclude else None)


def test_blend_with_sequence_fuses_its_rows_as_recommend() -> None:
    """The default blend's batch fusion (sequence's rows among them) ranks as ``recommend``."""
    events = random_stream(2000, 70, 300, seed=9)
    model = make_model("blend", models={"cooc": {}, "embeddings": {"n_factors": 8, "batch_size": 16},
                                        "sequence": {}})
    for start in range(0, len(events), 200):
        model.learn_many(events[start : start + 200])
    users = ["nobody", *sorted({e.user_id for e in events})]
    seen = seen_by(events)
    for exclude in (None, seen):
        many = model.recommend_many(users, 20, exclude)
        for user in users:
            assert_same_ranking(many[user], model.recommend(user, 20, (exclude or {}).get(user)))


def test_a_popularity_it_does_not_own() -> None:
    """Handed a popularity, the model fills its lists from it (items it never met too, as
    a peer's merged popularity names them), and leaves learning, sharing and forgetting it
    to the owner."""
    events = [Event(user_id=u, item_id=i, type="click", ts=float(t))
              for t, (u, i) in enumerate([("a", "x"), ("a", "y"), ("b", "x"), ("b", "y"), ("c", "z")])]
    own, shared = make_model("sequence"), make_model("sequence")
    popularity = Trending()
    assert shared.use_popularity(popularity) and not make_model("sequence", half_life_s=60.0).use_popularity(popularity)
    for event in events:
        popularity.learn_one(event)
        own.learn_one(event)
        shared.learn_one(event)
    assert shared._trending is popularity and popularity.raw_scores().tolist() == own._trending.raw_scores().tolist()
    assert shared.recommend_many(["a", "nobody"], 3) == own.recommend_many(["a", "nobody"], 3)
    assert not any(key.startswith("popularity/") for key in shared.item_delta())
    assert any(key.startswith("popularity/") for key in own.item_delta())
    # a peer's events learned into the popularity alone (its merge), twice as popular as x
    for t in range(5):
        popularity.learn_one(Event(user_id="peer", item_id="w", type="click", ts=10.0 + t))
    assert "w" not in shared._items and [i for i, _ in popularity.top(2)] == ["w", "y"]
    assert shared.recommend("nobody", 2) == [("w", 0.0), ("y", 0.0)]
    ranked = shared.recommend_rows(["nobody", "a"], 4, {"a": {"x", "y"}})
    assert ranked.rankings(["nobody", "a"]) == {"nobody": [("w", 0.0), ("y", 0.0), ("x", 0.0), ("z", 0.0)],
                                                "a": [("w", 0.0), ("z", 0.0)]}
    for t in range(9):  # another, more popular still, that the request excludes
        popularity.learn_one(Event(user_id="peer", item_id="v", type="click", ts=20.0 + t))
    assert "v" not in shared._items
    assert shared.recommend("nobody", 4, {"v"}) == [("w", 0.0), ("y", 0.0), ("x", 0.0), ("z", 0.0)]
    shared.forget_items(["z"])
    assert "z" in popularity._items  # the owner forgets it there


@pytest.mark.parametrize("params", [{}, {"recency_half_life_s": 20.0}])
@pytest.mark.parametrize("pairs", [sequence_ranking._EXPLAINED_PAIRS, 300])
def test_explain_rows_says_what_explain_items_says(monkeypatch, params: dict, pairs: int) -> None:
    """A batch of lists explained at once, in the model's rows or another index's (with
    an item it never met, and gaps where another part explains), says what
    ``explain_items`` says of each user's items; also a few users at a time (``pairs``:
    300, a user's cells times its recent items at most, so the batch goes in chunks)."""
    monkeypatch.setattr(sequence_ranking, "_EXPLAINED_PAIRS", pairs)
    events = random_stream(3000, 80, 300, seed=2)
    model = trained(events, **params)
    users = ["nobody", *sorted({e.user_id for e in events})]
    ranked = model.recommend_rows(users, 30)
    own = model.explain_rows(users, ranked.rows, ranked.index)
    assert own == [model.explain_items(u, [i for i, _ in ranking]) for u, ranking in
                   ranked.rankings(users).items()]
    assert {reason for user in own for _, reason in user} >= {"you clicked it recently", "popular now"}
    other = IdIndex()
    rows = np.full((len(users), 8), -1, dtype=np.int64)
    for j, user in enumerate(users):
        items = [i for i, _ in model.recommend(user, 6)] + ["no-such-item"]
        for col, item in enumerate(items):
            if (j + col) % 3:  # gaps: cells another part explains
                rows[j, col] = other.add(item)
    got = model.explain_rows(users, rows, other)
    assert got == [model.explain_items(u, [other.ids[r] for r in row if r >= 0]) for u, row in zip(users, rows.tolist())]


@pytest.mark.parametrize("recency_decay", [1.0, 0.4])
@pytest.mark.parametrize("pairs", [sequence_ranking._EXPLAINED_PAIRS, 300])
def test_explain_rows_breaks_ties_as_explain_items(monkeypatch, recency_decay: float, pairs: int) -> None:
    """With every transition and every outgoing total made equal, many recent items tie
    for a listed item (all of them with no decay; a repeated one at its places with it):
    the batch path names the same one as ``explain_items`` (the first of equals)."""
    monkeypatch.setattr(sequence_ranking, "_EXPLAINED_PAIRS", pairs)
    events = random_stream(3000, 40, 60, seed=5)  # short histories full of repeats
    model = trained(events, recency_decay=recency_decay)
    for links in model._successors:
        links.weights = array("d", [1.0] * len(links.weights))
    model._out_total[:] = 7.0
    users = sorted({e.user_id for e in events})
    assert any(len(set(history)) < len(history) for history in
               (model._histories.get(u)[0].tolist() for u in users))  # repeated items in some histories
    ranked = model.recommend_rows(users, 40)
    got = model.explain_rows(users, ranked.rows, ranked.index)
    assert got == [model.explain_items(u, [i for i, _ in ranking]) for u, ranking in ranked.rankings(users).items()]
    assert sum(reason.startswith("often clicked after") for user in got for _, reason in user) > 100


def test_a_checkpoint_holds_the_successors_as_arrays() -> None:
    """Pickled, the successors are three flat arrays (no object per item, no sources); the
    copy ranks, explains, shares and forgets as the original, and a pickle of the objects
    (checkpoints from before) still loads."""
    events = random_stream(3000, 80, 300, seed=4)
    model = trained(events[:2000], max_successors=6)
    state = model.__getstate__()
    assert "_successors" not in state and "_sources" not in state
    assert [type(part) for part in state["_successor_table"]] == [np.ndarray] * 3
    old_style = Sequential.__new__(Sequential)
    old_style.__setstate__(pickle.loads(pickle.dumps(dict(model.__dict__))))
    users = ["nobody", *sorted({e.user_id for e in events})]
    for twin in (pickle.loads(pickle.dumps(model)), old_style):
        assert twin._sources == model._sources
        assert [(list(a.rows), list(a.weights), a.pos) for a in twin._successors] == \
               [(list(a.rows), list(a.weights), a.pos) for a in model._successors]
    twins = [model, pickle.loads(pickle.dumps(model)), old_style]
    for twin in twins:
        twin.learn_many(events[2000:])
        twin.forget_items(["i3", "i7"])
    ranked = [twin.recommend_rows(users, 30) for twin in twins]
    for other in ranked[1:]:
        assert np.array_equal(other.rows, ranked[0].rows) and np.array_equal(other.scores, ranked[0].scores)
    reasons = [twin.explain_rows(users, ranked[0].rows, ranked[0].index) for twin in twins]
    assert reasons[1] == reasons[0] == reasons[2]
    deltas = [twin.item_delta() for twin in twins]
    for delta in deltas[1:]:
        assert delta.keys() == deltas[0].keys()
        assert all(np.array_equal(delta[key], deltas[0][key]) for key in delta)
