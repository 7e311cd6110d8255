"""A conformance suite every streamrec model passes, in the manner of River's ``utils.estimator_checks``.

``yield_checks(model)`` gives the checks that apply to a model: the contract's for every
model, and one per capability the model declares (an ``isinstance`` check against the
Protocols of :mod:`online_models.capabilities`; a model without a capability is skipped by
declaration, never by catching an exception). ``check_model(model)`` runs them all. Each
check takes the model as an unfitted template and works on clones of it, so the template
is never changed.

>>> from online_models.trending import Trending
>>> check_model(Trending(half_life_s=None))
>>> [check.__name__ for check in yield_checks(Trending())][:3]
['check_learn_one_is_pure', 'check_nothing_learned', 'check_ranking']
"""

from __future__ import annotations

import copy
import dataclasses
import io
import pickle
import random
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from online_models.base import Recommender
from online_models.capabilities import (Explains, ExplainsRows, ForgetsItems, ForgetsUsers, HandsOverUsers, LearnsItems,
                                        ReportsArms, ReportsSizes, SharesItems, SimilarItems, UsesPopularity)

Check = Callable[[Recommender], None]


@dataclasses.dataclass
class Interaction:
    """An event as the checks feed it (``core.schema.Event`` is not imported: models are pure)."""

    user_id: str
    item_id: str
    type: str
    ts: float
    value: float | None = None
    context: dict | None = None


TYPES = ("view", "click", "add_to_cart", "purchase")


def group_stream(n_users: int = 8, n_items: int = 16, per_user: int = 10, seed: int = 0) -> list[Interaction]:
    """Users ``a*`` meet items ``A*``, users ``b*`` items ``B*`` (rated 5), each also rates
    two items of the other group 1; all interleaved in time, every event type present."""
    rng = random.Random(seed)
    todo = []
    for group, other in (("a", "B"), ("b", "A")):
        for u in range(n_users):
            events = [(f"{group}{u}", f"{group.upper()}{i}", 5.0) for i in rng.sample(range(n_items), per_user)]
            events += [(f"{group}{u}", f"{other}{i}", 1.0) for i in rng.sample(range(n_items), 2)]
            rng.shuffle(events)
            todo.append(events)
    out, ts = [], 0.0
    while any(todo):
        user, item, value = rng.choice([e for e in todo if e]).pop()
        ts += 1.0
        kind = rng.choice(TYPES) if value > 1 else "view"
        out.append(Interaction(user, item, kind, ts, value, {"page": "home"}))
    return out


STREAM = group_stream()
LEARN, LATER = STREAM[:-20], STREAM[-20:]
USERS = ["a0", "b3", "a5", "never-seen"]


def _seen(events: list[Interaction]) -> dict[str, set[str]]:
    seen: dict[str, set[str]] = {}
    for event in events:
        seen.setdefault(event.user_id, set()).add(event.item_id)
    return seen


SEEN = _seen(LEARN)


def _trained(model: Recommender, events: list[Interaction] = LEARN) -> Recommender:
    fresh = model.clone()
    for event in events:
        fresh.learn_one(event)
    return fresh


def _lists(model: Recommender, users: list[str] = USERS, k: int = 10) -> dict[str, list[str]]:
    return {u: [item for item, _ in model.recommend(u, k, SEEN.get(u))] for u in users}


def _renamed(events: list[Interaction], old: str, new: str, field: str) -> list[Interaction]:
    return [dataclasses.replace(e, **{field: new}) if getattr(e, field) == old else e for e in events]


def _same_scores(got: list[tuple[str, float]], want: list[tuple[str, float]], rel: float) -> None:
    assert [i for i, _ in got] == [i for i, _ in want], f"{got} != {want}"
    assert np.allclose([s for _, s in got], [s for _, s in want], rtol=rel, atol=1e-6), f"{got} != {want}"


# -- the contract ----------------------------------------------------------------------
def check_learn_one_is_pure(model: Recommender) -> None:
    """``learn_one`` leaves the interaction as it was."""
    fresh = model.clone()
    for event in LEARN[:5]:
        before = copy.deepcopy(event)
        fresh.learn_one(event)
        assert event == before, f"learn_one changed {before} into {event}"


