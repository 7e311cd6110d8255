"""Blend with ``candidates_from`` (only one part's items ranked, the others reordering them)
and ``weight_choices`` (that part's weight times a factor chosen by feedback): what it ranks,
the same on both ranking paths, truthful explanations, state through pickles, and the
conformance suite."""

from __future__ import annotations

import copy
import pickle

import numpy as np
import pytest

from core.schema import Event
from online_models import make_model
from online_models.blend import Blend
from online_models.checks import yield_checks
from online_models.fusion import CandidateFusion, fuse_top_k
from tests.test_blend_feedback import rank_both_ways
from tests.test_blend_replay import PARTS
from tests.test_ranking_paths import random_stream, seen_by

BOUNDED = {"candidates_from": "sequence", "weight_choices": {"sequence": [1.0, 4.0, 16.0]}}


def _bounded(**params) -> Blend:
    return Blend(models=copy.deepcopy(PARTS), n_candidates=30, **{**BOUNDED, "feedback_half_life": 50.0,
                                                                  "feedback_depth": 10, **params})


def test_only_the_lead_parts_items_are_ranked_and_the_others_reorder_them() -> None:
    events = random_stream(3000, 50, 200, seed=4)
    model = _bounded()
    model.learn_many(events)
    seen = seen_by(events)
    reordered = 0
    for user in sorted(seen)[:30]:
        ranking = model.recommend(user, 10, seen[user])
        candidates = [item for item, _ in model._models["sequence"].recommend(user, 30, seen[user])]
        assert ranking and all(item in candidates for item, _ in ranking)
        reordered += [item for item, _ in ranking] != candidates[:10]
    assert reordered > 5  # cooc and the embeddings do move the candidates


def test_candidate_fusion_of_a_lead_that_lists_everything_is_fuse_top_k() -> None:
    """Where the lead lists every item the others list, bounding changes nothing: the
    lookups, sums in part order, tie-breaks and sources are fuse_top_k's."""
    rng = np.random.default_rng(0)
    for _ in range(30):
        n_users, n_items, width = 6, 12, 12
        lead_rows = np.array([rng.permutation(n_items) for _ in range(n_users)])
        lead_scores = np.sort(rng.random((n_users, width)), axis=1)[:, ::-1]
        other_rows = np.array([rng.permutation(n_items)[:5] for _ in range(n_users)])
        other_rows[0, 3:] = -1  # a short list
        other_scores = np.where(other_rows >= 0, np.round(np.sort(rng.random((n_users, 5)), axis=1)[:, ::-1], 1), -np.inf)
        parts = [(other_rows, other_scores, 0.7), (lead_rows, np.round(lead_scores, 1), 1.0, 2.0)]
        want = fuse_top_k(parts, 8, with_sources=True)
        got = CandidateFusion(parts, lead=1).top(8, lead_weight=1.0)
        for w, g in zip(want, got):
            assert np.array_equal(w, g)


def test_both_ranking_paths_rank_alike_and_keep_the_same_lists() -> None:
    batched, single = rank_both_ways(_bounded)
    assert batched._shown and all(len(lists) == 3 + 3 for lists in batched._shown.values())  # parts', each factor's
    assert batched.chosen_factor() == single.chosen_factor()


def test_the_factor_with_the_best_credit_is_chosen_and_weighs_the_part() -> None:
    events = random_stream(2000, 40, 150, seed=6)
    model = _bounded(weight_choices={"sequence": [1.0, 1e-6]})  # x1e-6: cooc and embeddings alone order
    for event in events:
        model.recommend(event.user_id, 10)
        model.learn_one(event)
    credits = model._credit[3:]
    assert credits[0] != credits[1]
    chosen = model.chosen_factor()
    assert credits[chosen] == max(credits)
    base = model._weight("sequence", chosen=False)
    assert model._weight("sequence") == base * [1.0, 1e-6][chosen]


def test_explanations_name_the_part_that_added_most() -> None:
    events = random_stream(3000, 50, 200, seed=4)
    model = _bounded(weights={"cooc": 1.0, "embeddings": 0.5, "sequence": 30_000.0})  # each part leads some items
    model.learn_many(events)
    users = sorted({e.user_id for e in events})[:20]
    seen = seen_by(events)
    ranked = model.recommend_rows(users, 10, seen)
    by_rows = model.explain_rows(users, ranked.rows, ranked.index)
    strategies = set()
    for user, row, reasons in zip(users, ranked.rows.tolist(), by_rows):
        items = [ranked.index.ids[r] for r in row if r >= 0]
        assert reasons == model.explain_items(user, items)  # _parts_of: the largest weighted scaled score
        strategies |= {strategy for strategy, _ in reasons}
    assert "sequence" in strategies and len(strategies) > 1


