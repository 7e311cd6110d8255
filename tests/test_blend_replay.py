"""bench.blend_replay: the blend fused again from its parts' recorded lists judges as the
real blend does, under fixed weights and under feedback, on both protocols."""

from __future__ import annotations

import numpy as np
import pytest

from bench.blend_replay import (
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
    return Blend(models=PARTS, n_candidates=30, **params)


@pytest.mark.parametrize("protocol", ["prequential", "next-item"])
def test_the_replay_judges_as_the_real_blend(protocol) -> None:
    events = random_stream(1500, 40, 120, seed=5)
    if protocol == "prequential":
        run = lambda model: prequential(model, events, k=5)
    else:
        split = next_item_split(events[:1000], events[1000:])
        run = lambda model: next_item(model, split, k=5)
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
