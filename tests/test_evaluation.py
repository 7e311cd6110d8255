"""Metric functions on hand-computed cases, and the prequential loop's guarantees."""

from __future__ import annotations

import math
import random
from collections import Counter, defaultdict

import pytest

from core.schema import Event
from online_models.base import Recommender
from online_models.evaluation import (
    coverage,
    f1_at_k,
    gini,
    hit_at_k,
    ndcg_at_k,
    precision_at_k,
    prequential,
    recall_at_k,
    reciprocal_rank,
    sliding_rate,
)

# -- metric functions --------------------------------------------------------------------

RANKED = ["a", "b", "c", "d", "e"]


@pytest.mark.parametrize("relevant,k,hr,prec,rec,ndcg,rr", [
    ({"a"}, 5, 1.0, 0.2, 1.0, 1.0, 1.0),
    ({"c"}, 5, 1.0, 0.2, 1.0, 0.5, 1 / 3),  # 1/log2(4) = 0.5
    ({"c"}, 2, 0.0, 0.0, 0.0, 0.0, 0.0),
    ({"z"}, 5, 0.0, 0.0, 0.0, 0.0, 0.0),
    # two relevant at ranks 2 and 4: DCG = 1/log2(3) + 1/log2(5); IDCG = 1 + 1/log2(3)
    ({"b", "d"}, 5, 1.0, 0.4, 1.0, (1 / math.log2(3) + 1 / math.log2(5)) / (1 + 1 / math.log2(3)), 0.5),
    ({"b", "z"}, 5, 1.0, 0.2, 0.5, (1 / math.log2(3)) / (1 + 1 / math.log2(3)), 0.5),
])
def test_ranking_metrics_by_hand(relevant, k, hr, prec, rec, ndcg, rr):
    assert hit_at_k(RANKED, relevant, k) == hr
    assert precision_at_k(RANKED, relevant, k) == pytest.approx(prec)
    assert recall_at_k(RANKED, relevant, k) == pytest.approx(rec)
    assert ndcg_at_k(RANKED, relevant, k) == pytest.approx(ndcg)
    assert reciprocal_rank(RANKED, relevant, k) == pytest.approx(rr)
    f1 = 2 * prec * rec / (prec + rec) if prec + rec else 0.0
    assert f1_at_k(RANKED, relevant, k) == pytest.approx(f1)


def test_single_target_identities():
    # one target: recall = HR, precision = HR / k, F1 = 2 / (k + 1) on a hit
    for k in (1, 3, 10):
        assert recall_at_k(RANKED, {"a"}, k) == hit_at_k(RANKED, {"a"}, k)
        assert precision_at_k(RANKED, {"a"}, k) == pytest.approx(1 / k)
        assert f1_at_k(RANKED, {"a"}, k) == pytest.approx(2 / (k + 1))


def test_short_lists_are_not_rewarded_and_k_must_be_positive():
    assert precision_at_k(["a"], {"a"}, 10) == pytest.approx(0.1)
    with pytest.raises(ValueError):
        hit_at_k(RANKED, {"a"}, 0)


def test_coverage_by_hand():
    assert coverage([], {"a"}) == 0.0
    assert coverage(["a", "b", "b"], {"a", "b", "c", "d", "e"}) == pytest.approx(0.4)
    assert coverage(["x"], set()) == 0.0


def test_gini_by_hand():
    assert gini([]) == 0.0 and gini([0, 0]) == 0.0
    assert gini([3, 3, 3]) == pytest.approx(0.0)
    assert gini([0, 0, 0, 0, 10]) == pytest.approx(0.8)  # all exposure on one of five: (n-1)/n
    # sorted [0,1,2,2], n=4, total 5: sum((2i-n-1) x_i) = -1 + 2 + 6 = 7 -> 7 / 20
    assert gini([2, 0, 2, 1]) == pytest.approx(0.35)
    with pytest.raises(ValueError):
        gini([-1, 2])


def test_sliding_rate():
    assert sliding_rate([1, 1, 0, 0, 1], 2).tolist() == [1.0, 1.0, 0.5, 0.0, 0.5]
    assert len(sliding_rate(b"", 5)) == 0


# -- the prequential loop ----------------------------------------------------------------


def ev(user, item, ts, value=None, type="view"):
    return Event(user_id=user, item_id=item, type=type, ts=float(ts), event_id=f"{user}-{item}-{ts}", value=value)


class Popular(Recommender):
    """All-time counts, ties broken by first appearance; honours ``exclude``."""

    name = "popular"

    def __init__(self):
        self.counts: Counter[str] = Counter()
        self.order: dict[str, int] = {}

    def learn_one(self, interaction):
        self.counts[interaction.item_id] += 1
        self.order.setdefault(interaction.item_id, len(self.order))

    def recommend(self, user_id, k=10, exclude=None):
        exclude = exclude or ()
        items = sorted((i for i in self.counts if i not in exclude), key=lambda i: (-self.counts[i], self.order[i]))
        return [(i, float(self.counts[i])) for i in items[:k]]


