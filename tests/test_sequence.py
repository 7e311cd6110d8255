"""The sequence model's planted patterns and repeats, and the next-item protocol: its
filtering by hand on a tiny file, its loop, and the CLI."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from online_models import make_model
from online_models.evaluation import next_item, next_item_split
from stream.logs import read_log
from core.schema import Event


def clicks(sessions: dict[str, str], start: float = 0.0) -> list[Event]:
    """One click per letter, session after session, one second apart."""
    events, t = [], start
    for user, items in sessions.items():
        for item in items:
            events.append(Event(user_id=user, item_id=item, type="click", ts=t))
            t += 1.0
    return events


def test_after_b_it_ranks_c_first() -> None:
    """Sessions go A -> B -> C (and some noise around them): after B comes C, not A,
    although A co-occurs with B as often as C does."""
    model = make_model("sequence")
    sessions = {f"s{n}": "ABC" for n in range(20)}
    sessions.update({f"n{n}": "XAY" for n in range(5)})
    model.learn_many(clicks(sessions))
    model.learn_many(clicks({"probe": "B"}, start=1000.0))
    assert [i for i, _ in model.recommend("probe", 3, {"B"})][0] == "C"
    model.learn_many(clicks({"probe2": "XA"}, start=2000.0))
    assert [i for i, _ in model.recommend("probe2", 1, {"X", "A"})] == ["B"]  # A -> B, more than A -> Y
    assert model.explain("probe", "C") == "often clicked after B"
    assert [i for i, _ in model.similar_items("B", 1)] == ["C"]


def test_order_matters_where_co_occurrence_cannot_tell() -> None:
    """P -> Q in every session: after P, Q; after Q, nothing learned points back to P as
    strongly as Q's own successors (backward pairs weigh less)."""
    model = make_model("sequence")
    model.learn_many(clicks({f"s{n}": "PQR" for n in range(10)}))
    model.learn_many(clicks({"probe": "Q"}, start=100.0))
    ranked = [i for i, _ in model.recommend("probe", 2, {"Q"})]
    assert ranked == ["R", "P"]


def test_repeats_rank_only_when_the_request_allows_seen_items() -> None:
    """Every session clicks its items twice in a row (AABBCC...): the model learns that the
    last click repeats, ranks it first when seen items are allowed, and never when they
    are excluded; with repeat_weight 0 repeats only come from transitions."""
    sessions = {f"s{n}": "AABBCC" for n in range(30)}
    model = make_model("sequence")
    model.learn_many(clicks(sessions))
    rates = model.repeat_rates()
    assert rates[0] > 0.3  # the item clicked last (once) is repeated half of the time
    model.learn_many(clicks({"probe": "B"}, start=1000.0))
    allowed = [i for i, _ in model.recommend("probe", 3)]
    assert allowed[0] == "B"
    excluded = [i for i, _ in model.recommend("probe", 3, {"B"})]
    assert "B" not in excluded and excluded[0] == "C"
    many = model.recommend_many(["probe"], 3, {"probe": {"B"}})
    assert [i for i, _ in many["probe"]] == excluded
    no_repeats = make_model("sequence", repeat_weight=0.0)
    no_repeats.learn_many(clicks(sessions))
    no_repeats.learn_many(clicks({"probe": "B"}, start=1000.0))
    assert [i for i, _ in no_repeats.recommend("probe", 1)] == ["C"]


def test_repeat_rates_follow_how_often_sessions_repeat() -> None:
    model = make_model("sequence", repeat_prior=0.0, repeat_weight=1.0)
    model.learn_many(clicks({"a": "XYX", "b": "XYZ"}))  # after XY: X again once, not once
    # a: at Y, X was 1 back (no repeat); at X, Y 1 back (no), X 2 back (yes). b: alike, no repeat
    assert model.repeat_rates()[0] == 0.0
    assert model.repeat_rates()[1 * model.repeat_counts] == pytest.approx(0.5)


def test_forget_items_leaves_no_trace() -> None:
    model = make_model("sequence")
    model.learn_many(clicks({f"s{n}": "ABC" for n in range(5)}))
    model.forget_items(["B"])
    assert "B" not in {i for i, _ in model.recommend("s0", 10)}
    assert "B" not in {i for i, _ in model.similar_items("A", 10)}
    model.learn_many(clicks({"new": "A"}, start=100.0))
    assert [i for i, _ in model.recommend("new", 2, {"A"})][0] == "C"  # A -> C stays (two steps)


def test_a_batch_takes_the_rows_one_by_one_would() -> None:
    """New items of a batch take the rows ``IdIndex.add`` would give them in turn (freed
    rows first, the lowest first), and a batch learns what event by event learns."""
    batched, single = make_model("sequence"), make_model("sequence")
    for model in (batched, single):
        model.learn_many(clicks({f"s{n}": "ABCDE" for n in range(3)}))
        model.forget_items(["B", "D"])
    events = clicks({"s0": "XBY", "t": "XZADB"}, start=50.0)
    batched.learn_many(events)
    for event in events:
        single.learn_one(event)
    assert batched._items.ids == single._items.ids and batched._items.ids[:5] == ["A", "X", "C", "B", "E"]
    assert len(batched._successors) == len(batched._sources) == len(batched._items) <= len(batched._out_total)
    assert batched._out_total.tolist()[:7] == single._out_total.tolist()[:7]
    assert [(list(s.rows), list(s.weights)) for s in batched._successors] == \
           [(list(s.rows), list(s.weights)) for s in single._successors]
    assert batched._sources == single._sources
    assert batched.recommend_many(["s0", "t"], 5) == single.recommend_many(["s0", "t"], 5)


