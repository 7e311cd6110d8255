"""The fast ranking paths rank exactly as their plain definitions do.

- ``top_k``/``top_k_of``/``IdIndex.top``/``top_rows``: the ``k`` best scores, ties to the lower row.
- ``SeenItems``: converting only new ids gives the rows a plain set gives.
- ``Cooc.recommend_many`` (all users' neighbourhoods summed at once) equals per-user
  ``recommend``, and on the sparse path both equal a pure-Python scoring of the model state.
- ``Trending``: the cached popular list and the batched ranking equal ranking everything.
- ``Cooc.explain_rows`` (a batch of lists explained on arrays) says what ``explain_items`` says.
"""

from __future__ import annotations

import math
import random

import numpy as np
import pytest

import online_models.cooc as cooc_module
import online_models.cooc_ranking as cooc_ranking
import online_models.trending as trending_module
from core.schema import Event
from online_models import make_model
from online_models._arrays import IdIndex, SeenItems, order_by_user_score_row, top_k, top_k_of, top_rows
from online_models.evaluation import prequential

TYPES = ("view", "click", "add_to_cart", "purchase")


def best_rows(scores, k: int, rows=None) -> list[int]:
    """The definition: rows of the k best rankable scores, score descending, row ascending."""
    rows = range(len(scores)) if rows is None else rows
    ranked = sorted((-s, r) for r, s in zip(rows, scores) if s > -math.inf)
    return [r for _, r in ranked[:k]]