# Worked by hand, k=2:
#   t0 u1 A  new user            counts A1
#   t1 u2 A  new user            A2
#   t2 u2 B  seen {A}: []        miss        B1
#   t3 u1 B  seen {A}: [B]       hit rank 1  B2
#   t4 u3 C  new user            C1
#   t5 u1 C  seen {A,B}: [C]     hit rank 1  C2
#   t6 u2 D  seen {A,B}: [C]     miss        D1
#   t7 u3 B  seen {C}: [A, B]    hit rank 2
# evaluated 5, hits 3; exposure A1 B2 C2 D0 over catalogue {A,B,C,D}
KNOWN_LOG = [ev("u1", "A", 0), ev("u2", "A", 1), ev("u2", "B", 2), ev("u1", "B", 3), ev("u3", "C", 4),
             ev("u1", "C", 5), ev("u2", "D", 6), ev("u3", "B", 7)]


def test_known_answer():
    r = prequential(Popular(), KNOWN_LOG, k=2)
    assert (r.events, r.evaluated) == (8, 5)
    assert r.hr == pytest.approx(3 / 5)
    assert r.ndcg == pytest.approx((1 + 1 + 1 / math.log2(3)) / 5)
    assert r.mrr == pytest.approx((1 + 1 + 0.5) / 5)
    assert r.precision == pytest.approx(3 / 5 / 2) and r.recall == pytest.approx(3 / 5)
    assert r.f1 == pytest.approx(2 * r.precision * r.recall / (r.precision + r.recall))
    assert r.catalogue == 4 and r.coverage == pytest.approx(3 / 4)
    assert r.gini == pytest.approx(0.35)
    assert bytes(r.hits) == bytes([0, 1, 1, 0, 1]) and list(r.hit_ts) == [2, 3, 5, 6, 7]
    assert r.mae is None and r.rated == 0
    assert r.events_per_s > 0 and r.model == "popular"


def test_warmup_stride_and_exclusion():
    r = prequential(Popular(), KNOWN_LOG, k=2, warmup=4)  # t5, t6, t7 judged
    assert (r.evaluated, r.hr) == (3, pytest.approx(2 / 3))
    r = prequential(Popular(), KNOWN_LOG, k=2, stride=2)  # eligible t2,t3,t5,t6,t7: judge t2, t5, t7
    assert (r.evaluated, r.hr) == (3, pytest.approx(2 / 3))
    # without exclusion: t2 [A] miss, t3 [A,B] hit rank 2, t5 [A,B] miss, t6 [A,B] miss, t7 [A,B] hit rank 2
    r = prequential(Popular(), KNOWN_LOG, k=2, exclude_seen=False)
    assert r.hr == pytest.approx(2 / 5) and r.mrr == pytest.approx(0.5 * 2 / 5)


def test_progress_callback_counts_every_event():
    seen = []
    prequential(Popular(), KNOWN_LOG * 3, k=2, progress=seen.append, progress_every=5)
    assert sum(seen) == 24 and seen[:4] == [5, 5, 5, 5]


def test_ratings_are_predicted_before_they_are_learnt():
    class Mean(Popular):
        def __init__(self):
            super().__init__()
            self.total = self.n = 0

        def learn_one(self, interaction):
            super().learn_one(interaction)
            self.total += interaction.value
            self.n += 1

        def predict_one(self, user_id, item_id):
            return self.total / self.n if self.n else 3.0

    log = [ev("u", "a", 0, 4.0), ev("u", "b", 1, 2.0), ev("v", "c", 2, 5.0)]
    r = prequential(Mean(), log, k=2)
    # predictions 3, 4, 3 against 4, 2, 5: errors 1, 2, 2
    assert r.rated == 3
    assert r.mae == pytest.approx(5 / 3) and r.rmse == pytest.approx(math.sqrt(9 / 3))
    assert prequential(Mean(), log, k=2, ratings=False).mae is None


# -- models that cheat if the evaluator lets them ---------------------------------------


def distinct_items_log(n_users=30, per_user=12, n_items=200, seed=3):
    """Each user's items are distinct (no repeats), users interleaved in time."""
    rng = random.Random(seed)
    per = {f"u{u}": rng.sample(range(n_items), per_user) for u in range(n_users)}
    rows = [(user, f"i{item}") for user, items in per.items() for item in items]
    rng.shuffle(rows)
    pos: dict[str, int] = defaultdict(int)
    log = []
    for t, (user, _) in enumerate(rows):  # keep each user's own order, interleave users
        log.append(ev(user, f"i{per[user][pos[user]]}", t, value=float(t % 5 + 1)))
        pos[user] += 1
    return log


