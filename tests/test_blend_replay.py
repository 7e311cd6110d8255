"""bench.blend_replay: the blend fused again from its parts' recorded lists judges as the
real blend does, under fixed weights and under feedback, on both protocols."""

from __future__ import annotations

import numpy as np
import pytest

from bench.blend_replay import (
    PartLists,
    Replay,
    chosen_in_hindsight,
    feedback_weights,
    hr_mrr,
    part_alone,
    record,
)
from online_models.blend import Blend
from online_models.evaluation import next_item, next_item_split, prequential
from online_models.sequence import Sequential
from tests.test_ranking_paths import random_stream

PARTS = {"cooc": {}, "embeddings": {"n_factors": 8, "batch_size": 16, "n_negatives": 16}, "sequence": {}}
FEEDBACK = {"feedback_half_life": 40.0, "feedback_prior": 0.2, "feedback_power": 3.0, "feedback_depth": 10}


def _blend(**params) -> Blend:
    # every part's items ranked, the weights as feedback learns them (the default before bounding)
    return Blend(models=PARTS, n_candidates=30, **{"candidates_from": None, "weight_choices": {}, **params})


def _judging(protocol: str, events):
    """The backtest of ``protocol`` over ``events`` as a function of the model (top 5; the
    next-item split at event 1,000)."""
    if protocol == "prequential":
        return lambda model: prequential(model, events, k=5)
    split = next_item_split(events[:1000], events[1000:])
    return lambda model: next_item(model, split, k=5)


@pytest.mark.parametrize("protocol", ["prequential", "next-item"])
def test_the_replay_judges_as_the_real_blend(protocol) -> None:
    events = random_stream(1500, 40, 120, seed=5)
    run = _judging(protocol, events)
    lists, learned = record(_blend(**FEEDBACK), run, width=30)
    assert len(lists) == learned.evaluated > 200
    replay = Replay(lists)
    weights = feedback_weights(lists, {"cooc": 1.0, "embeddings": 0.5, "sequence": 1000.0}, half_life=40.0,
                               prior=0.2, power=3.0, depth=10)
    assert hr_mrr(replay.ranks(weights), lists.k) == (pytest.approx(learned.hr, abs=1e-12),
                                                      pytest.approx(learned.mrr, abs=1e-12))
    fixed = run(_blend(feedback_half_life=None))  # the parts' lists are the same: only the fusion differs
    got = hr_mrr(replay.ranks({"cooc": 1.0, "embeddings": 0.5, "sequence": 1000.0}), lists.k)
    assert got == (pytest.approx(fixed.hr, abs=1e-12), pytest.approx(fixed.mrr, abs=1e-12))
    assert (learned.hr, learned.mrr) != (fixed.hr, fixed.mrr)  # feedback did change the lists
    if protocol == "prequential":  # a part alone: its list as the part ranked it (cut to k)
        alone = prequential(Sequential(), events, k=5)
        assert part_alone(lists, "sequence") == (pytest.approx(alone.hr), pytest.approx(alone.mrr))


def test_the_weighting_chosen_in_hindsight_is_the_one_that_ranked_the_earlier_items_best() -> None:
    first = np.array([0, 0, 5, 5, 5, 5])
    second = np.array([3, 3, 0, 0, 0, 0])  # better from the third event on
    chosen = chosen_in_hindsight([first, second], half_life=1.0, depth=4)
    # credits before each event, first/second: 0/0 (the default, first), 1/.25, 1.5/.375, then
    # .75/1.19 (rank 5 earns nothing at depth 4): the second leads from the fourth event on
    assert chosen.tolist() == [0, 0, 5, 0, 0, 0]


def _lists(cooc: list[list[int]], sequence: list[list[int]], target: list[int]) -> PartLists:
    """Two parts' lists (item ids best first, scores falling by position; ``sequence``'s
    calibrated) and the judged items."""
    width = max(len(r) for r in cooc + sequence)  # one width for all parts, as recorded

    def arrays(rows, top):
        items = np.full((len(rows), width), -1, dtype=np.int64)
        scores = np.full((len(rows), width), -np.inf)
        for j, row in enumerate(rows):
            items[j, : len(row)] = row
            scores[j, : len(row)] = top - 0.1 * np.arange(len(row))
        return items, scores

    (ci, cs), (si, ss) = arrays(cooc, 1.0), arrays(sequence, 0.5)
    return PartLists(2, ["cooc", "sequence"], np.array(target), {"cooc": ci, "sequence": si},
                     {"cooc": cs, "sequence": ss}, {"history": np.arange(len(target))})


