"""The worker's pipeline driven with plain records: no Kafka, no Redis (a pure unit test)."""

from __future__ import annotations

import math
import pickle
from collections import Counter

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from core.settings import Settings
from online_models.base import Recommender
from online_models.blend import Blend
from online_models.capabilities import (
    Explains,
    ForgetsItems,
    ForgetsUsers,
    LearnsItems,
    SimilarItems,
)
from online_models.cooc import Cooc
from online_models.trending import Trending
from stream.pipeline import Counts, Pipeline, Record

TOPIC = "events"


def settings(**overrides) -> Settings:
    return Settings(_env_file=None, topic=TOPIC, **overrides)


def event(offset: int, user: str | None, item: str, type: str = "view", ts: float = 1_000.0, partition: int = 0,
          **fields) -> Record:
    body = {"item_id": item, "type": type, "ts": ts, **fields}
    if user is not None:
        body["user_id"] = user
    return Record(TOPIC, partition, offset, int(ts * 1000), (user or "").encode(), orjson.dumps(body))


def raw(offset: int, value: bytes, partition: int = 0, topic: str = TOPIC) -> Record:
    return Record(topic, partition, offset, 0, b"k", value)


class Plain(Recommender):
    """Only the contract: learn_one and recommend (ranks by count), no capability."""

    name = "plain"

    def __init__(self):
        self.learned: list = []

    def learn_one(self, interaction) -> None:
        self.learned.append(interaction)

    def recommend(self, user_id, k=10, exclude=None):
        counts = Counter(i.item_id for i in self.learned)
        ranked = [(item, float(n)) for item, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))]
        return [(item, score) for item, score in ranked if item not in (exclude or ())][:k]


class Capable(Plain):
    """Declares every optional capability the pipeline reads, and records what it was asked."""

    name = "capable"

    def __init__(self):
        super().__init__()
        self.forgotten_users: list[str] = []
        self.forgotten_items: list[str] = []
        self.items: dict[str, dict] = {}
        self.popularity = None
        self.popularity_at_learn: list[float] = []

    def learn_many(self, interactions) -> None:
        interactions = list(interactions)
        if self.popularity is not None:  # it learned the batch first
            self.popularity_at_learn.append(self.popularity.max_score())
        super().learn_many(interactions)

    def use_popularity(self, popularity) -> None:
        self.popularity = popularity

    def forget_user(self, user_id) -> None:
        self.forgotten_users.append(user_id)
        self.learned = [i for i in self.learned if i.user_id != user_id]

    def forget_items(self, item_ids) -> None:
        self.forgotten_items.extend(item_ids)

    def learn_item(self, item_id, metadata) -> None:
        self.items[item_id] = dict(metadata)

    def explain_items(self, user_id, item_ids):
        return [("counts", f"{item} is popular") for item in item_ids]

    def similar_items(self, item_id, k=10):
        return [(other, 1.0) for other, _ in self.recommend("", k + 1) if other != item_id][:k]

    def stats(self):
        return {"arms": {"counts": {"pulls": len(self.learned), "rewards": 0, "share": 1.0, "other": "x"}}}


def test_records_become_effects_and_errors_become_dead_letters_with_reasons() -> None:
    pipeline = Pipeline(settings(top_k=2), Cooc())
    effects = pipeline.process([
        event(0, "u1", "a"), event(1, "u1", "b"),
        raw(2, b"not json"),
        raw(3, orjson.dumps({"user_id": "u2", "type": "view"})),  # no item
        event(4, "u2", "a", type="teleport"),
    ])
    assert effects.counts == Counts(consumed=5, applied=2, dead_lettered=3, deduplicated=0)
    assert [r.record.offset for r in effects.dead_letters] == [2, 3, 4]
    assert all(r.reason for r in effects.dead_letters)
    assert "item_id" in effects.dead_letters[1].reason and "teleport" in effects.dead_letters[2].reason
    assert list(effects.lists) == ["u1"] and effects.model == "cooc"
    assert effects.counters == {"consumed:0": 5, "applied:0": 2, "dead_lettered:0": 3, "deduplicated:0": 0}
    assert pipeline.partitions[0].next_offset == 5
    assert effects.touched_items == {"a", "b"}


