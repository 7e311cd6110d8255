"""The scale-out contract, run over every model that shares item state: users move between
replicas with ``export_users`` / ``import_users``; item state learned by one replica reaches
the others with ``item_delta`` / ``merge_item_delta``."""

from __future__ import annotations

import io
import pickle
import zlib

import numpy as np
import pytest

from core.schema import Event
from online_models import make_model
from online_models.base import Recommender
from tests.test_models import FAST, group_stream, implicit, seen_by

SHARING = [  # one per line: each model's entry comes with its implementation
    "trending",
    "cooc",
    "sequence",
    "embeddings",
    "blend",
    "content",
    "agent",
    "river-mf",
    "purchase-rerank",
    "sasrec",
]
EXACT = {"trending", "cooc", "content", "sequence"}  # item state is a sum: two replicas add up to one model exactly
STREAM = implicit(group_stream(n_users=12, per_user=12, seed=1))


def fresh(name: str) -> Recommender:
    return make_model(name, **FAST.get(name, {}))


def half(user_id: str) -> int:
    return zlib.crc32(user_id.encode()) % 2


def exchange(replicas: list[Recommender]) -> None:
    """Every replica takes every other one's delta, as the workers do through Kafka."""
    deltas = [r.item_delta() for r in replicas]
    for n, replica in enumerate(replicas):
        for m, delta in enumerate(deltas):
            if m != n:
                replica.merge_item_delta(delta)


def split_learn(name: str, events: list[Event], batch: int = 25, passes: int = 1) -> list[Recommender]:
    """Two replicas, each learning its half of the users, exchanging deltas after each batch."""
    replicas = [fresh(name), fresh(name)]
    for _ in range(passes):
        for start in range(0, len(events), batch):
            chunk = events[start : start + batch]
            for n, replica in enumerate(replicas):
                replica.learn_many([e for e in chunk if half(e.user_id) == n])
            exchange(replicas)
    return replicas


def travel(delta: dict) -> dict:
    """The delta through the worker's wire format: numpy's npz, pickle refused."""
    buffer = io.BytesIO()
    np.savez(buffer, **delta)
    buffer.seek(0)
    with np.load(buffer, allow_pickle=False) as loaded:
        return {key: loaded[key] for key in loaded.files}


def scores(model: Recommender, user_id: str) -> dict[str, float]:
    return dict(model.recommend(user_id, k=1000))


def assert_same_ranking(got: dict[str, float], want: dict[str, float], rel: float) -> None:
    assert got.keys() == want.keys()
    assert [got[i] for i in want] == pytest.approx(list(want.values()), rel=rel, abs=1e-6)


@pytest.mark.parametrize("name", SHARING)
def test_an_unchanged_model_has_an_empty_delta(name: str) -> None:
    model = fresh(name)
    assert all(np.size(v) == 0 for v in model.item_delta().values() if isinstance(v, np.ndarray))
    model.learn_many(STREAM)
    assert any(np.size(v) for v in model.item_delta().values())
    assert all(np.size(v) == 0 for v in model.item_delta().values() if isinstance(v, np.ndarray))


# agent: its scores are list positions, and a strategy's ties (new-items scores every item 0
# here) go to the item each replica met first: see test_agent_replicas_draw_alike_and_sum_their_bandits
@pytest.mark.parametrize("name", [n for n in SHARING if n != "agent"])
def test_replicas_that_exchange_deltas_agree(name: str) -> None:
    """Each user's list is the same on either replica once the user is handed over."""
    passes = 3 if name in ("embeddings", "blend") else 1
    owner, other = split_learn(name, STREAM, passes=passes)
    owner_users = sorted({e.user_id for e in STREAM if half(e.user_id) == 0})
    rel = 1e-9 if name in EXACT else 1e-3
    assert_same_ranking(scores(other, "never-seen"), scores(owner, "never-seen"), rel)
    want = {u: scores(owner, u) for u in owner_users}
    state = pickle.loads(pickle.dumps(owner.export_users(owner_users + ["unknown"])))
    other.import_users(state)
    for user in owner_users:
        got = scores(other, user)
        if name in EXACT:
            assert_same_ranking(got, want[user], rel)
        else:  # float32 steps added in another order: compare the scores of the owner's top 10
            top = list(want[user])[:10]
            assert [got[i] for i in top] == pytest.approx([want[user][i] for i in top], rel=rel, abs=1e-4)
    assert scores(other, "unknown") == scores(other, "never-seen")


