"""``Trending.learn_many`` (sums on arrays) leaves the state ``learn_one`` in order leaves, bit for bit."""

from __future__ import annotations

import itertools
import pickle
import random

import numpy as np
import pytest

from core.schema import Event
from online_models.trending import Trending

TYPES = ("view", "click", "add_to_cart", "purchase")


def stream(n: int, seed: int, start: float = 1.7e9, step_s: float = 37.0, n_items: int = 300) -> list[Event]:
    rng = random.Random(seed)
    ts, events = start, []
    for _ in range(n):
        ts += rng.random() * step_s
        events.append(Event(f"u{rng.randrange(50)}", f"i{int(rng.paretovariate(1.2)) % n_items}",
                            rng.choice(TYPES), ts))
    return events


def state(model: Trending) -> dict:
    """Everything the model holds, with its arrays as bytes (capacity included)."""
    return {key: (value.dtype.str, value.shape, value.tobytes()) if isinstance(value, np.ndarray) else
            (sorted(value) if isinstance(value, set) else value)
            for key, value in vars(model).items() if key != "_items"} | {
        "ids": list(model._items.ids), "rows": dict(model._items.rows), "free": list(model._items.free)}


def learn_both(params: dict, batches: list[list[Event]], forget: list[str] = ()) -> tuple[Trending, Trending]:
    one, many = Trending(**params), Trending(**params)
    for n, batch in enumerate(batches):
        for event in batch:
            one.learn_one(event)
        many.learn_many(iter(batch) if n % 2 else batch)  # any iterable
        if n == 1 and forget:  # freed rows are taken again by new items
            one.forget_items(forget)
            many.forget_items(forget)
    return one, many


@pytest.mark.parametrize("params", [
    {},  # three days' half-life
    {"half_life_s": None},
    {"half_life_s": 600.0},  # rescales (e**50) within a batch now and then
    {"half_life_s": 3600.0, "event_weights": {"view": 0.5, "click": -1.0, "purchase": 4.0}},  # losses
])
def test_learn_many_leaves_learn_ones_state(params):
    events = stream(6000, seed=3, step_s=400.0 if params.get("half_life_s") == 600.0 else 37.0)
    cuts = [0, 1, 17, 500, 2000, 2001, 4000, 6000]
    batches = [events[a:b] for a, b in itertools.pairwise(cuts)]
    one, many = learn_both(params, batches, forget=["i1", "i7", "i3", "nowhere"])
    assert state(many) == state(one)
    assert pickle.dumps(many) == pickle.dumps(one)
    assert many.top(20) == one.top(20)


def test_learn_many_of_nothing_changes_nothing():
    model = Trending()
    model.learn_many([])
    assert state(model) == state(Trending())


def test_learn_many_ranks_as_learn_one_on_a_big_catalogue():
    """Past the dense size the cached top list and its dirty rows matter: the same top list."""
    events = stream(30_000, seed=5, n_items=9000)
    batches = [events[s : s + 2000] for s in range(0, len(events), 2000)]
    one, many = Trending(), Trending()
    for batch in batches:
        for event in batch:
            one.learn_one(event)
        many.learn_many(batch)
        assert many.top(50) == one.top(50)
    assert state(many) == state(one)


def test_a_loss_keeps_the_running_maximum():
    """``learn_one`` keeps the highest score ever reached, also when a loss lowers it later."""
    weights = {"purchase": 4.0, "click": -1.0}
    batch = [Event("u", "a", "purchase", 10.0), Event("u", "a", "click", 11.0), Event("u", "b", "click", 12.0)]
    one, many = learn_both({"half_life_s": None, "event_weights": weights}, [batch])
    assert many.max_score() == one.max_score() == 4.0
    assert state(many) == state(one)