def test_counters_are_absolute_per_partition_and_only_for_touched_partitions() -> None:
    pipeline = Pipeline(settings(), Cooc())
    pipeline.process([event(0, "u1", "a", partition=0), event(0, "u2", "b", partition=1)])
    effects = pipeline.process([event(1, "u1", "c", partition=0)])
    assert effects.counters == {"consumed:0": 2, "applied:0": 2, "dead_lettered:0": 0, "deduplicated:0": 0}
    assert pipeline.totals == Counts(consumed=3, applied=3)


def test_an_event_id_seen_on_its_partition_is_a_duplicate() -> None:
    pipeline = Pipeline(settings(dedupe_window=10), Plain())
    effects = pipeline.process([event(0, "u", "a", event_id="e1"), event(1, "u", "b", event_id="e1"),
                                event(0, "u", "c", event_id="e1", partition=1)])
    assert effects.counts == Counts(consumed=3, applied=2, deduplicated=1)
    assert [i.item_id for i in pipeline.model.learned] == ["a", "c"]
    # without an event_id, the record's position names it: the same record again is a duplicate
    again = pipeline.process([event(5, "u", "d"), event(5, "u", "d")])
    assert again.counts == Counts(consumed=2, applied=1, deduplicated=1)


def test_the_dedupe_window_forgets_the_oldest_ids() -> None:
    pipeline = Pipeline(settings(dedupe_window=2), Plain())
    pipeline.process([event(n, "u", "a", event_id=f"e{n}") for n in range(3)])
    effects = pipeline.process([event(3, "u", "a", event_id="e0"), event(4, "u", "a", event_id="e2")])
    assert effects.counts == Counts(consumed=2, applied=1, deduplicated=1)  # e0 fell out, e2 did not


def test_lists_flag_seen_items_and_keep_top_k_unseen() -> None:
    pipeline = Pipeline(settings(top_k=2, seen_types=["purchase"]), Plain())
    pipeline.process([event(n, f"other{n}", item) for n, item in enumerate("aaabbc")])
    effects = pipeline.process([event(6, "u", "a", type="purchase"), event(7, "u", "b", type="view")])
    # "a" was bought (seen), "b" only viewed (not a seen type): a is flagged, two unseen kept
    assert [item for item, _ in effects.lists["u"]] == ["a", "b", "c"]
    assert effects.seen_flags["u"] == [True, False, False]


def test_a_click_on_a_served_item_is_credited_to_the_strategy_that_served_it() -> None:
    pipeline = Pipeline(settings(), Plain())
    impression = {"recomm_id": "r1", "items": [{"item_id": "a", "strategy": "cooc", "position": 3}]}
    rejects = pipeline.remember_impressions([raw(0, orjson.dumps([impression]), topic="imp"), raw(1, b"{", topic="imp")])
    assert [r.record.offset for r in rejects] == [1] and rejects[0].reason.startswith("bad impression")
    assert pipeline.control_offsets == {"imp": {0: 2}}
    pipeline.process([event(0, "u", "a", type="click", context={"recomm_id": "r1"}),
                      event(1, "u", "b", type="click", context={"recomm_id": "r1"})])  # not shown in r1
    learned = {i.item_id: i.context for i in pipeline.model.learned}
    assert learned["a"] == {"recomm_id": "r1", "strategy": "cooc", "slot": 3}
    assert learned["b"] == {"recomm_id": "r1"}
    assert pipeline.metrics.attributed == 1


def test_impressions_are_bounded() -> None:
    pipeline = Pipeline(settings(impressions_window=2), Plain())
    pipeline.remember_impressions([raw(n, orjson.dumps({"recomm_id": f"r{n}", "items": []}), topic="imp")
                                   for n in range(3)])
    assert list(pipeline.impressions) == ["r1", "r2"]


