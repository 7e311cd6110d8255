"""The recommendation agent's learning parts: bandits, IPS, content cold start, the agent."""

from __future__ import annotations

import copy
import pickle
import random

import numpy as np
import pytest
import torch

from core.schema import Event
from online_models import make_model
from online_models.agent import Agent
from online_models.bandit import SlotBandit, ips_estimate, ips_value
from online_models.content import Content, text_extra_available

torch.set_num_threads(1)

FAST_EMB = {"n_factors": 8, "batch_size": 8, "n_negatives": 16, "seed": 3}


# -- bandits ---------------------------------------------------------------------------


@pytest.mark.parametrize("policy", ["thompson", "ucb1"])
def test_bandit_converges_to_the_better_arm(policy: str) -> None:
    probs = {"bad": 0.1, "ok": 0.3, "best": 0.5}
    bandit = SlotBandit(list(probs), policy=policy, n_slots=1, segments=None, seed=1)
    rng = np.random.default_rng(2)
    late = []
    for t in range(3000):
        arm = bandit.choose(None, 1)[0]
        bandit.update(None, arm, float(rng.random() < probs[arm]))
        if t >= 2000:
            late.append(arm)
    assert late.count("best") / len(late) > 0.8
    stats = bandit.stats()
    assert stats["arms"]["best"]["share"] > 0.6
    assert stats["arms"]["best"]["mean"] == pytest.approx(0.5, abs=0.05)


def test_contextual_bandit_learns_per_segment_and_slot() -> None:
    bandit = SlotBandit(["trending", "cooc"], n_slots=2, seed=0)
    rng = np.random.default_rng(0)
    # new users like trending, heavy users like cooc; slot 1 is the reverse for heavy users
    truth = {("new", 0): "trending", ("heavy", 0): "cooc", ("heavy", 1): "trending"}
    for _ in range(4000):
        for (segment, slot), good in truth.items():
            arm = bandit.choose({"segment": segment}, 2)[slot]
            bandit.update({"segment": segment}, arm, float(rng.random() < (0.6 if arm == good else 0.2)), slot=slot)
    for (segment, slot), good in truth.items():
        post = bandit.posterior_mean(segment, slot)
        assert max(post, key=post.get) == good
    assert bandit.segment_of({"n_events": 0}) == 0 and bandit.segment_of({"n_events": 500}) == 2


def test_bandit_state_round_trip_and_determinism() -> None:
    a = SlotBandit(["x", "y", "z"], seed=7)
    for i in range(50):
        a.update({"n_events": i}, "xyz"[i % 3], float(i % 2), slot=i % 4)
    twin = pickle.loads(pickle.dumps(a))
    restored = SlotBandit(["x", "y", "z"], seed=7)
    restored.load_state_dict(a.state_dict())
    expected = a.choose({"n_events": 3}, 10)
    assert twin.choose({"n_events": 3}, 10) == expected == restored.choose({"n_events": 3}, 10)
    assert twin.stats() == a.stats() == restored.stats()
    with pytest.raises(ValueError):
        a.update(None, "nope", 1.0)


# -- off-policy evaluation -------------------------------------------------------------


def _logged_random_policy(n: int, seed: int):
    """Uniform-random logging over 4 arms with context-dependent click rates."""
    rng = np.random.default_rng(seed)
    rates = np.array([[0.2, 0.4, 0.6, 0.3], [0.5, 0.1, 0.2, 0.7]])
    contexts = rng.integers(0, 2, n)
    actions = rng.integers(0, 4, n)
    rewards = (rng.random(n) < rates[contexts, actions]).astype(float)
    return [(int(c), int(a), float(r), 0.25) for c, a, r in zip(contexts, actions, rewards)], rates


