"""The SASRec-style sequential model: planted sequences, batch ranking, determinism,
capabilities, explanations, forgetting and shared dense weights. (The contract, sharing and
expiry suites run it too: tests/test_models.py, test_item_sharing.py, test_expiry.py.)"""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from online_models import capabilities, make_model
from online_models.sasrec import SASRec, initial_dense
from online_models.trending import Trending
from core.schema import Event
from tests.test_item_sharing import STREAM, exchange, half, travel

torch.set_num_threads(1)

SMALL = {"n_factors": 16, "window": 5, "batch_size": 16, "n_negatives": 16, "seed": 7}


def sessions(patterns: list[str], n_users: int, start: int = 0) -> list[Event]:
    """Users ``s{n}`` each click one pattern (a string of one-letter items) in order, the
    users' clicks interleaved in time."""
    events, t = [], 0.0
    for n in range(start, start + n_users):
        pattern = patterns[n % len(patterns)]
        for step, item in enumerate(pattern):
            events.append(Event(user_id=f"s{n}", item_id=item, type="click", ts=float(n + 1000 * step)))
            t += 1
    return sorted(events, key=lambda e: e.ts)


def top(model: SASRec, user: str, k: int = 3, exclude=None) -> list[str]:
    return [item for item, _ in model.recommend(user, k, exclude)]


def test_after_b_comes_c() -> None:
    """Learn a -> b -> c many times: a session at b gets c first, repeats allowed or not."""
    model = SASRec(**SMALL)
    model.learn_many(sessions(["abc", "xyz"], 300))
    model.learn_many([Event(user_id="probe", item_id=i, type="click", ts=1e5 + n) for n, i in enumerate("ab")])
    assert top(model, "probe", 1) == ["c"]
    assert top(model, "probe", 1, {"a", "b"}) == ["c"]
    model.learn_one(Event(user_id="other", item_id="y", type="click", ts=2e5))
    assert top(model, "other", 1) == ["z"]


def test_the_item_before_the_last_one_counts() -> None:
    """a -> b -> c and d -> b -> e: what follows b depends on what came before it, which an
    order-free or last-item-only model cannot tell."""
    model = SASRec(**SMALL)
    model.learn_many(sessions(["abc", "dbe"], 600))
    for first, want in (("a", "c"), ("d", "e")):
        user = f"probe-{first}"
        model.learn_many([Event(user_id=user, item_id=i, type="click", ts=1e5) for i in (first, "b")])
        assert top(model, user, 1, {first, "b"}) == [want]


def test_recommend_many_equals_recommend() -> None:
    model = SASRec(**SMALL)
    model.learn_many(STREAM)
    users = sorted({e.user_id for e in STREAM})[:9] + ["never-seen"]
    seen: dict[str, set[str]] = {}
    for e in STREAM:
        seen.setdefault(e.user_id, set()).add(e.item_id)
    exclude = {u: seen[u] for u in users[::2] if u in seen}
    exclude["never-seen"] = {"A1", "no-such-item"}
    many = model.recommend_many(users, 15, exclude)
    for user in users:
        one = model.recommend(user, 15, exclude.get(user))
        assert [i for i, _ in many[user]] == [i for i, _ in one], user
        assert [s for _, s in many[user]] == pytest.approx([s for _, s in one], rel=1e-5, abs=1e-6)
        assert not {i for i, _ in one} & exclude.get(user, set())


def test_same_seed_same_model_other_seed_another() -> None:
    a, b, c = SASRec(**SMALL), SASRec(**SMALL), SASRec(**{**SMALL, "seed": 8})
    for model in (a, b, c):
        model.learn_many(STREAM)
    assert torch.equal(a._dense, b._dense) and torch.equal(a._item_vecs, b._item_vecs)
    assert a.recommend("a1", 10) == b.recommend("a1", 10)
    assert not torch.equal(a._dense, c._dense)


def test_pickled_mid_batch_learns_on_alike() -> None:
    """Queued events (not stepped yet) travel in the pickle; the twin steps them alike."""
    model = SASRec(**SMALL)
    model.learn_many(STREAM[:100])
    assert model._pending
    twin = pickle.loads(pickle.dumps(model))
    for m in (model, twin):
        m.learn_many(STREAM[100:])
    assert torch.equal(model._dense, twin._dense)
    assert model.recommend("b2", 10) == twin.recommend("b2", 10)