def test_a_forget_command_drops_the_user_and_a_bad_one_is_rejected() -> None:
    model = Capable()
    pipeline = Pipeline(settings(), model)
    pipeline.process([event(0, "gone", "a"), event(1, "kept", "b")])
    forget = raw(0, orjson.dumps({"action": "forget_user", "user_id": "gone"}), topic="control")
    bad = raw(1, orjson.dumps({"action": "explode"}), topic="control")
    effects = pipeline.process([event(2, "gone", "c")], [forget, bad])
    assert effects.forgotten == {"gone"} and "gone" not in effects.lists
    assert "gone" not in pipeline.seen and "gone" not in pipeline.last_active
    assert "gone" not in pipeline.partitions[0].users and model.forgotten_users == ["gone"]
    assert [r.reason for r in effects.dead_letters] == ["bad control command: unknown command"]
    assert pipeline.control_offsets["control"] == {0: 2}


def test_a_model_without_capabilities_is_driven_by_its_contract_alone() -> None:
    model = Plain()
    assert not any(isinstance(model, c) for c in (ForgetsUsers, ForgetsItems, Explains, SimilarItems, LearnsItems))
    pipeline = Pipeline(settings(similar_k=5, similar_refresh_s=0.0), model)
    forget = raw(0, orjson.dumps({"action": "forget_user", "user_id": "u"}), topic="control")
    effects = pipeline.process([event(0, "u", "a"), event(1, None, "a", type="item", context={"title": "A"}),
                                event(2, "v", "a")], [forget])
    assert effects.similar is None and effects.explanations == {}  # no capability: nothing asked
    assert effects.item_metadata == {"a": {"title": "A"}}
    assert effects.forgotten == {"u"} and "u" not in pipeline.last_active  # the worker's own record goes
    pipeline.forget_items(["a"])
    pipeline.expire_idle()


def test_declared_capabilities_are_used() -> None:
    model = Capable()
    pipeline = Pipeline(settings(similar_k=2, similar_refresh_s=0.0), model)
    effects = pipeline.process([event(0, "u", "a"), event(1, "u", "b"),
                                event(2, None, "a", type="item", context={"title": "A"})])
    assert effects.explanations["u"] == [("counts", f"{item} is popular") for item, _ in effects.lists["u"]]
    assert effects.similar == {"a": [("b", 1.0)], "b": [("a", 1.0)]}
    assert model.items == {"a": {"title": "A"}}
    assert pipeline.metrics.bandit_arms == {"counts": {"pulls": 2, "rewards": 0, "share": 1.0}}


def test_a_model_that_uses_popularity_is_handed_the_one_popularity_which_learns_first() -> None:
    model = Capable()
    pipeline = Pipeline(settings(), model)
    assert model.popularity is pipeline.popularity
    pipeline.process([event(0, "u", "a")])
    assert model.popularity_at_learn == [pipeline.popularity.max_score()] and model.popularity_at_learn[0] > 0
    restored = Pipeline(settings(), Capable())
    restored.load(pickle.loads(pickle.dumps(pipeline.state())))
    assert restored.model.popularity is restored.popularity


def test_the_popular_list_is_refreshed_at_most_every_popular_refresh_s() -> None:
    now = [100.0]
    pipeline = Pipeline(settings(popular_refresh_s=1.0), Plain(), clock=lambda: now[0])
    first = pipeline.process([event(0, "u", "a")])
    assert first.popular == [("a", 1.0)] and first.written_at == 100.0
    now[0] = 100.5
    assert pipeline.process([event(1, "u", "b")]).popular is None
    now[0] = 101.0
    assert [item for item, _ in pipeline.process([event(2, "u", "b")]).popular] == ["b", "a"]
    now[0] = 200.0
    assert pipeline.process([], [raw(0, b"{}", topic="control")]).popular is None  # no events, no refresh