def test_ips_is_unbiased_on_a_logged_random_policy() -> None:
    # target: arm 2 in context 0, a 50/50 mix of arms 3 and 0 in context 1
    def target(context):
        return {2: 1.0} if context == 0 else {3: 0.5, 0: 0.5}

    true_value = 0.5 * 0.6 + 0.5 * (0.5 * 0.7 + 0.5 * 0.5)  # contexts are equally likely
    logs, _ = _logged_random_policy(40_000, seed=0)
    est, se = ips_value(target, logs)
    assert abs(est - true_value) < max(4 * se, 1e-9) and abs(est - true_value) < 0.03
    snips, _ = ips_value(target, logs, self_normalised=True)
    assert snips == pytest.approx(true_value, abs=0.03)
    # unbiased: the mean of many small-sample estimates is the true value
    small = [ips_value(target, _logged_random_policy(200, seed=s)[0])[0] for s in range(1, 301)]
    assert np.mean(small) == pytest.approx(true_value, abs=0.015)
    # a deterministic policy given as one action
    est_det, _ = ips_value(lambda c: 2, logs)
    assert est_det == pytest.approx(0.5 * 0.6 + 0.5 * 0.2, abs=0.03)
    with pytest.raises(ValueError):
        ips_estimate([1.0], [1.0], [0.0])


# -- content ---------------------------------------------------------------------------


CATALOGUE = {
    **{f"A{i}": {"title": f"Space saga part {i}", "genres": "Sci-Fi|Action"} for i in range(10)},
    **{f"B{i}": {"title": f"Love in Paris {i}", "genres": "Romance|Comedy"} for i in range(10)},
}
NEW = {"A-new": {"title": "Space saga returns", "genres": "Sci-Fi|Action"},
       "B-new": {"title": "Love in Rome", "genres": "Romance|Comedy"}}


def category_stream(seed: int = 0) -> list[Event]:
    """Users ``a*`` meet only ``A*`` items, ``b*`` only ``B*``; B items are the popular ones."""
    rng = random.Random(seed)
    events, t = [], 0.0
    for u in range(30):
        group = "a" if u < 10 else "b"  # twice as many b users: B items are more popular
        for i in rng.sample(range(10), 6):
            t += 1
            events.append(Event(user_id=f"{group}{u}", item_id=f"{group.upper()}{i}", type="click", ts=t))
    rng.shuffle(events)
    return [Event(user_id=e.user_id, item_id=e.item_id, type=e.type, ts=float(t)) for t, e in enumerate(events)]


def _seen(events: list[Event]) -> dict[str, set[str]]:
    seen: dict[str, set[str]] = {}
    for e in events:
        seen.setdefault(e.user_id, set()).add(e.item_id)
    return seen


encoders = ["hash"] + (["minilm"] if text_extra_available() else [])


@pytest.mark.parametrize("encoder", encoders)
def test_content_cold_start_recommends_new_items_in_the_favourite_category(encoder: str) -> None:
    events = category_stream()
    seen = _seen(events)
    model = Content(text_encoder=encoder, popularity_weight=0.5)
    assert model.encoder == encoder
    model.learn_items(CATALOGUE)
    model.learn_many(events)
    model.learn_items(NEW)  # arrive later, before any interaction
    assert model.item_events("A-new") == 0 and model.has_content("A-new")
    for user in ("a0", "a5"):
        everything_a = seen[user] | {f"A{i}" for i in range(10)}
        top = [i for i, _ in model.recommend(user, 3, everything_a)]
        assert top[0] == "A-new", top  # over the popular B items
        assert "B-new" not in [i for i, _ in model.recommend(user, 5, seen[user])]
    assert [i for i, _ in model.recommend("b12", 1, seen["b12"] | {f"B{i}" for i in range(10)})] == ["B-new"]
    # the default (popularity weighs as much as content) still lists it in the top 3
    default = Content(text_encoder=encoder)
    default.learn_items(CATALOGUE)
    default.learn_many(events)
    default.learn_items(NEW)
    assert "A-new" in [i for i, _ in default.recommend("a0", 3, seen["a0"] | {f"A{i}" for i in range(10)})]
    # co-occurrence cannot recommend an item nobody has touched
    cooc = make_model("cooc")
    cooc.learn_many(events)
    assert "A-new" not in [i for i, _ in cooc.recommend("a0", 100)]
    # the explore-new-items variant only proposes items with few interactions
    new_only = Content(max_item_events=1, popularity_weight=0.0, text_encoder=encoder)
    new_only.learn_items({**CATALOGUE, **NEW})
    new_only.learn_many(events)
    assert [i for i, _ in new_only.recommend("a0", 2)] == ["A-new", "B-new"]
    assert "Sci-Fi" in model.explain("a0", "A-new") and "new" in model.explain("a0", "A-new")
    assert [i for i, _ in model.similar_items("A-new", 3)][0].startswith("A")


