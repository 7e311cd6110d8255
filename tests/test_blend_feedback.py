"""Blend's part weights learned from feedback (``feedback_half_life``): where each event's
item stood in each part's last list for the user moves the weights, the same whichever
ranking path made the lists, with bounded memory, through pickles and forgetting."""

from __future__ import annotations

import pickle

import pytest

from core.schema import Event
from online_models.blend import Blend
from online_models.evaluation import prequential
from tests.test_batch_ranking import assert_same_ranking
from tests.test_ranking_paths import random_stream, seen_by

SMALL_EMBEDDINGS = {"n_factors": 8, "batch_size": 16, "n_negatives": 16}


def chains_in_a_crowd(n_sessions: int = 60) -> list[Event]:
    """Sessions that each walk the chain c0 -> c1 -> ... -> c5, between them a crowd of
    one-click users on the popular items p0..p2: ``sequence`` lists a session's next chain
    item first, ``trending`` the popular items."""
    events, t = [], 0.0
    for s in range(n_sessions):
        for step in range(6):
            events.append(Event(user_id=f"s{s}", item_id=f"c{step}", type="click", ts=t))
            for c in range(3):  # the crowd: more clicks on p0..p2 than on any chain item
                events.append(Event(user_id=f"crowd{s}-{step}-{c}", item_id=f"p{c}", type="click", ts=t + 0.1 * (c + 1)))
            t += 1.0
    return events


def chain_blend(**feedback) -> Blend:
    # trending weighs three times sequence: as given, the popular items come first
    feedback = {"feedback_half_life": None, **feedback}
    return Blend(models={"sequence": {}, "trending": {"half_life_s": None}}, weights={"sequence": 1.0, "trending": 3.0},
                 calibrated=(), **feedback)


def test_feedback_moves_weight_to_the_part_whose_lists_hold_the_next_items() -> None:
    events = chains_in_a_crowd()
    static = prequential(chain_blend(), events, k=1)
    model = chain_blend(feedback_half_life=20, feedback_prior=0.1)
    learned = prequential(model, events, k=1)
    factors = model.feedback_factors()
    assert factors["sequence"] > 1.5 and factors["trending"] < 0.5, factors
    assert static.hr < 0.05  # the popular items win every list
    assert learned.hr > 0.8, learned.hr  # after a few sessions, the chain's next item wins


def test_without_feedback_nothing_is_kept_and_the_weights_stay() -> None:
    model = chain_blend()
    prequential(model, chains_in_a_crowd(5), k=1)
    assert model._shown == {} and model.feedback_factors() == {"sequence": 1.0, "trending": 1.0}
    assert model._weight("trending") == 3.0
    with pytest.raises(ValueError, match="feedback_prior"):
        chain_blend(feedback_half_life=10, feedback_prior=0.0)


def _parts() -> dict:
    return {"cooc": {}, "embeddings": SMALL_EMBEDDINGS, "sequence": {}, "trending": {}}


def rank_both_ways(make_model) -> tuple[Blend, Blend]:
    """Two models from ``make_model``, one ranking by batches (``recommend_many``, the worker's
    path), one user by user (``recommend``), then learning the same events: both must rank
    alike, keep the same lists and credit alike at every step. Returns (batched, single)."""
    events = random_stream(4000, 60, 300, seed=2)
    first, later = events[:3000], events[3000:]
    batched, single = make_model(), make_model()
    for model in (batched, single):
        model.learn_many(first)
    users = sorted({e.user_id for e in events})
    seen = seen_by(first)
    for start in range(0, len(later), 250):
        chunk = later[start : start + 250]
        many = batched.recommend_many(users, 10, seen)
        for user in users:
            assert_same_ranking(many[user], single.recommend(user, 10, seen.get(user)))
        assert batched._shown == single._shown
        for model in (batched, single):
            model.learn_many(chunk)
        assert batched._credit == pytest.approx(single._credit)
    return batched, single


def test_both_ranking_paths_keep_the_same_lists_and_learn_the_same_weights() -> None:
    """Lists kept by ``recommend_rows`` (the worker's batches) and by ``recommend`` (one
    user) are the same, so feedback learns the same weights and both paths keep ranking alike."""
    batched, _ = rank_both_ways(lambda: Blend(models=_parts(), feedback_half_life=50, feedback_depth=10))
    factors = batched.feedback_factors()
    assert factors != pytest.approx(dict.fromkeys(factors, 1.0))  # feedback did move them


def test_lists_are_kept_for_the_most_recently_ranked_users_only() -> None:
    model = chain_blend(feedback_half_life=20, feedback_users=3)
    model.learn_many(chains_in_a_crowd(4))
    model.recommend_many(["s0", "s1", "s2"], 5)
    model.recommend("s3", 5)
    model.recommend("s1", 5)  # ranked again: now the most recent
    assert list(model._shown) == ["s2", "s3", "s1"]
    model.forget_user("s3")
    assert list(model._shown) == ["s2", "s1"]
    model.forget_items(["c4"])
    assert all("c4" not in items for lists in model._shown.values() for items in lists)


def test_a_pickled_blend_keeps_its_feedback() -> None:
    events = chains_in_a_crowd(20)
    model = chain_blend(feedback_half_life=20, feedback_prior=0.1)
    prequential(model, events[:300], k=1)
    twin = pickle.loads(pickle.dumps(model))
    assert twin.feedback_factors() == model.feedback_factors() and twin._shown == model._shown
    for event in events[300:]:
        for m in (model, twin):
            m.recommend(event.user_id, 3)
            m.learn_one(event)
    assert twin.feedback_factors() == model.feedback_factors() != {"sequence": 1.0, "trending": 1.0}


def test_lists_kept_by_a_batch_are_the_lists_one_by_one_would_keep() -> None:
    """``recommend_rows`` keeps each user's part lists as ``recommend`` would, in the order
    a loop over the users would leave them: short lists, a user asked twice, and the
    oldest users dropped past ``feedback_users``."""
    events = random_stream(600, 40, 12, seed=5)  # a small catalogue: some lists run short
    batched, single = (Blend(models=_parts(), feedback_half_life=50, feedback_depth=7, feedback_users=25)
                       for _ in range(2))
    for model in (batched, single):
        model.learn_many(events)
    users = ["nobody", *sorted({e.user_id for e in events})[:30], "nobody"]
    seen = seen_by(events)
    batched.recommend_rows(users, 10, seen)
    for user in users:
        single.recommend(user, 10, seen.get(user))
    assert list(batched._shown.items()) == list(single._shown.items())
    assert any(len(items) < 7 for lists in batched._shown.values() for items in lists)  # short lists too


def test_lists_kept_by_a_batch_read_the_same_through_each_pickle_and_forgetting() -> None:
    """A batch's kept lists pickled again after items are forgotten (its compacted rows
    made at the first pickle, reused): each pickle reads as the lists did at its time."""
    events = random_stream(600, 40, 12, seed=5)
    model = Blend(models=_parts(), feedback_half_life=50, feedback_depth=7)
    model.learn_many(events)
    model.recommend_rows(sorted({e.user_id for e in events}), 10, seen_by(events))
    before = {user: tuple(lists) for user, lists in model._shown.items()}
    assert pickle.loads(pickle.dumps(model))._shown == before
    gone = {items[0] for lists in before.values() for items in lists if items}
    model.forget_items(list(gone)[:3])
    after = {user: tuple(lists) for user, lists in model._shown.items()}
    assert after != before and pickle.loads(pickle.dumps(model))._shown == after