@pytest.mark.parametrize("name", sorted(EXACT))
def test_replicas_rank_like_one_model_that_learned_everything(name: str) -> None:
    replicas = split_learn(name, STREAM)
    whole = fresh(name)
    whole.learn_many(STREAM)
    for user in sorted({e.user_id for e in STREAM}):
        assert_same_ranking(scores(replicas[half(user)], user), scores(whole, user), 1e-9)


# trending: popularity, no groups; river-mf: a rating model, and every rating of this implicit
# stream is 5 (one model that learns it all does not find the groups either); content: no item
# metadata here, so popularity too (test_content_split_replicas_learn_the_planted_categories
# gives it some); agent: its bandit had no feedback, so it mixes in the popularity strategies
@pytest.mark.parametrize("name", [n for n in SHARING if n not in ("trending", "river-mf", "content", "agent")])
def test_split_replicas_learn_the_planted_groups(name: str) -> None:
    passes = 3 if name in ("embeddings", "blend") else 1
    replicas = split_learn(name, STREAM, passes=passes)
    seen = seen_by(STREAM)
    for user in ("a1", "b2", "a7", "b8"):
        rec = [i for i, _ in replicas[half(user)].recommend(user, 3, seen[user])]
        assert rec and all(i[0] == user[0].upper() for i in rec), f"{name}: {user} got {rec}"


@pytest.mark.parametrize("name", SHARING)
def test_delta_travels_as_npz(name: str) -> None:
    model = fresh(name)
    model.learn_many(STREAM)
    delta = model.item_delta()
    direct, wired = fresh(name), fresh(name)
    direct.merge_item_delta(delta)
    wired.merge_item_delta(travel(delta))
    assert scores(wired, "never-seen") == scores(direct, "never-seen")
    assert scores(direct, "never-seen")


# agent: its draws are seeded per user, so a forgotten user's list is not another new user's
# (see test_agent_hands_users_over)
@pytest.mark.parametrize("name", [n for n in SHARING if n != "agent"])
def test_handing_users_over_moves_them(name: str) -> None:
    """The old owner exports then forgets; the new owner (item state merged) ranks as it did."""
    old = fresh(name)
    old.learn_many(STREAM)
    new = fresh(name)
    new.merge_item_delta(old.item_delta())
    users = ["a1", "b2"]
    want = {u: scores(old, u) for u in users}
    state = old.export_users(users)
    for user in users:
        old.forget_user(user)
    new.import_users(state)
    rel = 1e-9 if name in EXACT else 1e-4
    for user in users:
        assert_same_ranking(scores(new, user), want[user], rel)
        assert scores(old, user) == scores(old, "never-seen")


def test_embeddings_freed_rows_report_only_the_new_item() -> None:
    """A row freed by forget_items and taken by a new item reports the new item's own change,
    not its difference from the forgotten one (no gradient step here: vectors stay at init)."""
    model = make_model("embeddings", **{**FAST["embeddings"], "batch_size": 10_000})
    model.learn_many(STREAM)
    model.item_delta()
    model.forget_items(["A1", "B2"])
    assert np.size(model.item_delta()["items"]) == 0
    model.learn_one(Event(user_id="a1", item_id="new", type="view", ts=1e6))
    delta = model.item_delta()
    assert delta["items"].tolist() == ["new"] and delta["counts"].tolist() == [1.0]
    assert not delta["in"].any() and not delta["out"].any()


def test_embeddings_users_travel_as_npz() -> None:
    old = fresh("embeddings")
    old.learn_many(STREAM)
    new = fresh("embeddings")
    new.merge_item_delta(travel(old.item_delta()))
    new.import_users(travel(old.export_users(["a1", "b2"])))
    for user in ("a1", "b2"):
        assert_same_ranking(scores(new, user), scores(old, user), 1e-4)


# -- trending and cooc: origins far apart, the sparse path, freed rows, users on the wire --
def events_at(pairs: list[tuple[str, str]], ts: list[float]) -> list[Event]:
    """Events of ``(user, item)`` pairs at times ``ts``, views and clicks in turn."""
    types = ("view", "click")
    return [Event(user_id=u, item_id=i, type=types[n % 2], ts=t) for n, ((u, i), t) in enumerate(zip(pairs, ts))]