def check_nothing_learned(model: Recommender) -> None:
    """A model with nothing learned ranks nothing."""
    assert model.clone().recommend("anyone", 5) == []
    assert model.clone().recommend_many(["anyone"], 5) == {"anyone": []}


def check_ranking(model: Recommender) -> None:
    """Every user gets a list; ``exclude`` honoured, scores sorted, no duplicates, any ``k``."""
    fitted = _trained(model)
    catalogue = {e.item_id for e in LEARN}
    for user in USERS:
        ranked = fitted.recommend(user, 10, SEEN.get(user))
        assert ranked, f"{user} got no list"
        items, scores = [i for i, _ in ranked], [s for _, s in ranked]
        assert not set(items) & SEEN.get(user, set()), f"{user} got an excluded item"
        assert scores == sorted(scores, reverse=True) and len(set(items)) == len(items)
    everything = fitted.recommend("a0", 10_000, {"A0"})
    assert 0 < len(everything) <= len(catalogue) and "A0" not in {i for i, _ in everything}
    assert len({i for i, _ in everything}) == len(everything)
    assert fitted.recommend("a0", 0) == []


def check_unseen_ids(model: Recommender) -> None:
    """Unknown ids in ``exclude``, and new users and items while learning, are welcome."""
    fitted = _trained(model)
    fitted.recommend("a0", 5, {"no-such-item"})
    fitted.learn_one(Interaction("brand-new-user", "brand-new-item", "click", 10_000.0))
    assert fitted.recommend("brand-new-user", 5) and fitted.recommend("another-new-user", 5)


def check_recommend_many_is_recommend(model: Recommender) -> None:
    """``recommend_many`` gives each user what ``recommend`` gives."""
    fitted = _trained(model)
    many = fitted.recommend_many(USERS, 10, SEEN)
    assert {u: [i for i, _ in many[u]] for u in USERS} == _lists(fitted)


def check_learn_many_is_learn_one(model: Recommender) -> None:
    """``learn_many`` on micro-batches learns what ``learn_one`` in order does."""
    batched = model.clone()
    for start in range(0, len(LEARN), 37):
        batched.learn_many(LEARN[start : start + 37])
    assert _lists(batched) == _lists(_trained(model))


def check_pickle_round_trip(model: Recommender) -> None:
    """A pickled model ranks as the original, now and after both learn more."""
    fitted = _trained(model)
    twin = pickle.loads(pickle.dumps(fitted))
    assert _lists(twin) == _lists(fitted)
    for event in LATER:
        fitted.learn_one(event)
        twin.learn_one(event)
    assert _lists(twin) == _lists(fitted)


def check_seeded(model: Recommender) -> None:
    """The same hyperparameters (seed included) learn the same model."""
    assert _lists(_trained(model)) == _lists(_trained(model))


def check_clone(model: Recommender) -> None:
    """``clone`` is unfitted, with the same hyperparameters and ``repr``."""
    twin = _trained(model).clone()
    assert type(twin) is type(model) and twin._get_params() == model._get_params()
    assert twin.recommend("a0", 5) == [] and repr(twin) == repr(model)


# -- capabilities ----------------------------------------------------------------------
def check_forget_user(model: Recommender) -> None:
    """A forgotten user is ranked as by a model that met their events under another name
    and forgot that name: nothing of them is left but the item state they taught."""
    fitted, twin = _trained(model), _trained(model, _renamed(LEARN, "a0", "someone-else", "user_id"))
    fitted.forget_user("a0")
    twin.forget_user("someone-else")
    for user in ("a0", "never-seen"):
        assert fitted.recommend(user, 10) == twin.recommend(user, 10), f"{user} is still known"
    fitted.learn_one(Interaction("a0", "A1", "view", 20_000.0))
    assert fitted.recommend("a0", 5)