def test_candidates_of_a_part_ranks_only_its_items_the_others_reorder_them() -> None:
    # cooc lists 7 first, which sequence does not list; sequence lists 1 then 2, cooc puts 2 ahead;
    # the third event's item 9 is in no list
    lists = _lists([[7, 2, 1], [7, 2, 1], [7, 2, 1]], [[1, 2], [1, 2], [1, 2]], target=[7, 2, 9])
    replay = Replay(lists)
    weights = {"cooc": 1.0, "sequence": 1.0}
    assert replay.ranks(weights).tolist() == [0, 1, -1]  # 7 leads; 2 (1.0/2 + .16) is behind 7 (1.0)
    bounded = replay.ranks(weights, candidates_of="sequence")
    assert bounded.tolist() == [-1, 0, -1]  # 7 is not a candidate; 2 (0.66) beats 1 (0 + 0.25)
    assert replay.ranks(weights, candidates_of="sequence", candidate_depth=1).tolist() == [-1, -1, -1]


def test_feedback_per_context_keeps_one_set_of_credits_per_context() -> None:
    events = random_stream(600, 20, 60, seed=3)
    lists, _ = record(_blend(), lambda model: prequential(model, events, k=5), width=30)
    base = {"cooc": 1.0, "embeddings": 0.5, "sequence": 1000.0}
    together = feedback_weights(lists, base, half_life=40.0, prior=0.2)
    one = feedback_weights(lists, base, half_life=40.0, prior=0.2, context=np.zeros(len(lists), dtype=int))
    assert all(np.array_equal(together[name], one[name]) for name in base)
    context = lists.context["history"] % 2
    apart = feedback_weights(lists, base, half_life=40.0, prior=0.2, context=context)
    for c in (0, 1):  # each context's weights are those of its events replayed alone
        mine = context == c
        alone = PartLists(lists.k, lists.names, lists.target[mine], {n: v[mine] for n, v in lists.items.items()},
                          {n: v[mine] for n, v in lists.scores.items()}, {})
        by_itself = feedback_weights(alone, base, half_life=40.0, prior=0.2)
        assert all(np.allclose(apart[name][mine], by_itself[name]) for name in base)
    assert not np.allclose(apart["sequence"], together["sequence"])


def test_advantage_credit_goes_only_to_the_part_that_ranked_the_item_best() -> None:
    # event 0: cooc ranks the item 1st, sequence 2nd: cooc earns 1 - 1/2; event 1: both 1st: nothing
    lists = _lists([[5, 6], [5, 6], [5]], [[6, 5], [5, 6], [5]], target=[5, 5, 5])
    weights = feedback_weights(lists, {"cooc": 1.0, "sequence": 1.0}, half_life=1.0, prior=1.0, power=1.0,
                               credit="advantage")
    # credits before each event (cooc/sequence): 0/0, .5/0, .25/0 (halved each event)
    assert weights["cooc"].tolist() == pytest.approx([1.0, 1.5 / 1.25, 1.25 / 1.125])
    assert weights["sequence"].tolist() == pytest.approx([1.0, 1.0 / 1.25, 1.0 / 1.125])
    plain = feedback_weights(lists, {"cooc": 1.0, "sequence": 1.0}, half_life=1.0, prior=1.0, power=1.0)
    assert plain["cooc"][1] == pytest.approx(2.0 / 1.75)  # reciprocal ranks: 1 against 1/2


@pytest.mark.parametrize("protocol", ["prequential", "next-item"])
def test_the_bounded_blend_with_a_chosen_factor_judges_as_its_replay(protocol) -> None:
    """``candidates_from`` and ``weight_choices`` built in ``Blend`` rank as the replay that
    chose them: only ``sequence``'s items, its feedback weight's factor chosen in hindsight."""
    events = random_stream(1500, 40, 120, seed=7)
    run = _judging(protocol, events)
    factors = (1.0, 4.0, 16.0)
    model = _blend(**FEEDBACK, candidates_from="sequence", weight_choices=None)  # the default: x1, 4, 16
    lists, learned = record(model, run, width=30)
    replay = Replay(lists)
    weights = feedback_weights(lists, {"cooc": 1.0, "embeddings": 0.5, "sequence": 1000.0}, half_life=40.0,
                               prior=0.2, power=3.0, depth=10)
    bounded = [replay.ranks({**weights, "sequence": weights["sequence"] * t}, candidates_of="sequence")
               for t in factors]
    chosen = chosen_in_hindsight(bounded, 40.0, depth=10, default=0)
    assert hr_mrr(chosen, lists.k) == (pytest.approx(learned.hr, abs=1e-12), pytest.approx(learned.mrr, abs=1e-12))
    assert model.chosen_factor() != 0 or max(model._credit[3:]) == model._credit[3]
    only_bounded = run(_blend(**FEEDBACK, candidates_from="sequence", weight_choices={}))
    assert hr_mrr(bounded[0], lists.k) == (pytest.approx(only_bounded.hr, abs=1e-12),
                                           pytest.approx(only_bounded.mrr, abs=1e-12))
    assert len({hr_mrr(r, lists.k) for r in bounded}) > 1  # the factors do rank differently