def split_like_one(make, events: list[Event], users: list[str], batch: int) -> None:
    """Two replicas (deltas through npz) rank each user like one model that learned everything."""
    replicas = [make(), make()]
    for start in range(0, len(events), batch):
        chunk = events[start : start + batch]
        for n, replica in enumerate(replicas):
            replica.learn_many([e for e in chunk if half(e.user_id) == n])
        deltas = [travel(r.item_delta()) for r in replicas]
        replicas[0].merge_item_delta(deltas[1])
        replicas[1].merge_item_delta(deltas[0])
    whole = make()
    whole.learn_many(events)
    for user in users + ["never-seen"]:
        assert_same_ranking(scores(replicas[half(user)], user), scores(whole, user), 1e-9)


@pytest.mark.parametrize("name", sorted(EXACT))
def test_replicas_with_epoch_times_far_apart_rank_like_one_model(name: str) -> None:
    """Real epoch times, and one replica's users active only 250 days after the other's:
    the time origins differ by more than the 72 half-lives after which trending rescales."""
    rng = np.random.default_rng(4)
    users = [f"u{n}" for n in range(40)]
    early, late = [u for u in users if half(u) == 0], [u for u in users if half(u) == 1]
    pairs = [(str(rng.choice(early)), f"i{rng.integers(60)}") for _ in range(600)]
    pairs += [(str(rng.choice(late)), f"i{rng.integers(60)}") for _ in range(600)]
    ts = np.concatenate([1.7e9 + np.sort(rng.uniform(0, 100, 600)) * 86400,
                         1.7e9 + np.sort(rng.uniform(250, 300, 600)) * 86400]).tolist()
    split_like_one(lambda: fresh(name), events_at(pairs, ts), users, batch=150)


def test_sparse_cooc_replicas_rank_like_one_model() -> None:
    """Past 4,096 items (the replicas move to sparse rows while merging)."""
    rng = np.random.default_rng(5)
    users = [f"u{n}" for n in range(300)]
    pairs = [(str(rng.choice(users)), f"i{rng.integers(6000)}") for _ in range(9000)]
    ts = (1.7e9 + np.arange(9000.0)).tolist()
    split_like_one(lambda: make_model("cooc", max_neighbours=None), events_at(pairs, ts), users[:40], batch=3000)


@pytest.mark.parametrize("name", sorted(EXACT))
def test_a_freed_row_reused_reports_only_its_new_item(name: str) -> None:
    model = fresh(name)
    model.learn_many(STREAM[:60])
    model.item_delta()
    model.learn_many(STREAM[60:80])
    gone = sorted({e.item_id for e in STREAM[60:80]})[:3]
    model.forget_items(gone)
    model.learn_one(Event(user_id="a1", item_id="new", type="view", ts=STREAM[80].ts))
    delta = model.item_delta()
    named = {item for key, ids in delta.items() if key.split("/")[-1] == "items" for item in ids.tolist()}
    assert "new" in named and not set(gone) & named  # in the model's own tables or its parts'
    peer = fresh(name)
    peer.merge_item_delta(delta)
    got = scores(peer, "never-seen")
    assert "new" in got and (got["new"] > 0 or name == "sequence")  # sequence scores its popular fallback 0


def test_cooc_users_travel_as_npz_and_replace_what_was_there() -> None:
    old, early, new = fresh("cooc"), fresh("cooc"), fresh("cooc")
    old.learn_many(STREAM)
    early.learn_many(STREAM[:50])
    new.merge_item_delta(travel(old.item_delta()))
    users = sorted({e.user_id for e in STREAM})
    new.import_users(travel(early.export_users(users)))  # older, shorter histories: replaced
    new.import_users(travel(old.export_users(users + ["unknown"])))
    assert new.state_sizes() == old.state_sizes()
    for user in users:
        assert_same_ranking(scores(new, user), scores(old, user), 1e-9)


# -- content and the agent ---------------------------------------------------------------
GENRES = {"A": "Sci-Fi|Action", "B": "Romance|Comedy"}


def test_content_split_replicas_learn_the_planted_categories() -> None:
    """With item metadata (which the worker sends every replica), split replicas serve each
    user their group's items; users travel as npz and rank on the new owner as before."""
    replicas = [fresh("content"), fresh("content")]
    for replica in replicas:
        replica.learn_items({e.item_id: {"title": e.item_id, "genres": GENRES[e.item_id[0]]} for e in STREAM})
    for start in range(0, len(STREAM), 25):
        chunk = STREAM[start : start + 25]
        for n, replica in enumerate(replicas):
            replica.learn_many([e for e in chunk if half(e.user_id) == n])
        exchange(replicas)
    seen = seen_by(STREAM)
    for user in ("a1", "b2", "a7", "b8"):
        rec = [i for i, _ in replicas[half(user)].recommend(user, 3, seen[user])]
        assert rec and all(i[0] == user[0].upper() for i in rec), f"{user} got {rec}"
    owner, other = replicas
    users = sorted({e.user_id for e in STREAM if half(e.user_id) == 0})
    other.import_users(travel(owner.export_users(users)))
    for user in users:
        assert_same_ranking(scores(other, user), scores(owner, user), 1e-9)
    assert all(owner.item_events(i) == other.item_events(i) for i in {e.item_id for e in STREAM})