@pytest.mark.parametrize("seed", range(6))
def test_top_k_gives_ties_to_the_lower_row(seed: int) -> None:
    rng = np.random.default_rng(seed)
    for _ in range(150):
        n = int(rng.choice([1, 7, 70, 1_000, 20_000, 40_000]))  # the last two take the prefilter
        scores = rng.integers(0, int(rng.choice([2, 30, 10**6])), n).astype(np.float64)  # many ties
        if rng.random() < 0.3:
            scores[rng.integers(0, n, max(1, n // 3))] = -np.inf
        if rng.random() < 0.1:
            scores[rng.integers(0, n, 3)] = np.nan
        k = int(rng.choice([1, 3, 10, 100, n + 1]))
        want = best_rows(scores, k)
        rows, vals = top_k(scores.copy(), k)
        assert rows.tolist() == want and vals.tolist() == scores[want].tolist()
        index = IdIndex()
        for i in range(n):
            index.add(f"i{i}")
        assert index.top(scores.copy(), k) == [(f"i{r}", scores[r]) for r in want]
        assert sorted(top_rows(scores, k).tolist()) == sorted(want)
        subset = rng.permutation(n)[: max(1, n // 2)]
        rows, _ = top_k_of(subset, scores[subset].copy(), k)
        assert rows.tolist() == best_rows(scores[subset], k, subset.tolist())
        assert sorted(top_rows(scores[subset], k, subset).tolist()) == sorted(rows.tolist())


def test_top_k_masks_excluded_rows() -> None:
    scores = np.array([0.5, 0.9, 0.5, 0.7, 0.5])
    assert top_k(scores.copy(), 3, np.array([1, 0]))[0].tolist() == [3, 2, 4]
    assert top_k_of(np.array([4, 2, 0]), scores[[4, 2, 0]].copy(), 2, np.array([0]))[0].tolist() == [2, 4]


@pytest.mark.parametrize("seed", range(4))
def test_order_by_user_score_row_is_the_three_key_lexsort(seed: int) -> None:
    rng = np.random.default_rng(seed)
    for size in (0, 1, 7, 500, 20_000):
        # distinct (user, row) pairs, as a ranking's entries are
        pairs = rng.choice(40 * (10**6 if seed == 3 else 3000), size, replace=False)
        users, rows = np.divmod(pairs, 10**6 if seed == 3 else 3000)
        scores = rng.choice([0.0, -0.0, 0.25, 1.5, -np.inf, np.inf], size) if seed % 2 else np.round(rng.random(size), 2)
        if seed == 2 and size:
            users[0] = 10**12  # the key would overflow: lexsort itself
        want = np.lexsort((rows, -scores, users))
        assert np.array_equal(order_by_user_score_row(users, scores, rows), want)


def test_seen_items_rows_match_a_plain_set() -> None:
    rng = random.Random(3)
    index, other = IdIndex(), IdIndex()
    seen, plain = SeenItems(), set()
    for step in range(400):
        item = f"i{rng.randrange(60)}"
        seen.add(item)
        plain.add(item)
        if rng.random() < 0.5:  # ids the index learns only later must show up then
            index.add(f"i{rng.randrange(80)}")
        other.add(f"i{rng.randrange(80)}")
        for idx in (index, other):  # one SeenItems serves several indexes
            assert sorted(idx.rows_of(seen).tolist()) == sorted(idx.rows_of(plain).tolist())
    assert len(seen) == len(plain) and set(seen) == plain and "i1" in seen
    with pytest.raises(ValueError):
        index.rows_of(seen)[0] = 5  # the cached rows are read-only
    # an index that gives rows to other ids must say so; then the cache starts over
    index.rows = {key: len(index.ids) - 1 - row for key, row in index.rows.items()}
    index.generation += 1
    assert sorted(index.rows_of(seen).tolist()) == sorted(index.rows_of(plain).tolist())


def random_stream(n: int, n_users: int, n_items: int, seed: int) -> list[Event]:
    rng = random.Random(seed)
    return [
        Event(user_id=f"u{rng.randrange(n_users)}", item_id=f"i{int(rng.paretovariate(0.7)) % n_items}",
              type=rng.choice(TYPES), ts=float(t))
        for t in range(n)
    ]


def seen_by(events: list[Event]) -> dict[str, set[str]]:
    seen: dict[str, set[str]] = {}
    for e in events:
        seen.setdefault(e.user_id, set()).add(e.item_id)
    return seen


def reference_cooc(model, user_id: str, k: int, exclude=()) -> list[tuple[str, float]]:
    """Cooc's sparse-path ranking, scored in plain Python from the model's state, uncapped."""
    n = len(model._items)
    top = model._trending.max_score()
    pop = model.popularity_weight / top if top > 0 else 0.0
    raw = model._trending.raw_scores()
    sums: dict[int, float] = {}
    factor = 1.0
    for row, _ in reversed(model.recent(user_id)):
        cols, weights = model._neighbours.row(row)
        for other, weight in zip(cols.tolist(), weights.tolist()):
            sums[other] = sums.get(other, 0.0) + weight * (factor / math.sqrt(model._counts[row]))
        factor *= model.recency_decay
    scores = [float(raw[x]) * pop + sums.get(x, 0.0) * float(model._inv_norm[x]) for x in range(n)]
    excluded = {model._items.get(i) for i in exclude}
    scores = [-math.inf if x in excluded else s for x, s in enumerate(scores)]
    return [(model._items.ids[x], scores[x]) for x in best_rows(scores, k)]


@pytest.fixture
def sparse(monkeypatch):
    """Small catalogues take the sparse paths; the scratch holds only a few users at a time."""
    monkeypatch.setattr(cooc_module, "_DENSE_ITEMS", 64)
    monkeypatch.setattr(cooc_ranking, "_SCRATCH_SLOTS", 1000)
    monkeypatch.setattr(cooc_ranking, "_CHUNK_CELLS", 300)  # the batch path ranks a few users per chunk
    monkeypatch.setattr(trending_module, "_DENSE_BELOW", 32)


@pytest.mark.parametrize("path", ["dense", "sparse"])
@pytest.mark.parametrize("max_neighbours", [None, 5])
def test_cooc_recommend_many_equals_recommend(request, path: str, max_neighbours) -> None:
    if path == "sparse":
        request.getfixturevalue("sparse")
    events = random_stream(3000, 80, 400, seed=11)
    model = make_model("cooc", max_neighbours=max_neighbours)
    model.learn_many(events[:2000])
    users = ["nobody", *sorted({e.user_id for e in events})]
    for start in range(2000, 3000, 250):  # a few micro-batches, as the worker runs them
        model.learn_many(events[start : start + 250])
        seen = seen_by(events[: start + 250])
        seen["nobody"] = {"i1", "i2", "never-learnt"}
        assert (model._dense is None) == (path == "sparse")
        for k in (1, 10, 60):
            for exclude in (None, seen):
                many = model.recommend_many(users, k, exclude)
                assert list(many) == users
                for user in users:
                    one = model.recommend(user, k, exclude.get(user) if exclude else None)
                    assert many[user] == one, (user, k)
                    assert len(one) == min(k, len(model._items) - len(model._items.rows_of(
                        exclude.get(user, ()) if exclude else ())))


@pytest.mark.parametrize("path", ["dense", "sparse"])
@pytest.mark.parametrize("max_neighbours", [None, 3])
def test_cooc_explain_rows_says_what_explain_items_says(request, path: str, max_neighbours) -> None:
    if path == "sparse":
        request.getfixturevalue("sparse")
        monkeypatch = request.getfixturevalue("monkeypatch")
        monkeypatch.setattr(cooc_ranking, "_EXPLAIN_CELLS", 50)  # a few listed items per chunk
    events = random_stream(3000, 60, 150, seed=4)
    model = make_model("cooc", max_neighbours=max_neighbours, window=6)
    model.learn_many(events[:2500])
    model.forget_user("u3")
    users = ["nobody", "u3", *sorted({e.user_id for e in events})]
    named_two = 0
    for start in (2500, 2750):
        model.learn_many(events[start : start + 250])
        ranked = model.recommend_rows(users, 15)
        got = model.explain_rows(users, ranked.rows, ranked.index)
        lists = ranked.rankings(users)
        for user, explained in zip(users, got):
            assert explained == model.explain_items(user, [item for item, _ in lists[user]]), user
            named_two += sum(1 for _, reason in explained if reason and " and " in reason)
        # the rows of another index (a blend's shared one), with an item cooc never learned
        other = IdIndex()
        other.add("never-learnt")
        rows = np.full((len(users), 16), -1, dtype=np.int64)
        for j, user in enumerate(users):
            items = ["never-learnt"] + [item for item, _ in lists[user]]
            rows[j, : len(items)] = [other.add(item) for item in items]
        got = model.explain_rows(users, rows, other)
        assert got == [model.explain_items(user, ["never-learnt", *(i for i, _ in lists[user])]) for user in users]
        assert got[0][0] == ("cooc", None)
    assert named_two > 0  # runners-up named too


@pytest.mark.usefixtures("sparse")
def test_cooc_sparse_path_ranks_the_whole_catalogue_exactly() -> None:
    events = random_stream(2500, 50, 300, seed=5)
    model = make_model("cooc", max_neighbours=None)
    model.learn_many(events)
    seen = seen_by(events)
    assert model._dense is None
    for user in ["u1", "u7", "u30", "nobody"]:
        for k in (1, 10, 200):
            assert model.recommend(user, k, seen.get(user)) == reference_cooc(model, user, k, seen.get(user, ()))
            assert model.recommend(user, k) == reference_cooc(model, user, k)


def test_cooc_state_from_before_the_recent_items_table() -> None:
    """Checkpoints that hold each user's recent items as a deque of (row, weight) still
    load, rank as before and go on learning alike."""
    import copy
    from collections import deque

    events = random_stream(2000, 60, 200, seed=3)
    model = make_model("cooc")
    model.learn_many(events[:1500])
    old_state = copy.deepcopy(vars(model))
    old_state["_recent"] = {user: deque(model.recent(user), maxlen=model.window)
                            for user in model._recent.users.rows}
    unpickled = type(model).__new__(type(model))
    unpickled.__setstate__(old_state)
    users = ["nobody", *sorted({e.user_id for e in events})]
    assert all(unpickled.recent(u) == model.recent(u) for u in users)
    unpickled.learn_many(events[1500:])
    model.learn_many(events[1500:])
    assert unpickled.recommend_many(users, 20) == model.recommend_many(users, 20)


def test_trending_cached_list_and_batch_rank_as_the_whole_catalogue(monkeypatch) -> None:
    """All-time counts tie a lot: the cached top list must still give ties to the lower row."""
    rng = random.Random(8)
    items = [f"i{i}" for i in range(600)]
    rng.shuffle(items)
    items += rng.sample(items, 300) + rng.sample(items, 100)  # counts 1, 2 or 3: ties everywhere
    events = [Event(user_id=f"u{rng.randrange(40)}", item_id=item, type="view", ts=float(t))
              for t, item in enumerate(items)]
    full = make_model("trending", half_life_s=None)
    monkeypatch.setattr(trending_module, "_DENSE_BELOW", 32)
    monkeypatch.setattr(trending_module, "_MIN_CACHE", 8)
    cached = make_model("trending", half_life_s=None)
    for start in range(0, len(events), 100):
        batch = events[start : start + 100]
        full.learn_many(batch)
        cached.learn_many(batch)
        seen = seen_by(events[: start + 100])
        users = sorted(seen)[:10]
        for k in (1, 5, 20):
            scores = full.scores()
            want = [(full._items.ids[r], scores[r]) for r in best_rows(scores, k)]
            assert cached.recommend("anyone", k) == want
            many = cached.recommend_many(users, k, seen)
            for user in users:
                assert many[user] == cached.recommend(user, k, seen[user]) == full.recommend(user, k, seen[user])


@pytest.mark.parametrize("name", ["cooc", "trending"])
def test_seen_items_and_sets_give_the_same_backtest(name: str) -> None:
    """The evaluator hands models ``SeenItems``; a plain set of the same ids ranks the same."""

    class WithSets:
        def __init__(self, model):
            self.model, self.name = model, model.name

        def learn_one(self, event):
            self.model.learn_one(event)

        def recommend(self, user_id, k=10, exclude=None):
            return self.model.recommend(user_id, k, set(exclude) if exclude is not None else None)

    events = random_stream(2000, 30, 150, seed=2)
    a = prequential(make_model(name), events, k=5)
    b = prequential(WithSets(make_model(name)), events, k=5)
    assert bytes(a.hits) == bytes(b.hits) and (a.hr, a.ndcg, a.coverage) == (b.hr, b.ndcg, b.coverage)