def test_similar_lists_cover_the_items_touched_since_the_last_refresh() -> None:
    now = [0.0]
    pipeline = Pipeline(settings(similar_k=3, similar_refresh_s=2.0), Cooc(), clock=lambda: now[0])
    now[0] = 10.0
    assert set(pipeline.process([event(0, "u", "a"), event(1, "u", "b")]).similar) == {"a", "b"}
    now[0] = 11.0
    assert pipeline.process([event(2, "u", "c")]).similar is None  # not due: c waits
    now[0] = 12.0
    assert set(pipeline.process([event(3, "v", "d")]).similar) == {"c", "d"}


def test_a_model_without_item_similarity_writes_no_similar_lists() -> None:
    pipeline = Pipeline(settings(similar_k=3, similar_refresh_s=0.0), Trending())
    assert pipeline.process([event(0, "u", "a")]).similar is None


def test_online_hit_rate_judges_each_event_against_the_users_last_list() -> None:
    pipeline = Pipeline(settings(online_eval_k=1), Plain())
    pipeline.process([event(n, f"o{n}", item) for n, item in enumerate("aab")])
    pipeline.process([event(3, "u", "c")])  # u's list: a first
    pipeline.process([event(4, "u", "a"), event(5, "u", "b")])
    assert (pipeline.metrics.online_evaluated, pipeline.metrics.online_hits) == (2, 1)


def test_idle_users_and_items_are_forgotten() -> None:
    day = 86_400.0
    model = Capable()
    pipeline = Pipeline(settings(user_idle_expiry_s=7 * day, item_idle_expiry_s=7 * day), model)
    pipeline.process([event(0, "old", "old-item", ts=day), event(1, "new", "new-item", ts=10 * day)])
    pipeline.expire_idle()
    assert set(pipeline.last_active) == {"new"} and set(pipeline.item_last_active) == {"new-item"}
    assert model.forgotten_users == ["old"] and model.forgotten_items == ["old-item"]
    assert [item for item, _ in pipeline.popularity.top(10)] == ["new-item"]


def test_state_round_trips_and_the_restored_pipeline_goes_on_identically() -> None:
    records = [event(n, f"u{n % 3}", f"i{n % 5}") for n in range(20)]
    original = Pipeline(settings(), Cooc())
    original.process(records[:10])
    restored = Pipeline(settings(), Cooc())
    restored.load(pickle.loads(pickle.dumps(original.state())))
    assert restored.process(records[10:]).lists == original.process(records[10:]).lists
    assert restored.totals == original.totals == Counts(consumed=20, applied=20)


def test_a_partition_and_its_users_move_between_pipelines() -> None:
    peer = Pipeline(settings(), Cooc())
    peer.process([event(0, "p0-user", "a", partition=0), event(0, "p1-user", "b", partition=1)])
    here = Pipeline(settings(), Cooc())
    here.process([event(0, "mine", "c", partition=2)])
    here.adopt_partition(1, pickle.loads(pickle.dumps(peer.state())))
    assert set(here.partitions) == {1, 2} and here.partitions[1].next_offset == 1
    assert "p1-user" in here.last_active and "p0-user" not in here.last_active
    moved = peer.model.export_users(["p1-user"])
    assert "b" in str(moved) and str(here.model.export_users(["p1-user"])) == str(moved)
    assert here.seen["p1-user"] == {"b"}
    here.drop_partition(2)
    assert "mine" not in here.last_active and set(here.partitions) == {1}


@pytest.mark.parametrize("model", [Plain(), Cooc()])
def test_a_batch_of_only_rejects_learns_nothing(model) -> None:
    pipeline = Pipeline(settings(), model)
    effects = pipeline.process([raw(0, b"[]"), raw(1, b"")])
    assert effects.counts == Counts(consumed=2, dead_lettered=2)
    assert effects.lists == {} and effects.popular is None and effects.touched_items == set()