def test_a_pickled_bounded_blend_keeps_its_choice_and_an_old_pickle_loads() -> None:
    events = random_stream(1500, 30, 100, seed=8)
    model = _bounded()
    for event in events[:1000]:
        model.recommend(event.user_id, 5)
        model.learn_one(event)
    twin = pickle.loads(pickle.dumps(model))
    assert twin._credit == model._credit and twin._shown == model._shown
    for event in events[1000:]:
        assert twin.recommend(event.user_id, 5) == model.recommend(event.user_id, 5)
        for m in (model, twin):
            m.learn_one(event)
    old = Blend(models=copy.deepcopy(PARTS), n_candidates=30, candidates_from=None, weight_choices={})
    old.learn_many(events)
    state = old.__getstate__()  # as saved before these hyperparameters: the parts' credits only
    del state["candidates_from"], state["weight_choices"], state["_choices"]
    loaded = Blend.__new__(Blend)
    loaded.__setstate__(state)  # takes today's defaults: bounded, the factor to choose
    assert loaded.candidates_from == "sequence" and loaded._credit == old._credit + [0.0] * 3
    candidates = {item for item, _ in loaded._models["sequence"].recommend("u1", 30)}
    assert {item for item, _ in loaded.recommend("u1", 5)} <= candidates


def test_bad_choices_are_refused() -> None:
    for choices in ({"sequence": []}, {"sequence": [1.0, 0.0]}, {"sequence": [1.0], "cooc": [2.0]}):
        with pytest.raises(ValueError, match="weight_choices"):
            Blend(models=PARTS, weight_choices=choices)


def test_without_feedback_the_first_factor_holds_and_nothing_is_kept() -> None:
    model = _bounded(feedback_half_life=None)
    model.learn_many(random_stream(500, 10, 50, seed=1))
    model.recommend("u1", 5)
    assert model._shown == {} and model.chosen_factor() == 0 and model._weight("sequence") == 1000.0


CHECKED = Blend(models=PARTS, n_candidates=30, **BOUNDED)


@pytest.mark.parametrize("check", list(yield_checks(CHECKED)), ids=lambda c: c.__name__[6:])
def test_the_bounded_blend_passes_the_conformance_suite(check) -> None:
    check(Blend(models=copy.deepcopy(PARTS), n_candidates=30, **BOUNDED))


def test_both_ways_of_finding_places_agree() -> None:
    """The table of places and the sort give each wanted item's first place in a list."""
    from online_models.fusion import _positions_by_sorting, _positions_in, _positions_of

    rng = np.random.default_rng(3)
    for n_items in (5, 40, 3000):
        wanted = np.full((200, 30), -1)  # distinct candidates, as a part lists them
        for row in wanted:
            row[: min(n_items, 25)] = rng.permutation(n_items)[:25]
        rows = rng.integers(0, n_items, (200, 25))  # repeats: the first place counts
        rows[5, 10:] = -1
        (table,), sorting = _positions_of(wanted, [rows]), _positions_by_sorting(wanted, rows)
        assert np.array_equal(table, sorting)
        assert np.all(table[wanted < 0] == -1)
        for u, col in zip(*np.nonzero(table >= 0)):
            place = table[u, col]
            assert rows[u, place] == wanted[u, col] and wanted[u, col] not in rows[u, :place]
        for u, col in zip(*np.nonzero((table < 0) & (wanted >= 0))):
            assert wanted[u, col] not in rows[u]
        # a small table, blocks of 16 users: each block's stamp hides the places earlier ones
        # wrote, and the stamps run past int16's end (the table is cleared, the stamps restart)
        small = np.full(16 * (n_items + 1), -1, dtype=np.int16)
        places, stamp = _positions_in(wanted, rows, small, n_items, stamp=2**15 - 4 * 25)
        assert np.array_equal(places, sorting) and stamp == (13 - 3) * 25  # 3 blocks before the clearing