def serve_and_learn(agent: Recommender, events: list[Event]) -> None:
    """Serve each user a list before their event, so that the event settles it (bandit feedback)."""
    seen: dict[str, set[str]] = {}
    for e in events:
        agent.recommend(e.user_id, 5, seen.get(e.user_id))
        agent.learn_one(e)
        seen.setdefault(e.user_id, set()).add(e.item_id)


def exact_agent() -> Recommender:
    """An agent whose strategies' replicas agree exactly, ties included."""
    return make_model("agent", strategies={"cooc": {}, "trending": {}}, n_slots=3)


def test_agent_replicas_draw_alike_and_sum_their_bandits() -> None:
    """Merged bandit statistics are the sums of both replicas' own updates, and the draws
    follow the merged count of updates: with strategies that agree exactly (no ties left to
    the order items were met in), every user's list is the same on either replica."""
    replicas = [exact_agent(), exact_agent()]
    own = [[], []]  # each replica's own bandit deltas
    for start in range(0, len(STREAM), 25):
        chunk = STREAM[start : start + 25]
        for n, replica in enumerate(replicas):
            serve_and_learn(replica, [e for e in chunk if half(e.user_id) == n])
        deltas = [travel(r.item_delta()) for r in replicas]
        for n in range(2):
            own[n].append(deltas[n])
            replicas[n].merge_item_delta(deltas[1 - n])
    for replica in replicas:  # what was merged in never echoes back
        assert all(np.size(v) == 0 for v in replica.item_delta().values() if isinstance(v, np.ndarray))
    summed = exact_agent().bandit
    for delta in own[0] + own[1]:
        summed.merge_delta({key: value for key, value in delta.items() if "/" not in key})
    for replica in replicas:
        bandit = replica.bandit
        assert np.array_equal(bandit._successes, summed._successes) and np.array_equal(bandit._trials, summed._trials)
        assert bandit.stats() == summed.stats() and replica.stats()["feedback"] == summed.stats()["pulls"] > 0
    owner, other = replicas
    users = sorted({e.user_id for e in STREAM if half(e.user_id) == 0})
    other.import_users(travel(owner.export_users(users)))
    for user in users + ["never-seen"]:
        assert other.recommend(user, 10) == owner.recommend(user, 10)
        assert other.last_served(user) == owner.last_served(user)


def test_agent_hands_users_over() -> None:
    """The new owner takes the users' event counts (their bandit segment), the lists served
    to them (settled by their next event there) and their strategies' state; the old owner
    forgets them."""
    old = exact_agent()
    serve_and_learn(old, STREAM)
    new = old.clone()
    new.merge_item_delta(travel(old.item_delta()))
    users = ["a1", "b2"]
    want = {u: old.recommend(u, 10) for u in users}
    served = {u: old.last_served(u) for u in users}
    state = travel(old.export_users(users + ["unknown"]))
    for user in users:
        old.forget_user(user)
    new.import_users(state)
    settled = pickle.loads(pickle.dumps(new))  # the next event of a1 settles the list served on old
    item, strategy, _ = served["a1"][0]
    before = settled.bandit.stats()
    settled.learn_one(Event(user_id="a1", item_id=item, type="click", ts=1e6))
    after = settled.bandit.stats()
    assert after["pulls"] == settled.stats()["feedback"] == before["pulls"] + 10  # shown_slots: 10
    assert after["arms"][strategy]["rewards"] == before["arms"][strategy]["rewards"] + 1
    for user in users:
        assert new.context_of(user) == {"n_events": 12} and old.context_of(user) == {"n_events": 0}
        assert new.last_served(user) == served[user] and old.last_served(user) == []
        assert new.recommend(user, 10) == want[user]
        for name, strategy in old.models.items():
            assert strategy.recommend(user, 10) == strategy.recommend("never-seen", 10), name