class LastLearned(Recommender):
    """Recommends the item it learnt last for the user, ignoring ``exclude``."""

    name = "last-learned"

    def __init__(self):
        self.last: dict[str, str] = {}

    def learn_one(self, interaction):
        self.last[interaction.user_id] = interaction.item_id

    def recommend(self, user_id, k=10, exclude=None):
        return [(self.last[user_id], 1.0)] if user_id in self.last else []


class Peeker(Recommender):
    """Recommends everything it has learnt about the user, latest first, ignoring ``exclude``;
    its rating guess is the value it learnt for that very (user, item), if any."""

    name = "peeker"

    def __init__(self):
        self.history: dict[str, list[str]] = defaultdict(list)
        self.values: dict[tuple[str, str], float] = {}
        self.everything: list[str] = []

    def learn_one(self, interaction):
        self.history[interaction.user_id].append(interaction.item_id)
        self.values[interaction.user_id, interaction.item_id] = interaction.value
        self.everything.append(interaction.item_id)

    def recommend(self, user_id, k=10, exclude=None):
        mine = self.history.get(user_id, [])[::-1]
        return [(i, 1.0) for i in mine[:k]]

    def predict_one(self, user_id, item_id):
        return self.values.get((user_id, item_id), 0.0)


class GlobalLast(Recommender):
    """Recommends the last item learnt from anyone."""

    name = "global-last"

    def __init__(self):
        self.last = None

    def learn_one(self, interaction):
        self.last = interaction.item_id

    def recommend(self, user_id, k=10, exclude=None):
        return [(self.last, 1.0)] if self.last else []


@pytest.mark.parametrize("exclude_seen", [True, False])
@pytest.mark.parametrize("model", [LastLearned, Peeker])
def test_cheaters_score_zero(model, exclude_seen):
    log = distinct_items_log()
    r = prequential(model(), log, k=10, exclude_seen=exclude_seen)
    assert r.evaluated == len(log) - 30
    assert r.hr == 0.0 and r.ndcg == 0.0 and r.mrr == 0.0


def test_peeking_at_the_rating_does_not_help():
    log = distinct_items_log()
    r = prequential(Peeker(), log, k=10)
    assert r.rated == len(log)
    assert r.mae == pytest.approx(sum(e.value for e in log) / len(log))  # it always guessed 0


def test_global_last_cannot_see_the_current_event():
    # no item follows itself in time, so "the last item anyone learnt" is never the answer
    log = [ev(f"u{t % 4}", f"i{t}", t) for t in range(40)]
    assert prequential(GlobalLast(), log, k=10, exclude_seen=False).hr == 0.0


def test_a_fair_model_does_score_on_the_same_log():
    # sanity: the cheat tests are not vacuous; a model allowed to see the answer would hit
    log = distinct_items_log()

    class Oracle(LastLearned):
        def recommend(self, user_id, k=10, exclude=None):
            nxt = self.future.get(id(self.current))
            return [(nxt, 1.0)] if nxt else []

    oracle = Oracle()
    oracle.future = {}
    # learn_one sees each event after it is judged; so the judged one is what learn_one gets next
    judged = iter(log)
    oracle.current = next(judged)
    original_learn = oracle.learn_one

    def learn(event):
        original_learn(event)
        oracle.current = next(judged, None)

    oracle.learn_one = learn
    oracle.future = {id(e): e.item_id for e in log}
    r = prequential(oracle, log, k=10)
    assert r.hr == 1.0


def test_trending_through_the_loop_matches_its_doctest():
    from online_models.trending import Trending

    log = [ev(u, i, t) for t, (u, i) in enumerate([("a", "x"), ("b", "x"), ("a", "y"), ("b", "y")])]
    r = prequential(Trending(half_life_s=None), log, k=1)
    assert (r.evaluated, r.hr) == (2, 0.5)


def test_bad_arguments():
    with pytest.raises(ValueError):
        prequential(Popular(), KNOWN_LOG, k=0)
    with pytest.raises(ValueError):
        prequential(Popular(), KNOWN_LOG, stride=0)


def test_backtest_orchestration_with_a_custom_factory(tmp_path):
    from stream.logs import read_log  # noqa: F401  (the orchestrator reads the file itself)
    from streamrec.backtest import run_backtest, write_report

    path = tmp_path / "log.jsonl"
    path.write_text("".join(e.to_json().decode() + "\n" for e in reversed(KNOWN_LOG)))  # unsorted on disk
    bt = run_backtest(path, "jsonl", models="popular,last-learned", k=2, progress=False, log=lambda m: None,
                      make=lambda name: Popular() if name == "popular" else LastLearned())
    popular, last = bt.results
    assert popular.hr == pytest.approx(3 / 5) and popular.gini == pytest.approx(0.35)
    assert last.hr == 0.0
    paths = write_report(bt, tmp_path / "report")
    assert all(p.stat().st_size > 0 for p in paths.values())