def test_content_metadata_through_events_and_forget() -> None:
    model = Content(text_encoder="hash", popularity_weight=0.0)
    model.learn_one(Event(user_id="-", item_id="m1", type="item", ts=0, context={"title": "Alien", "genres": ["Horror"]}))
    model.learn_one(Event(user_id="u", item_id="m2", type="view", ts=1,
                          context={"item": {"title": "Aliens", "category": "Horror"}}))
    model.learn_item("m3", {"title": "Notting Hill", "genres": "Romance"})
    assert model.item_events("m1") == 0 and model.item_events("m2") == 1
    assert [i for i, _ in model.recommend("u", 2, {"m2"})] == ["m1", "m3"]
    model.forget_user("u")
    assert model.recommend("u", 1, {"m2"})  # a list still (the catalogue), no profile


def _content_reference(model: Content, user_id: str, exclude: set[str]) -> list[tuple[str, float]]:
    """Content's definition, one user at a time in float64: cosine to the decayed profile
    plus scaled popularity, every rankable item best first (ties to the lower row)."""
    n = len(model._items)
    feats = np.hstack([model._cat[:n], model._text[:n]]).astype(np.float64)
    profile = np.zeros(feats.shape[1])
    for age, (row, w) in enumerate(reversed(model._recent.get(user_id, ()))):
        profile += w * model.recency_decay**age * feats[row]
    norm = np.linalg.norm(profile)
    scores = feats @ (profile / norm if norm else profile)
    top, popularity = model._trending.max_score(), model._trending.raw_scores()
    for row, item_id in enumerate(model._items.ids[:n]):
        trend_row = None if item_id is None else model._trending._items.get(item_id)  # the item's popularity
        if trend_row is not None and top > 0:
            scores[row] += popularity[trend_row] * model.popularity_weight / top
    ids = model._items.ids
    ranked = sorted(
        (-s, row) for row, s in enumerate(scores.tolist())
        if ids[row] is not None and ids[row] not in exclude
        and (model.max_item_events is None or model._counts[row] < model.max_item_events)
    )
    return [(ids[row], -s) for s, row in ranked]


@pytest.mark.parametrize("params", [{}, {"max_item_events": 3, "popularity_weight": 0.0}, {"popularity_weight": 0.3}])
def test_content_batch_ranking_matches_its_definition(params: dict) -> None:
    """Items with and without content, freed rows, users with and without a profile: the
    batched path (products over items with content, one popularity ranking for the rest)
    ranks as the one-user definition does, up to float32 rounding."""
    rng = random.Random(4)
    words = "space love night city war star road king dark light".split()
    model = Content(text_encoder="hash", **params)
    model.learn_items({f"i{i}": {"title": " ".join(rng.sample(words, 2)), "genres": rng.choice(["A", "B|C", "D"])}
                       for i in range(300) if i % 3})  # every third item has no content
    events = [Event(user_id=f"u{rng.randrange(40)}", item_id=f"i{int(rng.paretovariate(0.8)) % 400}",
                    type=rng.choice(["view", "click", "purchase"]), ts=float(t)) for t in range(1500)]
    model.learn_many(events)
    model.forget_items([f"i{i}" for i in range(0, 400, 17)])
    model.learn_one(Event(user_id="bare", item_id="i2", type="view", ts=2000.0))  # only an item without content
    users = [f"u{i}" for i in range(40)] + ["bare", "nobody"]
    seen = {u: items for u, items in _seen(events[:1200]).items()}
    for k in (1, 10, 500):
        got = model.recommend_many(users, k, seen)
        for user in users:
            ranked = _content_reference(model, user, seen.get(user, set()))
            # the same scores rank by rank, each the item's own: only float32 near-ties may swap
            assert [s for _, s in got[user]] == pytest.approx([s for _, s in ranked[:k]], rel=1e-5, abs=1e-6), user
            score_of = dict(ranked)
            assert [score_of.get(i) for i, _ in got[user]] == pytest.approx([s for _, s in got[user]], abs=1e-5)
            assert len({i for i, _ in got[user]}) == len(got[user])
            one = model.recommend(user, k, seen.get(user))  # a one-row product: rounding may differ
            assert [s for _, s in one] == pytest.approx([s for _, s in got[user]], rel=1e-5, abs=1e-6)