def test_candidate_fusion_ranks_ties_sums_and_sources_as_fuse_top_k() -> None:
    """Parts before and after the lead, many tied sums (scores on a coarse grid), short
    lists, k shorter and longer than the lists, and every
    factor of the lead's weight on one fusion: each ``top`` is ``fuse_top_k``'s where the
    lead lists every item."""
    rng = np.random.default_rng(11)
    for case in range(60):
        n_users, n_items = 40, 30
        lead_rows = np.array([rng.permutation(n_items) for _ in range(n_users)])
        lead_scores = np.round(np.sort(rng.random((n_users, n_items)), axis=1)[:, ::-1], 1)
        lead_scores[:, n_items // 2:] = 0.0  # a filled tail, scoring 0, as sequence's popular fill
        others = []
        for width in (12, 7):
            rows = np.array([rng.permutation(n_items)[:width] for _ in range(n_users)])
            rows[rng.random(n_users) < 0.2, width // 2:] = -1
            scores = np.where(rows >= 0, np.sort(rng.integers(0, 4, (n_users, width)), axis=1)[:, ::-1] * 1.0,
                              -np.inf)
            others.append((rows, scores))
        lead = case % 3  # before, between and after the others
        parts = [(r, s, w) for (r, s), w in zip(others, (1.0, 0.5))]
        parts.insert(lead, (lead_rows, lead_scores, 2.0, 2.0))
        fusion = CandidateFusion(parts, lead=lead)
        for factor in (1.0, 4.0, 0.25):
            weighted = [(p[0], p[1], p[2] * factor, *p[3:]) if i == lead else p for i, p in enumerate(parts)]
            for k in (1, 5, n_items, n_items + 3):
                want = fuse_top_k(weighted, k, with_sources=True)
                got = fusion.top(k, lead_weight=2.0 * factor)
                for w, g in zip(want, got):
                    assert np.array_equal(w, g)
                assert np.array_equal(fusion.top(k, 2.0 * factor, with_sources=False)[0], want[0])


def test_candidate_fusion_orders_scores_that_differ_only_in_their_lowest_bits() -> None:
    """Sums a hair apart (the last bits of a float) still rank by score, not by tie-breaks,
    and negative weights rank too."""
    n_users, width = 3, 6
    lead_rows = np.tile(np.arange(width), (n_users, 1))
    base = 0.3
    lead_scores = np.array([[base + d * 2**-52 for d in (0, 3, 1, 5, 2, 4)]] * n_users)  # not sorted
    other_rows = np.tile(np.arange(width)[::-1], (n_users, 1))
    other_scores = np.tile(np.linspace(1.0, 0.0, width), (n_users, 1))
    for weight in (0.0, 1e-300, -1.0):
        parts = [(other_rows, other_scores, weight), (lead_rows, lead_scores, 1.0, 1.0)]
        want = fuse_top_k(parts, width, with_sources=True)
        got = CandidateFusion(parts, lead=1).top(width, lead_weight=1.0)
        for w, g in zip(want, got):
            assert np.array_equal(w, g)


def test_candidate_fusion_drops_a_nan_score_as_fuse_top_k_does() -> None:
    """A NaN sum (a calibrated part's NaN, or an infinite score scaled) is no candidate: not
    at the head of the list, not in place of a real candidate."""
    lead_rows = np.array([[0, 1, 2], [3, 4, 5]])
    other_rows = np.array([[1, 2, -1], [5, -1, -1]])
    other_scores = np.where(other_rows >= 0, 0.5, -np.inf)
    for nan in (np.nan, -np.nan):
        lead_scores = np.array([[0.9, nan, 0.5], [nan, 0.8, 0.1]])
        parts = [(other_rows, other_scores, 1.0), (lead_rows, lead_scores, 1.0, 2.0)]
        for k in (1, 2, 3):
            want = fuse_top_k(parts, k, with_sources=True)
            got = CandidateFusion(parts, lead=1).top(k, lead_weight=1.0)
            assert not np.isnan(got[1]).any() and (got[0][:, 0] >= 0).all()
            for w, g in zip(want, got):
                assert np.array_equal(w, g)


def test_weight_choices_changed_by_the_caller_after_construction_change_nothing():
    choices = {"sequence": [1, 4]}
    model = Blend(models={"cooc": {}, "sequence": {}}, weight_choices=choices)
    changed = Blend(models={"cooc": {}, "sequence": {}}, weight_choices={"sequence": [1, 4]})
    for user, item in [("u1", "a"), ("u1", "b"), ("u2", "a"), ("u2", "b"), ("u1", "c")]:
        for m in (model, changed):
            m.recommend(user, k=5)
            m.learn_one(Event(user_id=user, item_id=item, type="click", ts=0.0))
    choices["sequence"].append(16)  # the caller's list, kept verbatim as the hyperparameter
    for m in (model, changed):
        m.recommend("u2", k=5)
        m.learn_one(Event(user_id="u2", item_id="c", type="click", ts=1.0))
    assert model.weight_choices is choices
    assert model.recommend("u1", k=5) == changed.recommend("u1", k=5)
    assert model._credit == changed._credit


def test_a_blend_that_ranked_before_it_learned_anything_pickles() -> None:
    """Lists kept while no part knows an item (every row -1, an empty index): a checkpoint
    then must still pickle them."""
    model = make_model("blend")
    model.recommend_many(["u1", "u2"], 10)
    twin = pickle.loads(pickle.dumps(model))
    assert twin._shown == model._shown