def check_forget_items(model: Recommender) -> None:
    """Forgotten items leave every list and free their state (unknown ids are skipped);
    they come back as new items when events name them again."""
    gone = ["A1", "B2"]
    fitted = _trained(model)
    before = fitted.state_sizes()["items"] if isinstance(fitted, ReportsSizes) else None
    fitted.forget_items(gone + ["never-met"])
    for user in USERS:
        assert not {i for i, _ in fitted.recommend(user, 100)} & set(gone), f"{user} still gets a forgotten item"
    if before is not None:
        assert fitted.state_sizes()["items"] == before - len(gone)
    twin = pickle.loads(pickle.dumps(fitted))
    for event in [Interaction("b1", "A1", "click", 30_000.0), Interaction("a1", "B2", "view", 30_001.0)]:
        fitted.learn_one(event)
        twin.learn_one(event)
    assert set(gone) <= {i for i, _ in fitted.recommend("never-seen", 100)}
    assert _lists(fitted) == _lists(twin)
    if before is not None:
        assert fitted.state_sizes()["items"] == before


def check_explain_items(model: Recommender) -> None:
    """One ``(strategy, reason)`` per item asked about."""
    fitted = _trained(model)
    for user in USERS:
        items = [item for item, _ in fitted.recommend(user, 5, SEEN.get(user))]
        explained = fitted.explain_items(user, items)
        assert len(explained) == len(items)
        assert all(isinstance(s, str) and (r is None or isinstance(r, str)) for s, r in explained)


def check_explain_rows(model: Recommender) -> None:
    """A batch of lists explained at once says what ``explain_items`` says of each, on the
    rows of the model's own index and on those of another (an item it never met included),
    with holes in a list as well as after it."""
    from online_models._arrays import IdIndex

    fitted = _trained(model)
    users = USERS
    lists = {user: [item for item, _ in fitted.recommend(user, 5, SEEN.get(user))] for user in users}
    index = IdIndex()
    rows = np.full((len(users), 6), -1, dtype=np.int64)
    for j, user in enumerate(users):
        items = [*lists[user], "no-such-item"][: 6 - j % 2]
        rows[j, : len(items)] = [index.add(item) for item in items]
    rows[1::2, 1] = -1  # a hole inside a list: a composite hands each part only the cells it explains
    got = fitted.explain_rows(users, rows, index)
    assert got == [fitted.explain_items(user, [index.ids[r] for r in rows[j] if r >= 0]) for j, user in enumerate(users)]


def check_similar_items(model: Recommender) -> None:
    """An item is never similar to itself; an unknown item has no similar ones."""
    fitted = _trained(model)
    for item in ("A1", "B3"):
        similar = fitted.similar_items(item, 5)
        assert len(similar) <= 5 and item not in {i for i, _ in similar}
    assert fitted.similar_items("no-such-item", 5) == []


def check_hands_over_users(model: Recommender) -> None:
    """Users exported by one replica (their item state merged in where the model shares
    it) are ranked by the replica that imports them as they were."""
    old, users = _trained(model), ["a1", "b2"]
    new = model.clone()
    if isinstance(model, SharesItems):
        new.merge_item_delta(_through_npz(old.item_delta()))
    else:
        new = _trained(model, [e for e in LEARN if e.user_id not in users])
    state = pickle.loads(pickle.dumps(old.export_users(users + ["unknown"])))
    new.import_users(state)
    for user in users:
        _same_scores(new.recommend(user, 10), old.recommend(user, 10), 1e-4)