def test_capabilities() -> None:
    model = make_model("sasrec")
    for capability in (capabilities.ForgetsUsers, capabilities.ForgetsItems, capabilities.Explains,
                       capabilities.SimilarItems, capabilities.HandsOverUsers, capabilities.SharesItems,
                       capabilities.UsesPopularity):
        assert isinstance(model, capability), capability.__name__


def test_the_popularity_it_is_handed_is_the_one_it_reads() -> None:
    """Handed its owner's trending, sasrec neither learns nor shares a popularity of its own,
    and ranks as it does with its own; one of other hyperparameters is declined."""
    own, handed, popularity = SASRec(**SMALL), SASRec(**SMALL), Trending()
    assert handed.use_popularity(popularity)
    assert not SASRec(**SMALL, half_life_s=None).use_popularity(Trending())
    for event in STREAM:
        popularity.learn_one(event)
        handed.learn_one(event)
        own.learn_one(event)
    assert handed._trending is popularity
    assert not any(key.startswith("popularity/") for key in handed.item_delta())
    assert any(key.startswith("popularity/") for key in own.item_delta())
    assert handed.recommend("a1", 10) == own.recommend("a1", 10)


def test_explanations_name_the_users_recent_items() -> None:
    model = SASRec(**SMALL)
    model.learn_many(sessions(["abc", "xyz"], 200))
    model.learn_many([Event(user_id="probe", item_id=i, type="click", ts=1e5 + n) for n, i in enumerate("ab")])
    items = [i for i, _ in model.recommend("probe", 12)]
    explained = model.explain_items("probe", items + ["no-such-item"])
    assert len(explained) == len(items) + 1 and {strategy for strategy, _ in explained} == {"sasrec"}
    for item, (_, reason) in zip(items, explained):
        if item in "ab":
            assert reason == "in your recent items"
        elif item == "c":
            assert reason == "often viewed after b, which you viewed"
        else:
            assert reason in ("often viewed after a, which you viewed", "often viewed after b, which you viewed")
    assert explained[-1] == ("sasrec", None)
    assert model.explain_items("never-seen", items[:2]) == [("trending", "popular now")] * 2


def test_similar_items_follow_the_sequences() -> None:
    model = SASRec(**SMALL)
    model.learn_many(sessions(["abc", "xyz"], 300))
    assert [i for i, _ in model.similar_items("a", 1)] == ["b"]
    assert [i for i, _ in model.similar_items("y", 1)] == ["z"]
    assert "a" not in [i for i, _ in model.similar_items("a", 5)]
    assert model.similar_items("no-such-item") == []


def test_forgotten_items_leave_sequences_and_steps() -> None:
    model = SASRec(**SMALL)
    model.learn_many(sessions(["abcd"], 40))
    model.forget_items(["b"])
    assert all(model._items.get("b") is None for _ in range(1))
    assert all(model._items.ids[r] is not None for recent in model._recent.values() for r in recent)
    held = model._buf_hist[: model._buf_len]
    row_gone = 1  # b took the second row
    assert not (held == row_gone).any()
    for hist in held:  # gaps closed: the used entries come first
        used = hist >= 0
        assert not (~used[:-1] & used[1:]).any()
    model.learn_many(sessions(["acd"], 40, start=100))  # steps that touch no freed row
    assert not model._item_vecs[row_gone].any() and model._item_bias[row_gone, 0] == -torch.inf
    assert "b" not in [i for i, _ in model.recommend("s1", 100)]


def test_split_replicas_share_the_dense_weights() -> None:
    """Two replicas that exchange deltas hold the same dense weights (up to float sums in
    another order), and users handed over as npz rank on the new owner as on the old."""
    replicas = [SASRec(**SMALL), SASRec(**SMALL)]
    for start in range(0, len(STREAM), 25):
        chunk = STREAM[start : start + 25]
        for n, replica in enumerate(replicas):
            replica.learn_many([e for e in chunk if half(e.user_id) == n])
        exchange(replicas)
    owner, other = replicas
    assert not torch.equal(owner._dense, initial_dense(owner.n_factors, owner.window, owner.n_layers, owner.seed,
                                                       owner.init_std))
    assert torch.allclose(owner._dense, other._dense, atol=1e-5)
    assert np.size(owner.item_delta()["dense"]) == 0  # what was merged in is not reported back
    users = sorted({e.user_id for e in STREAM if half(e.user_id) == 0})
    other.import_users(travel(owner.export_users(users)))
    for user in users:
        want, got = owner.recommend(user, 5), dict(other.recommend(user, 100))
        assert [got[i] for i, _ in want] == pytest.approx([s for _, s in want], rel=1e-3, abs=1e-4)