def test_content_state_from_before_the_content_mask() -> None:
    """Checkpoints written before ``_has_content`` was kept load and rank as before."""
    model = Content(text_encoder="hash")
    model.learn_items(CATALOGUE)
    model.learn_many(category_stream())
    old_state = copy.deepcopy(vars(model))
    del old_state["_has_content"]
    unpickled = Content.__new__(Content)
    unpickled.__setstate__(old_state)
    assert unpickled.has_content("A1") and unpickled.recommend("a0", 5) == model.recommend("a0", 5)


# -- the agent -------------------------------------------------------------------------


def small_agent(**kw) -> Agent:
    strategies = {
        "cooc": {},
        "embeddings": {"params": FAST_EMB},
        "trending": {},
        "content": {"params": {"text_encoder": "hash"}},
        "new-items": {"model": "content", "params": {"max_item_events": 3, "popularity_weight": 0.0,
                                                     "text_encoder": "hash"}},
    }
    return Agent(strategies=strategies, **kw)


def test_agent_explains_with_strategy_and_reason() -> None:
    events = category_stream()
    agent = small_agent(seed=3)
    agent.learn_items({**CATALOGUE, **NEW})
    agent.learn_many(events)
    seen = _seen(events)
    strategies_seen = set()
    for user in ("a0", "a3", "b12", "nobody"):
        explained = agent.recommend_explained(user, 10, seen.get(user))
        assert explained and len({i for i, *_ in explained}) == len(explained)
        assert not {i for i, *_ in explained} & seen.get(user, set())
        for item, score, strategy, reason in explained:
            strategies_seen.add(strategy)
            assert strategy in agent.models and isinstance(reason, str) and reason
        assert [s for _, s, _, _ in explained] == sorted([s for _, s, _, _ in explained], reverse=True)
        # served like recommend: the same list
        assert [i for i, *_ in explained] == [i for i, _ in agent.recommend(user, 10, seen.get(user))]
    assert len(strategies_seen) >= 3
    assert agent.reason("a0", "A-new", "content").startswith("new (0 interactions")
    # co-occurrence names the recent item that contributed
    item = agent.models["cooc"].recommend("a0", 1, seen["a0"])[0][0]
    assert agent.reason("a0", item, "cooc").startswith("often viewed with A")
    assert agent.reason("a0", item, "trending") == "popular now"


def test_agent_learns_which_strategy_gets_clicks() -> None:
    """User a0 only ever clicks A items: content (which knows they like A) should win over trending (B items)."""
    events = category_stream()
    agent = Agent(strategies={"trending": {"params": {"half_life_s": None}},
                              "content": {"params": {"text_encoder": "hash", "popularity_weight": 0.0}}},
                  n_slots=3, segments=None, seed=0)
    agent.learn_items(CATALOGUE)
    agent.learn_many(events)
    users = [f"a{u}" for u in range(10)]
    t = 1000.0
    for step in range(300):
        user = users[step % len(users)]
        served = [i for i, _ in agent.recommend(user, 3)]
        clicked = next((i for i in served if i.startswith("A")), "A0")
        t += 1
        agent.learn_one(Event(user_id=user, item_id=clicked, type="click", ts=t))
    post = agent.bandit.posterior_mean(None, 0)
    assert post["content"] > post["trending"]
    stats = agent.stats()
    assert stats["arms"]["content"]["share"] > 0.5 and stats["feedback"] > 0
    assert stats["served_share"]["content"] > 0.5