def test_a_capability_bound_on_the_instance_counts_and_a_base_placeholder_does_not() -> None:
    class Composite(Plain):
        """Declares forgetting per instance (as a composite does when all its parts forget)."""

        def _forget_user(self, user_id) -> None:
            self.learned = [i for i in self.learned if i.user_id != user_id]

    whole, parts_forget = Composite(), Composite()
    parts_forget.forget_user = parts_forget._forget_user
    assert not Pipeline(settings(), whole).can.forgets_users
    pipeline = Pipeline(settings(), parts_forget)
    assert pipeline.can.forgets_users and not pipeline.can.similar_items
    pipeline.process([event(0, "u", "a")], [raw(0, orjson.dumps({"action": "forget_user", "user_id": "u"}),
                                                topic="control")])
    assert parts_forget.learned == []


def test_an_item_event_carries_metadata_and_touches_no_user() -> None:
    model = Capable()
    pipeline = Pipeline(settings(), model)
    effects = pipeline.process([event(0, None, "a", type="item", context={"title": "A", "category": "c"})])
    assert effects.counts == Counts(consumed=1, applied=1)
    assert effects.item_metadata == {"a": {"title": "A", "category": "c"}} and model.items == effects.item_metadata
    assert effects.lists == {} and effects.touched_items == set() and model.learned == []
    assert effects.popular is None  # nothing learned: the popular list is not rewritten


def test_a_recomm_id_that_is_not_a_string_credits_nothing() -> None:
    pipeline = Pipeline(settings(), Plain())
    pipeline.remember_impressions([raw(0, orjson.dumps({"recomm_id": "1", "items": [
        {"item_id": "a", "strategy": "cooc", "position": 0}]}), topic="imp")])
    pipeline.process([event(0, "u", "a", type="click", context={"recomm_id": 1})])
    assert pipeline.metrics.attributed == 0 and pipeline.model.learned[0].context == {"recomm_id": 1}


def _cut_one_by_one(model, users, seen, top_k, eval_k):
    """The lists, seen flags and online-HR items of each user, cut one list at a time (the
    pipeline's former per-user loop): the reference for its cut on arrays."""
    depth = top_k + max((min(len(seen.get(u, ())), top_k) for u in users), default=0)
    lists, flags, shown = {}, {}, {}
    for user_id, ranked in model.recommend_many(users, depth).items():
        marks = [item in seen.get(user_id, ()) for item, _ in ranked]
        unseen_at = [n for n, is_seen in enumerate(marks) if not is_seen]
        cut = unseen_at[top_k - 1] + 1 if len(unseen_at) >= top_k else len(ranked)
        lists[user_id], flags[user_id] = ranked[:cut], marks[:cut]
        shown[user_id] = {ranked[n][0] for n in unseen_at[:eval_k]}
    return lists, flags, shown


@pytest.mark.parametrize("make", [Plain, Trending, Cooc, lambda: Cooc(max_neighbours=3),
                                  lambda: Blend(models={"cooc": {}, "trending": {}}, n_candidates=6)])
@pytest.mark.parametrize("n_items", [40, 5000])
def test_lists_cut_on_arrays_are_those_cut_one_user_at_a_time(make, n_items: int) -> None:
    import random

    rng = random.Random(n_items)
    model = make()
    if isinstance(model, Plain) and n_items > 100:
        pytest.skip("Plain ranks by counting every event: small catalogues only")
    pipeline = Pipeline(settings(top_k=4, online_eval_k=3, seen_types=["view", "purchase"]), model)
    offset = 0
    for _ in range(6):
        records = []
        for _ in range(150):
            user = f"u{rng.randrange(25)}"
            item = f"i{min(int(rng.paretovariate(1.0)) - 1, n_items - 1) if rng.random() < 0.8 else rng.randrange(n_items)}"
            records.append(event(offset, user, item, type=rng.choice(["view", "click", "purchase"])))
            offset += 1
        effects = pipeline.process(records)
        users = list(effects.lists)
        lists, flags, shown = _cut_one_by_one(model, users, pipeline.seen, 4, 3)
        assert effects.lists == lists and effects.seen_flags == flags
        assert {u: pipeline._last_lists[u] for u in users} == shown
        assert any(any(f) for f in flags.values())  # seen items were ranked, flagged and cut around