def check_shares_items(model: Recommender) -> None:
    """An unchanged model's delta is empty; two replicas that learn half the users each and
    merge each other's deltas (through npz) hold the same item state: they rank a new user
    alike, as one model would."""
    fresh = model.clone()
    assert all(np.size(v) == 0 for v in fresh.item_delta().values() if isinstance(v, np.ndarray))
    replicas = [model.clone(), model.clone()]
    for start in range(0, len(LEARN), 25):
        chunk = LEARN[start : start + 25]
        for n, replica in enumerate(replicas):
            replica.learn_many([e for e in chunk if hash_half(e.user_id) == n])
        deltas = [_through_npz(r.item_delta()) for r in replicas]
        replicas[0].merge_item_delta(deltas[1])
        replicas[1].merge_item_delta(deltas[0])
    assert all(np.size(v) == 0 for v in replicas[0].item_delta().values() if isinstance(v, np.ndarray))
    # a model choosing among strategies (the agent) scores list positions: its strategies'
    # item state is compared instead
    pairs = [replicas]
    if isinstance(model, ReportsArms):
        pairs = [(replicas[0].models[name], replicas[1].models[name]) for name in replicas[0].models]
    for one, other in pairs:
        first, second = (dict(r.recommend("never-seen", 1_000)) for r in (one, other))  # ties go by row
        assert first.keys() == second.keys()
        assert np.allclose([second[i] for i in first], list(first.values()), rtol=1e-3, atol=1e-6)


def check_uses_popularity(model: Recommender) -> None:
    """Handed a popularity that its owner learns first, a model ranks as it does with its own."""
    from online_models.trending import Trending

    shared = model.clone()
    popularity = Trending()
    if not shared.use_popularity(popularity):
        return  # declined: its own popularity has other hyperparameters
    for event in LEARN:
        popularity.learn_one(event)
        shared.learn_one(event)
    own = _trained(model)
    for user in USERS:
        _same_scores(shared.recommend(user, 10, SEEN.get(user)), own.recommend(user, 10, SEEN.get(user)), 1e-9)


def check_learn_item(model: Recommender) -> None:
    """Item metadata is taken without changing it, for known and new items alike."""
    fitted = _trained(model)
    for item_id in ("A1", "new-item"):
        metadata = {"title": "A title (1999)", "genres": "Drama|Comedy"}
        fitted.learn_item(item_id, metadata)
        assert metadata == {"title": "A title (1999)", "genres": "Drama|Comedy"}
    assert fitted.recommend("a0", 5)


def check_state_sizes(model: Recommender) -> None:
    """Counts of users and items held, within what was learned."""
    sizes = _trained(model).state_sizes()
    assert 0 <= sizes.get("users", 0) <= len({e.user_id for e in LEARN})
    assert 0 < sizes["items"] <= len({e.item_id for e in LEARN})


def hash_half(user_id: str) -> int:
    """Which of two replicas owns a user (stable across processes)."""
    return sum(user_id.encode()) % 2


def _through_npz(delta: dict[str, Any]) -> dict[str, Any]:
    """A flat delta or export the way workers send it: numpy's npz, pickle refused."""
    buffer = io.BytesIO()
    np.savez(buffer, **delta)
    buffer.seek(0)
    with np.load(buffer, allow_pickle=False) as loaded:
        return {key: loaded[key] for key in loaded.files}


_BY_CAPABILITY: list[tuple[type, Check]] = [
    (ForgetsUsers, check_forget_user),
    (ForgetsItems, check_forget_items),
    (Explains, check_explain_items),
    (ExplainsRows, check_explain_rows),
    (SimilarItems, check_similar_items),
    (HandsOverUsers, check_hands_over_users),
    (SharesItems, check_shares_items),
    (UsesPopularity, check_uses_popularity),
    (LearnsItems, check_learn_item),
    (ReportsSizes, check_state_sizes),
]


def yield_checks(model: Recommender) -> Iterator[Check]:
    """The checks that apply to ``model``: the contract's, then one per declared capability."""
    yield check_learn_one_is_pure
    yield check_nothing_learned
    yield check_ranking
    yield check_unseen_ids
    yield check_recommend_many_is_recommend
    if model.learn_many_is_learn_one:
        yield check_learn_many_is_learn_one
    yield check_pickle_round_trip
    yield check_seeded
    yield check_clone
    for capability, check in _BY_CAPABILITY:
        if isinstance(model, capability):
            yield check


def check_model(model: Recommender) -> None:
    """Run every check that applies to ``model`` (an ``AssertionError`` names the first failure)."""
    for check in yield_checks(model):
        check(model)