def test_agent_attributed_feedback_and_soft_negatives() -> None:
    agent = Agent(strategies={"trending": {}, "cooc": {}}, segments=None, n_slots=2, seed=0)
    for t, (u, i) in enumerate([("a", "x"), ("a", "y"), ("b", "x"), ("b", "z")]):
        agent.learn_one(Event(user_id=u, item_id=i, type="view", ts=float(t)))
    served = agent.recommend("c", 2)
    assert len(agent.last_served("c")) == 2
    agent.learn_one(Event(user_id="c", item_id="nothing-served", type="view", ts=9.0))
    stats = agent.stats()
    assert stats["pulls"] == 2 and sum(a["rewards"] for a in stats["arms"].values()) == 0  # two soft negatives
    assert agent.last_served("c") == []  # settled once
    agent.learn_one(Event(user_id="c", item_id="x", type="click", ts=10.0, context={"strategy": "cooc", "slot": 0}))
    assert agent.bandit.stats()["arms"]["cooc"]["rewards"] == 1.0
    assert served  # the agent served something to a brand-new user
    agent.forget_user("c")
    assert agent.context_of("c") == {"n_events": 0}


def test_agent_round_trips_with_its_bandit() -> None:
    events = category_stream()
    seen = _seen(events)
    agent = small_agent(seed=5)
    agent.learn_items(CATALOGUE)
    for e in events:  # serve before each event so feedback reaches the bandit
        agent.recommend(e.user_id, 10, seen.get(e.user_id))
        agent.learn_one(e)
    assert agent.stats()["feedback"] > 0
    pickled = pickle.loads(pickle.dumps(agent))
    assert pickled.bandit.stats() == agent.bandit.stats()
    for user in ("a0", "b15", "new"):
        assert pickled.recommend_explained(user, 10, seen.get(user)) == agent.recommend_explained(user, 10, seen.get(user))
    later = Event(user_id="a0", item_id="A-new", type="click", ts=1e6)
    for m in (agent, pickled):
        m.learn_item("A-new", NEW["A-new"])
        m.learn_one(later)
    assert pickled.recommend("a0", 10) == agent.recommend("a0", 10)


def test_agent_batch_asks_each_strategy_only_for_the_users_who_need_it() -> None:
    """The bandit favours a strategy that soon runs out of items: the other one is asked
    only for the users whose lists it must finish, and every list is what ``recommend`` gives."""
    events = category_stream()
    seen = _seen(events)
    agent = Agent(strategies={"trending": {"params": {"half_life_s": None}},
                              "few": {"model": "content", "params": {"max_item_events": 4, "popularity_weight": 0.0,
                                                                     "text_encoder": "hash"}}},
                  segments=None, n_slots=3)
    agent.learn_items(CATALOGUE)
    agent.learn_many(events)
    agent.learn_items(NEW)
    for slot in range(3):
        for _ in range(200):
            agent.feedback("-", "few", 1.0, slot)
            agent.feedback("-", "trending", 0.0, slot)
    users = ["a0", "a3", "b12", "b20", "nobody"]
    twin = pickle.loads(pickle.dumps(agent))
    asked: dict[str, list[list[str]]] = {"trending": [], "few": []}
    for name, model in agent.models.items():
        def spy(user_ids, k=10, exclude=None, name=name, inner=model.recommend_many):
            asked[name].append(list(user_ids))
            return inner(user_ids, k, exclude)
        model.recommend_many = spy
    many = agent.recommend_many(users, 3, seen)
    assert many == {u: twin.recommend(u, 3, seen.get(u)) for u in users}
    assert asked["few"] == [users]  # the first choice of every slot, for everyone
    # trending: a second round, for the users whose "few" list ran short (and only them)
    short = [u for u in users if len(twin.models["few"].recommend(u, 6, seen.get(u))) < 3]
    assert short and asked["trending"] == [short]