@given(st.lists(st.sampled_from("abcdefgh"), max_size=8), st.lists(st.sampled_from("abcdefghij"), max_size=12),
       st.integers(0, 6))
def test_a_run_is_deduplicated_as_event_by_event(before, ids, window):
    """``PartitionState.fresh`` keeps what ``is_duplicate`` keeps, and remembers the same ids
    (a remembered log longer than the window too, as after a smaller ``dedupe_window``)."""
    from collections import deque

    from core.schema import Event
    from stream.pipeline import PartitionState

    before = list(dict.fromkeys(before))
    one, batch = (PartitionState(recent_ids=deque(before), recent_set=set(before)) for _ in range(2))
    events = [Event("u", "i", "view", 1.0, event_id) for event_id in ids]
    want = [event for event in events if not one.is_duplicate(event.event_id, window)]
    assert batch.fresh(events, window) == want
    assert (list(batch.recent_ids), batch.recent_set) == (list(one.recent_ids), one.recent_set)


@given(st.dictionaries(st.sampled_from("abcd"), st.sampled_from([0.0, -0.0, 1.0, 2.0, 3.0])),
       st.lists(st.tuples(st.sampled_from("abcdef"), st.sampled_from([0.0, -0.0, 1.0, 2.0, 2.5, 4.0])), max_size=80),
       st.integers(0, 3))
def test_newest_times_are_noted_as_event_by_event(newest, pairs, stretches):
    """As drawn, or in order within each of a few stretches (as a batch's partitions)."""
    from stream.pipeline import _note_newest

    if stretches:
        size = -(-len(pairs) // stretches) or 1
        pairs = [pair for start in range(0, len(pairs), size) for pair in sorted(pairs[start:start + size],
                                                                                  key=lambda pair: pair[1])]
    want = dict(newest)
    for key, ts in pairs:
        want[key] = max(ts, want.get(key, 0.0))  # ties to ts
    _note_newest(newest, [key for key, _ in pairs], [ts for _, ts in pairs])
    assert list(newest.items()) == list(want.items())
    assert [math.copysign(1, ts) for ts in newest.values()] == [math.copysign(1, ts) for ts in want.values()]


@given(st.integers(0, 2**32 - 1), st.integers(1, 12), st.integers(0, 9))
def test_seen_cells_compared_per_user_are_those_looked_up_by_key(seed, n_users, width):
    """``_seen_cells`` marks the same cells whichever way it finds them (each seen item
    compared with its user's cells, or every cell's key searched among the seen ones')."""
    import numpy as np

    from online_models._arrays import IdIndex
    from stream import pipeline as module

    rng = np.random.default_rng(seed)
    index = IdIndex()
    for n in range(15):
        index.add(f"i{n}")
    rows = np.full((n_users, width), -1, dtype=np.int64)
    for j in range(n_users):
        listed = rng.permutation(15)[: rng.integers(0, width + 1)]
        rows[j, : len(listed)] = listed
    seen = [{f"i{n}" for n in rng.integers(0, 18, rng.integers(0, 6))} for _ in range(n_users)]  # i15-i17: unknown
    expected = np.array([[r >= 0 and f"i{r}" in seen[j] for r in rows[j]] for j in range(n_users)],
                        dtype=bool).reshape(n_users, width)
    for per_user in (0, 10**6):  # always searched by key, always compared
        module.SEEN_COMPARED_PER_USER, before = per_user, module.SEEN_COMPARED_PER_USER
        try:
            marks = module._seen_cells(rows, index, [f"u{j}" for j in range(n_users)],
                                       {f"u{j}": ids for j, ids in enumerate(seen)})
        finally:
            module.SEEN_COMPARED_PER_USER = before
        got = np.zeros((n_users, width), dtype=bool) if marks is None else marks  # None: no cell can be
        assert got.tolist() == expected.tolist()