@pytest.mark.parametrize("params", [{}, {"backward_weight": 0.0, "steps": 3, "window": 6}])
def test_a_batch_learns_what_event_by_event_learns(params: dict) -> None:
    """``learn_many`` (arrays) and ``learn_one`` (plain Python) leave the same floats in
    every table, on histories full of repeats, with a share log running: transitions,
    sources, outgoing totals, repeat counts and the item delta."""
    from tests.test_ranking_paths import random_stream

    events = random_stream(3000, 40, 60, seed=8)
    batched, single = make_model("sequence", **params), make_model("sequence", **params)
    for part, (start, stop) in enumerate([(0, 1000), (1000, 3000)]):
        if part:  # sharing starts: transitions go to the log from now on
            assert batched.item_delta().keys() == single.item_delta().keys()
        for first in range(start, stop, 300):
            batched.learn_many(events[first : min(first + 300, stop)])
        for event in events[start:stop]:
            single.learn_one(event)
    assert [(list(s.rows), list(s.weights)) for s in batched._successors] == \
           [(list(s.rows), list(s.weights)) for s in single._successors]
    assert batched._sources == single._sources
    n = len(single._items)  # (the tables' spare room may differ)
    assert batched._out_total[:n].tolist() == single._out_total[:n].tolist()
    assert (batched._repeat_hits, batched._repeat_trials) == (single._repeat_hits, single._repeat_trials)
    assert sum(batched._repeat_hits) > 100
    deltas = batched.item_delta(), single.item_delta()
    assert deltas[0].keys() == deltas[1].keys()
    for key in deltas[0]:
        assert np.array_equal(deltas[0][key], deltas[1][key]), key


# -- the protocol -----------------------------------------------------------------------

TRAIN = """SessionId\tItemId\tTime
1\t10\t100
1\t11\t101
2\t11\t102
2\t12\t103
"""
# session 5: item 99 is unknown (dropped), then 10, 11, 11 -> 3 clicks, 2 predictions
# session 6: 12 then 98 (unknown): 1 click left -> dropped
# session 7: 99 only -> no click left
# session 8: 12, 10 (times out of file order) -> 2 clicks, 1 prediction
TEST = """SessionId\tItemId\tTime
5\t99\t200
5\t10\t201
5\t11\t202
6\t12\t203
6\t98\t204
7\t99\t205
5\t11\t207
8\t10\t208
8\t12\t206
"""


@pytest.fixture()
def tiny(tmp_path):
    train, test = tmp_path / "train.txt", tmp_path / "test.txt"
    train.write_text(TRAIN)
    test.write_text(TEST)
    return train, test


def test_protocol_filtering_by_hand(tiny) -> None:
    train, test = (read_log(p, "yoochoose").events for p in tiny)
    split = next_item_split(train, test)
    assert split.dropped_unknown_items == 3  # 99, 98, 99
    assert split.dropped_short_sessions == 1  # session 6 (session 7 had no click left at all)
    assert split.predictions == 3
    assert [(e.user_id, e.item_id) for e in split.test] == [
        ("5", "10"), ("5", "11"), ("8", "12"), ("5", "11"), ("8", "10")]


class Recorder:
    """Ranks a fixed list and records each request (a fake: the loop is under test)."""

    name = "recorder"

    def __init__(self, ranking):
        self.ranking, self.asked, self.learned = ranking, [], []

    def learn_many(self, events):
        self.learned.extend(e.item_id for e in events)

    def learn_one(self, event):
        self.learned.append(event.item_id)

    def recommend(self, user_id, k=10, exclude=None):
        self.asked.append((user_id, len(self.learned), None if exclude is None else sorted(exclude)))
        return [(i, 1.0) for i in self.ranking if not exclude or i not in exclude][:k]


def test_protocol_ranks_before_each_click_after_the_first_and_learns_after(tiny) -> None:
    split = next_item_split(*(read_log(p, "yoochoose").events for p in tiny))
    model = Recorder(["11", "10", "12"])
    result = next_item(model, split, k=2)
    # in time order 5:10, 5:11 (judged, rank 1), 8:12, 5:11 (judged, rank 1), 8:10 (judged, rank 2);
    # before each, the 4 train clicks and the test clicks before it were learned
    assert model.asked == [("5", 5, None), ("5", 7, None), ("8", 8, None)]
    assert result.evaluated == 3 and result.hr == 1.0
    assert result.mrr == pytest.approx((1 + 1 + 0.5) / 3)
    assert model.learned[-5:] == ["10", "11", "12", "11", "10"]
    excluded = next_item(Recorder(["11", "10", "12"]), split, k=2, exclude_seen=True)
    # 5:11 (10 excluded: 11 first), 5:11 again (10 and 11 excluded: a miss), 8:10 (12 excluded: rank 2)
    assert excluded.hr == pytest.approx(2 / 3) and excluded.mrr == pytest.approx(1.5 / 3)


def test_cli_next_item_protocol(tiny) -> None:
    train, test = tiny
    out = subprocess.run([sys.executable, "-m", "streamrec", "backtest", str(train), "--test", str(test),
                          "-f", "yoochoose", "--protocol", "next-item", "--k", "20", "--models", "sequence,trending",
                          "--json", "--no-progress"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    results = [json.loads(line) for line in out.stdout.splitlines()]
    assert [r["model"] for r in results] == ["sequence", "trending"]
    assert all(r["evaluated"] == 3 and r["k"] == 20 and {"hr", "mrr", "ndcg", "events_per_s"} <= r.keys()
               for r in results)
    assert results[0]["hr"] == 1.0  # three items in all: every target is in the top 20
    bad = subprocess.run([sys.executable, "-m", "streamrec", "backtest", str(train), "-f", "yoochoose",
                          "--protocol", "next-item", "--no-progress"], capture_output=True, text=True, timeout=120)
    assert bad.returncode != 0 and "--test" in bad.stderr
