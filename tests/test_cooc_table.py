"""NeighbourTable against one WeightedRow per row updated one link at a time, and
Cooc.learn_many against learn_one event by event."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from core.schema import Event
from online_models import make_model
from online_models._arrays import WeightedRow
from online_models.cooc_table import NeighbourTable


def assert_same_rows(table: NeighbourTable, reference: dict[int, WeightedRow]) -> None:
    for x, row in reference.items():
        cols, weights = table.row(x)
        assert cols.tolist() == list(row.rows)  # same neighbours in the same order
        assert weights.tolist() == list(row.weights)  # the same sums, bit for bit
        assert table.stale[x] == row.stale


def test_table_adds_and_discards_as_one_link_after_the_other() -> None:
    rng = np.random.default_rng(3)
    table, reference = NeighbourTable(), {x: WeightedRow() for x in range(60)}
    for step in range(40):
        n = int(rng.integers(1, 400))
        rows = rng.integers(0, 60, n)
        cols = rng.integers(0, 60, n)
        weights = rng.random(n) * rng.choice([1e-3, 1.0, 1e3], n)  # magnitudes that round differently
        table.add_many(rows, cols, weights)
        for x, c, w in zip(rows.tolist(), cols.tolist(), weights.tolist()):
            reference[x].add(c, w)
        if step % 7 == 3:  # links removed: the last takes the hole, as WeightedRow.discard
            for x, c in zip(rng.integers(0, 60, 30).tolist(), rng.integers(0, 60, 30).tolist()):
                table.discard(x, c)
                reference[x].discard(c)
        if step % 11 == 5:
            table = pickle.loads(pickle.dumps(table))
        assert_same_rows(table, reference)
    assert table.used >= table.live_room >= sum(len(r.rows) for r in reference.values())


def test_table_strongest_follows_the_weights() -> None:
    table = NeighbourTable()
    table.add_many(np.zeros(30, dtype=np.int64), np.arange(1, 31), np.arange(30, dtype=np.float64))
    top = table.strongest(0, 5)
    assert sorted(table.row(0)[0][top].tolist()) == [26, 27, 28, 29, 30]
    # a small change keeps the cached positions; a large one (over a tenth and 16) refreshes them
    table.add_many(np.zeros(1, dtype=np.int64), np.array([1]), np.array([100.0]))
    assert table.strongest(0, 5) is top
    table.add_many(np.zeros(20, dtype=np.int64), np.full(20, 2), np.full(20, 10.0))
    assert sorted(table.row(0)[0][table.strongest(0, 5)].tolist()) == [1, 2, 28, 29, 30]


def events(n: int, n_items: int, n_users: int, seed: int) -> list[Event]:
    rng = np.random.default_rng(seed)
    items = np.where(rng.random(n) < 0.5, (rng.zipf(1.3, n) - 1) % n_items, rng.integers(0, n_items, n))
    users = rng.integers(0, n_users, n)
    kinds = rng.choice(["view", "click", "add_to_cart", "purchase"], n)
    return [Event(user_id=f"u{u}", item_id=f"i{i}", type=str(k), ts=float(j))
            for j, (u, i, k) in enumerate(zip(users.tolist(), items.tolist(), kinds.tolist()))]


@pytest.mark.parametrize("n_items", [300, 6000])  # the dense matrix, the sparse rows (and the move between)
@pytest.mark.parametrize("shared", [False, True])
def test_cooc_learn_many_is_learn_one_in_turn(n_items: int, shared: bool) -> None:
    stream = events(12_000, n_items, 400, seed=n_items)
    one, many = make_model("cooc", window=5), make_model("cooc", window=5)
    if shared:  # the pair log of item_delta is on
        one.item_delta(), many.item_delta()
    for start in range(0, len(stream), 1000):
        batch = stream[start : start + 1000]
        for event in batch:
            one.learn_one(event)
        many.learn_many(batch)
    assert np.array_equal(one._counts, many._counts) and np.array_equal(one._inv_norm, many._inv_norm)
    assert np.array_equal(one._recent.rows, many._recent.rows) and one._recent.sizes == many._recent.sizes
    assert np.array_equal(one._recent.values, many._recent.values)
    if n_items < 4096:
        assert np.array_equal(one._dense, many._dense)
        # the links learn_many kept are the nonzero cells a scan finds
        kept, scanned = many._dense_links, NeighbourTable.of_dense(many._dense)
        assert all(np.array_equal(np.sort(kept.row(x)[0]), scanned.row(x)[0]) for x in range(len(many._items)))
    else:
        assert many._dense is None
        a, b = one._neighbours.links(len(one._items)), many._neighbours.links(len(many._items))
        assert all(np.array_equal(x, y) for x, y in zip(a, b))
    users = [f"u{u}" for u in range(0, 400, 7)]
    assert one.recommend_many(users, 20) == many.recommend_many(users, 20)
    # forgotten items leave both alike, links included, and learning goes on alike
    gone = [f"i{i}" for i in range(0, 60, 4)]
    one.forget_items(gone), many.forget_items(gone)
    more = events(3000, n_items, 400, seed=n_items + 1)
    for event in more:
        one.learn_one(event)
    many.learn_many(more)
    assert one.recommend_many(users, 20) == many.recommend_many(users, 20)
    assert [one.similar_items(f"i{i}", 10) for i in range(30)] == [many.similar_items(f"i{i}", 10) for i in range(30)]
    if shared:
        d1, d2 = one.item_delta(), many.item_delta()
        assert d1.keys() == d2.keys() and all(np.array_equal(d1[k], d2[k]) for k in d1)


@pytest.mark.parametrize("links_kept", [True, False])
@pytest.mark.parametrize("n_items", [64, 300])  # a full matrix (pickled as is), a mostly empty one (its cells)
def test_a_pickled_dense_cooc_keeps_its_matrix(links_kept: bool, n_items: int) -> None:
    model = make_model("cooc", window=5)
    model.learn_many(events(3000, n_items, 400, seed=5))
    if not links_kept:  # learn_one drops the links: the cells are then found by a scan
        model.learn_one(Event(user_id="u1", item_id="i2", type="view", ts=1e6))
    kept = model.__getstate__()["_dense"]
    assert isinstance(kept, dict) == (n_items == 300)
    twin = pickle.loads(pickle.dumps(model))
    assert twin._dense.dtype == np.float32 and twin._dense.shape == model._dense.shape
    assert np.array_equal(twin._dense, model._dense)
    assert (twin._dense_links is None) == (not links_kept)
    users = [f"u{u}" for u in range(0, 400, 9)]
    assert twin.recommend_many(users, 10) == model.recommend_many(users, 10)
    more = events(500, n_items, 400, seed=6)  # and both learn on alike
    twin.learn_many(more), model.learn_many(more)
    assert np.array_equal(twin._dense, model._dense)
