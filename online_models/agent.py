"""The recommendation agent: a bandit learns from feedback which strategy fills each slot.

:class:`Agent` holds several strategies (registered models: co-occurrence, sequential rules, embeddings,
trending, content, and content restricted to new items as exploration). For each list it
asks a :class:`online_models.bandit.SlotBandit` which strategy serves each slot (per
user-activity segment: new / casual / heavy), takes that strategy's best item not yet in
the list, and remembers what it served to the user, with the strategy and slot of each item.

Feedback. When the user's next interaction arrives (``learn_one``), the list last served
to them is settled: the slot holding the item they interacted with earns reward 1 for its
strategy; the other shown slots (the first ``shown_slots``) earn 0 (soft negatives). An
event whose ``context`` names a ``strategy`` (the UI attributed a click to it; ``slot``
optional) rewards that strategy directly. The lead's API can also call :meth:`Agent.feedback`
and :meth:`Agent.record_served`. Every strategy learns every event.

Determinism: the bandit's draws for a user come from a generator seeded by ``seed``, the
user and the number of feedback updates so far, so ``recommend`` is a function of the
state (the same list when asked twice, ``recommend_many`` equals ``recommend``) while
exploration still moves on as feedback arrives.

:meth:`Agent.recommend_explained` gives ``(item_id, score, strategy, reason)`` with a reason
in words, each from its strategy's ``explain_items`` ("often viewed with X, which you viewed",
"in Drama, which you like", "popular now").
"""

from __future__ import annotations

import functools
from collections import OrderedDict
from collections.abc import Collection, Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from online_models import tables
from online_models.bandit import DEFAULT_SEGMENTS, SlotBandit, stable_hash
from online_models.base import Interaction, Ranking, Recommender
from online_models.capabilities import (Explains, LearnsItems, SimilarItems, UsesPopularity, declare_from_parts,
                                        largest_sizes, undeclared)
from online_models.parts import make_part
from online_models.trending import Trending

DEFAULT_STRATEGIES: dict[str, dict[str, Any]] = {
    "cooc": {"model": "cooc"},
    "sequence": {"model": "sequence"},
    "embeddings": {"model": "embeddings"},
    "trending": {"model": "trending"},
    "content": {"model": "content"},
    "new-items": {"model": "content", "params": {"max_item_events": 5, "popularity_weight": 0.0}},
}
"""Strategy name -> ``{"model": registry name, "params": hyperparameters}``."""

Explained = list[tuple[str, float, str, str]]


class Agent(Recommender):
    """A bandit over recommendation strategies, learning from the user's next interaction.

    Parameters
    ----------
    strategies
        Strategy name to ``{"model": registry name, "params": {...}}`` (``None``: the
        defaults, ``DEFAULT_STRATEGIES``). A strategy whose ``model`` is omitted uses its
        name as the registry name.
    policy
        ``"thompson"`` or ``"ucb1"`` (see :class:`SlotBandit`).
    n_slots
        List positions with their own bandit statistics (later ones share the last).
    segments
        User segments by event count (``None``: one segment for all users).
    prior, ucb_c, discount
        Passed to the bandit.
    shown_slots
        How many top positions of a served list count as seen by the user: those without
        the next interaction become soft negatives (reward 0).
    reward_types
        Event types that count as positive feedback (``None``: every type).
    n_candidates
        Candidates asked of a strategy per list, at least ``k`` (``None``: ``2 * k``).
    max_served_users
        Served lists remembered (least recently served users are dropped beyond it).
    seed
        Seeds the bandit's draws.

    Examples
    --------
    >>> from core.schema import Event
    >>> agent = Agent(strategies={"cooc": {}, "trending": {"params": {"half_life_s": None}}})
    >>> for user, items in {"a": "xy", "b": "xy", "c": "xz"}.items():
    ...     for item in items:
    ...         agent.learn_one(Event(user_id=user, item_id=item, type="view", ts=0))
    >>> item, score, strategy, reason = agent.recommend_explained("c", k=1, exclude={"x", "z"})[0]
    >>> item, strategy in ("cooc", "trending")
    ('y', True)
    >>> agent.reason("c", "y", "cooc")
    'often viewed with x, which you viewed'
    >>> agent.learn_one(Event(user_id="c", item_id="y", type="click", ts=1))  # a hit: the strategy is rewarded
    >>> agent.bandit.stats()["arms"][strategy]["rewards"]
    1.0
    """

    name = "agent"

    def __init__(
        self,
        strategies: Mapping[str, Mapping[str, Any]] | None = None,
        policy: str = "thompson",
        n_slots: int = 10,
        segments: Sequence[tuple[str, float]] | None = DEFAULT_SEGMENTS,
        prior: tuple[float, float] = (1.0, 1.0),
        ucb_c: float = 1.0,
        discount: float | None = None,
        shown_slots: int = 10,
        reward_types: Collection[str] | None = None,
        n_candidates: int | None = None,
        max_served_users: int = 100_000,
        seed: int = 0,
    ):
        self.strategies = strategies
        self.policy = policy
        self.n_slots = n_slots
        self.segments = segments
        self.prior = prior
        self.ucb_c = ucb_c
        self.discount = discount
        self.shown_slots = shown_slots
        self.reward_types = reward_types
        self.n_candidates = n_candidates
        self.max_served_users = max_served_users
        self.seed = seed
        specs = DEFAULT_STRATEGIES if strategies is None else strategies
        if not specs:
            raise ValueError("an agent needs at least one strategy")
        self._models: dict[str, Recommender] = {
            name: make_part(spec.get("model", name), spec.get("params"))
            for name, spec in ((n, dict(s or {})) for n, s in specs.items())
        }
        # one popularity: a trending strategy, learned before the others, is the one they read
        self._popularity = next((m for m in self._models.values() if isinstance(m, Trending)), None)
        if self._popularity is not None:
            self._use_popularity(self._popularity)
        self._bandit = SlotBandit(list(self._models), policy=policy, n_slots=n_slots, segments=segments,
                                  prior=prior, ucb_c=ucb_c, discount=discount, seed=seed)
        self._n_events: dict[str, int] = {}
        # user -> (segment context, [(item, strategy, slot), ...]) of the list last served
        self._served: OrderedDict[str, tuple[dict, list[tuple[str, str, int]]]] = OrderedDict()
        self._feedback = 0  # bandit updates so far: moves the draws on
        self._served_slots: dict[str, int] = {name: 0 for name in self._models}  # slots filled, all lists
        declare_from_parts(self, self._models.values())

    def __getstate__(self) -> dict[str, Any]:
        return undeclared(self.__dict__)

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(undeclared(state))
        declare_from_parts(self, self._models.values())

    # -- parts -----------------------------------------------------------------------
    @property
    def bandit(self) -> SlotBandit:
        return self._bandit

    @property
    def models(self) -> Mapping[str, Recommender]:
        """The strategies' models by strategy name."""
        return self._models

    def context_of(self, user_id: str) -> dict[str, Any]:
        """The bandit context of a user: their event count so far."""
        return {"n_events": self._n_events.get(user_id, 0)}

    # -- catalogue -------------------------------------------------------------------
    def _learn_item(self, item_id: str, metadata: Mapping[str, Any]) -> None:
        """Pass an item's metadata to the strategies that use content."""
        for model in self._models.values():
            if isinstance(model, LearnsItems):
                model.learn_item(item_id, metadata)

    def learn_items(self, catalogue: Mapping[str, Mapping[str, Any]]) -> None:
        """Pass a catalogue to the strategies that use content (in batches where they can)."""
        for model in self._models.values():
            learn = getattr(model, "learn_items", None)
            if callable(learn):
                learn(catalogue)
            elif isinstance(model, LearnsItems):
                for item_id, metadata in catalogue.items():
                    model.learn_item(item_id, metadata)

    # -- feedback --------------------------------------------------------------------
    def _is_positive(self, interaction: Interaction) -> bool:
        return self.reward_types is None or interaction.type in self.reward_types

    def feedback(self, user_id: str, strategy: str, reward: float = 1.0, slot: int = 0,
                 context: Mapping[str, Any] | None = None) -> None:
        """Reward ``strategy`` (served in ``slot`` to ``user_id``) directly, e.g. an attributed click."""
        self._bandit.update(self.context_of(user_id) if context is None else context, strategy, reward, slot)
        self._feedback += 1

    def record_served(self, user_id: str, served: Iterable[tuple[str, str]], context: Mapping[str, Any] | None = None) -> None:
        """Remember the list shown to a user as ``(item_id, strategy)`` pairs, best first.

        ``recommend`` does this itself; call it when the list actually shown differs
        (the impressions the front end reports).
        """
        entries = [(item, strategy, slot) for slot, (item, strategy) in enumerate(served) if strategy in self._models]
        self._served[user_id] = (dict(context or self.context_of(user_id)), entries)
        self._served.move_to_end(user_id)
        while len(self._served) > self.max_served_users:
            self._served.popitem(last=False)

    def last_served(self, user_id: str) -> list[tuple[str, str, int]]:
        """The unsettled list last served to the user: ``(item_id, strategy, slot)``."""
        entry = self._served.get(user_id)
        return list(entry[1]) if entry else []

    def _settle(self, interaction: Interaction) -> None:
        user = interaction.user_id
        context = getattr(interaction, "context", None)
        strategy = context.get("strategy") if isinstance(context, Mapping) else None
        positive = self._is_positive(interaction)
        if strategy in self._models and positive:  # attributed by the front end
            slot = context.get("slot", 0)
            self.feedback(user, strategy, 1.0, int(slot) if isinstance(slot, (int, float)) else 0)
            self._served.pop(user, None)
            return
        entry = self._served.pop(user, None)
        if entry is None:
            return
        served_context, entries = entry
        update = self._bandit.update
        for item, arm, slot in entries:
            hit = positive and item == interaction.item_id
            if hit or slot < self.shown_slots:
                update(served_context, arm, 1.0 if hit else 0.0, slot)
                self._feedback += 1

    # -- learning --------------------------------------------------------------------
    def learn_one(self, interaction: Interaction) -> None:
        if interaction.type == "item":
            context = getattr(interaction, "context", None) or {}
            self._learn_item(interaction.item_id, context)
            return
        self._settle(interaction)
        for model in self._learners():
            model.learn_one(interaction)
        self._n_events[interaction.user_id] = self._n_events.get(interaction.user_id, 0) + 1

    def learn_many(self, interactions: Iterable[Interaction]) -> None:
        """Feedback in order, then each strategy's ``learn_many`` (equal to ``learn_one`` in a loop)."""
        batch: list[Interaction] = []
        for interaction in interactions:
            if interaction.type == "item":
                self._flush(batch)
                batch = []
                self.learn_one(interaction)
                continue
            self._settle(interaction)
            self._n_events[interaction.user_id] = self._n_events.get(interaction.user_id, 0) + 1
            batch.append(interaction)
        self._flush(batch)

    def _flush(self, batch: list[Interaction]) -> None:
        if batch:
            for model in self._learners():
                model.learn_many(batch)

    def _learners(self) -> list[Recommender]:
        """The strategies in the order they learn: the popularity the others read first."""
        popularity = self.__dict__.get("_popularity")
        return [popularity, *(m for m in self._models.values() if m is not popularity)] if popularity else [
            *self._models.values()]

    def _use_popularity(self, popularity: Any) -> bool:
        """Hand ``popularity`` to every strategy that ranks with one (the trending strategy
        stays a strategy of its own)."""
        return any([m.use_popularity(popularity) for m in self._models.values()
                    if m is not popularity and isinstance(m, UsesPopularity)])

    def _forget_user(self, user_id: str) -> None:
        """Drop the user's event count, served list and everything each strategy knows of them."""
        self._n_events.pop(user_id, None)
        self._served.pop(user_id, None)
        for model in self._models.values():
            model.forget_user(user_id)

    def _forget_items(self, item_ids: Collection[str]) -> None:
        """Every strategy forgets the items (lists already served keep naming them)."""
        for model in self._models.values():
            model.forget_items(item_ids)

    def _state_sizes(self) -> dict[str, int]:
        return largest_sizes(self._models.values())

    # -- scale-out ---------------------------------------------------------------------
    def _export_users(self, user_ids: Collection[str]) -> dict[str, Any]:
        """The users' event counts and unsettled served lists, and each strategy's export.

        Returns
        -------
        dict
            Flat (it travels as npz when the strategies' exports do): each strategy's
            export under ``"<strategy>/"``; ``users`` (str) and ``n_events`` (int64) for the
            users with an event count; ``served_users`` (str), ``served_segments`` (str, the
            bandit segment each list was served in: all the bandit reads of its context),
            ``served_lengths`` (int64) and ``served_items``, ``served_strategies`` (str) and
            ``served_slots`` (int64), the lists one after the other. Unknown users are left out.
        """
        wanted = list(dict.fromkeys(user_ids))
        out = tables.prefixed({name: model.export_users(wanted) for name, model in self._models.items()})
        counted = [u for u in wanted if u in self._n_events]
        served = [u for u in wanted if u in self._served]
        entries = [self._served[u][1] for u in served]
        names, segment_of = self._bandit.segment_names, self._bandit.segment_of
        out.update({
            "users": np.array(counted, dtype=str),
            "n_events": np.array([self._n_events[u] for u in counted], dtype=np.int64),
            "served_users": np.array(served, dtype=str),
            "served_segments": np.array([names[segment_of(self._served[u][0])] for u in served], dtype=str),
            "served_lengths": np.array([len(e) for e in entries], dtype=np.int64),
            "served_items": np.array([item for e in entries for item, _, _ in e], dtype=str),
            "served_strategies": np.array([arm for e in entries for _, arm, _ in e], dtype=str),
            "served_slots": np.array([slot for e in entries for _, _, slot in e], dtype=np.int64),
        })
        return out

    def _import_users(self, state: Mapping[str, Any]) -> None:
        """Adopt ``export_users``' users, replacing their event counts and served lists here
        (a user exported without one has none here either), and pass each strategy its part."""
        own, parts = tables.split(state, self._models)
        for name, model in self._models.items():
            model.import_users(parts[name])
        counted = np.asarray(own.get("users", ())).tolist()
        served = np.asarray(own.get("served_users", ())).tolist()
        for user_id in set(counted) | set(served):
            self._n_events.pop(user_id, None)
            self._served.pop(user_id, None)
        self._n_events.update(zip(counted, np.asarray(own.get("n_events", ()), dtype=np.int64).tolist()))
        if not served:
            return
        entries = list(zip(np.asarray(own["served_items"]).tolist(), np.asarray(own["served_strategies"]).tolist(),
                           np.asarray(own["served_slots"], dtype=np.int64).tolist()))
        end = 0
        for user_id, segment, size in zip(served, np.asarray(own["served_segments"]).tolist(),
                                          np.asarray(own["served_lengths"]).tolist()):
            start, end = end, end + size
            self._served[user_id] = ({"segment": segment}, [e for e in entries[start:end] if e[1] in self._models])
        while len(self._served) > self.max_served_users:
            self._served.popitem(last=False)

    def _item_delta(self) -> dict[str, Any]:
        """Each strategy's delta, its keys prefixed with the strategy's name and ``/``, and
        the bandit's (``SlotBandit.delta``: its statistics are global sums) under its own
        keys, which hold no ``/``."""
        out = tables.prefixed({name: model.item_delta() for name, model in self._models.items()})
        out.update(self._bandit.delta())
        return out

    def _merge_item_delta(self, delta: Mapping[str, Any]) -> None:
        """Pass each strategy its part and add the bandit's; the count of bandit updates that
        moves the draws on follows the updates merged in, so replicas with the same
        statistics draw alike."""
        own, parts = tables.split(delta, self._models)
        for name, model in self._models.items():
            model.merge_item_delta(parts[name])
        self._bandit.merge_delta(own)
        self._feedback += int(np.asarray(own.get("pulls", ()), dtype=np.int64).sum())

    # -- ranking ---------------------------------------------------------------------
    def _rng(self, user_id: str) -> np.random.Generator:
        return np.random.default_rng([self.seed & 0xFFFFFFFF, stable_hash(user_id), self._feedback])

    def _arm_order(self, scores: np.ndarray) -> np.ndarray:
        """Per slot, the arm indexes by the bandit's scores, best first."""
        return np.argsort(-scores, axis=1, kind="stable")

    def _assemble(
        self, user_id: str, k: int, candidates, order: np.ndarray | None = None
    ) -> list[tuple[str, float, str, int]]:
        """Fill ``k`` slots from the strategies the bandit picks; ``candidates(name)`` is lazy.

        ``order``: the user's ``_arm_order`` when already drawn.
        """
        if k <= 0:
            return []
        if order is None:
            order = self._arm_order(self._bandit.arm_scores(self.context_of(user_id), k, self._rng(user_id)))
        arms = self._bandit.arms
        pos = dict.fromkeys(arms, 0)
        used: set[str] = set()
        exhausted: set[str] = set()
        out: list[tuple[str, float, str, int]] = []
        for slot in range(k):
            for a in order[slot].tolist():
                arm = arms[a]
                if arm in exhausted:
                    continue
                ranking = candidates(arm)
                i = pos[arm]
                while i < len(ranking) and ranking[i][0] in used:
                    i += 1
                pos[arm] = i
                if i >= len(ranking):
                    exhausted.add(arm)
                    continue
                item = ranking[i][0]
                used.add(item)
                pos[arm] = i + 1
                out.append((item, 1.0 / (len(out) + 1), arm, i))
                break
            else:
                break  # every strategy is out of candidates
        return out

    def _n(self, k: int) -> int:
        return max(k, self.n_candidates if self.n_candidates is not None else 2 * k)

    def _serve(self, user_id: str, picked: list[tuple[str, float, str, int]]) -> Ranking:
        if picked:
            self.record_served(user_id, [(item, arm) for item, _, arm, _ in picked])
            for _, _, arm, _ in picked[: self.shown_slots]:
                self._served_slots[arm] += 1
        return [(item, score) for item, score, _, _ in picked]

    def _pick(self, user_id: str, k: int, exclude: Collection[str] | None) -> list[tuple[str, float, str, int]]:
        n = self._n(k)
        cache: dict[str, Ranking] = {}

        def candidates(name: str) -> Ranking:
            if name not in cache:
                cache[name] = self._models[name].recommend(user_id, n, exclude)
            return cache[name]

        return self._assemble(user_id, k, candidates)

    def recommend(self, user_id: str, k: int = 10, exclude: Collection[str] | None = None) -> Ranking:
        return self._serve(user_id, self._pick(user_id, k, exclude))

    def recommend_many(
        self, user_ids: Sequence[str], k: int = 10, exclude: Mapping[str, Collection[str]] | None = None
    ) -> dict[str, Ranking]:
        """``recommend`` per user, with each strategy's batched ``recommend_many``.

        The bandit draws for every user first; a strategy is then asked, in one call, for
        the users whose draws rank it first in some slot. A user whose list needs another
        strategy (one ran out of candidates) waits for the next round, which asks that
        strategy for all such users at once.
        """
        user_ids = list(user_ids)
        if k <= 0:
            return {u: self._serve(u, []) for u in user_ids}
        n = self._n(k)
        users = list(dict.fromkeys(user_ids))
        draws = self._bandit.arm_scores_many([self.context_of(u) for u in users], k, [self._rng(u) for u in users])
        orders = dict(zip(users, map(self._arm_order, draws)))
        arms = self._bandit.arms
        wanted: dict[str, list[str]] = {arm: [] for arm in arms}
        for user, order in orders.items():
            for a in np.unique(order[:, 0]).tolist():
                wanted[arms[a]].append(user)
        fetched: dict[str, dict[str, Ranking]] = {arm: {} for arm in arms}
        picked: dict[str, list[tuple[str, float, str, int]]] = {}
        pending = users
        while pending:
            for arm, asked in wanted.items():
                if asked:
                    lists = self._models[arm].recommend_many(asked, n, exclude)
                    fetched[arm].update((u, lists[u]) for u in asked)
            wanted = {arm: [] for arm in arms}
            waiting = []
            for user in pending:
                try:
                    picked[user] = self._assemble(user, k, functools.partial(_fetched, fetched, user), orders[user])
                except _NotFetched as missing:
                    wanted[missing.arm].append(user)
                    waiting.append(user)
            pending = waiting
        return {u: self._serve(u, picked[u]) for u in user_ids}

    def _similar_items(self, item_id: str, k: int = 10) -> Ranking:
        """The first strategy's item similarity that has one and knows the item."""
        for model in self._models.values():
            if isinstance(model, SimilarItems):
                similar = model.similar_items(item_id, k)
                if similar:
                    return similar
        return []

    # -- explanations ----------------------------------------------------------------
    def recommend_explained(self, user_id: str, k: int = 10, exclude: Collection[str] | None = None) -> Explained:
        """``(item_id, score, strategy, reason)`` for the user's top-``k``; served like ``recommend``."""
        picked = self._pick(user_id, k, exclude)
        self._serve(user_id, picked)
        return [(item, score, arm, self.reason(user_id, item, arm, rank)) for item, score, arm, rank in picked]

    def explain_items(self, user_id: str, item_ids: Sequence[str], with_reasons: int = 10) -> list[tuple[str, str | None]]:
        """The strategy of each item of the list last served to the user, and a reason for the
        first ``with_reasons``, each from its strategy's ``explain_items`` (reasons cost a look
        into the strategies' state)."""
        strategy_of = {item: arm for item, arm, _ in self.last_served(user_id)}
        explained: list[tuple[str, str | None]] = [(strategy_of.get(item, "agent"), None) for item in item_ids]
        by_arm: dict[str, list[int]] = {}
        for rank, (arm, _) in enumerate(explained[:with_reasons]):
            if arm in self._models:
                by_arm.setdefault(arm, []).append(rank)
        for arm, ranks in by_arm.items():
            reasons = self._reasons(arm, user_id, [item_ids[r] for r in ranks])
            for rank, reason in zip(ranks, reasons):
                explained[rank] = (arm, reason)
        return explained

    def reason(self, user_id: str, item_id: str, strategy: str, rank: int | None = None) -> str:
        """Why ``strategy`` proposed ``item_id`` to the user, in words."""
        return self._reasons(strategy, user_id, [item_id])[0]

    def _reasons(self, strategy: str, user_id: str, item_ids: list[str]) -> list[str]:
        """The strategy's own explanation of each item (``Explains``), else its name."""
        fallback = f"recommended by {strategy}"
        model = self._models[strategy]
        try:
            explained = model.explain_items(user_id, item_ids) if isinstance(model, Explains) else None
        except Exception:  # an explanation must never break serving
            explained = None
        return [reason or fallback for _, reason in explained] if explained else [fallback] * len(item_ids)

    # -- reporting -------------------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        """For /metrics and reports: the bandit's per-arm statistics, plus slots served per strategy."""
        stats = self._bandit.stats()
        total = sum(self._served_slots.values())
        stats["served_slots"] = dict(self._served_slots)
        stats["served_share"] = {a: (c / total if total else 0.0) for a, c in self._served_slots.items()}
        stats["feedback"] = self._feedback
        stats["users"] = len(self._n_events)
        return stats


class _NotFetched(Exception):
    """A user's list needs a strategy's candidates that ``recommend_many`` has not asked for yet."""

    def __init__(self, arm: str) -> None:
        super().__init__(arm)
        self.arm = arm


def _fetched(fetched: Mapping[str, Mapping[str, Ranking]], user_id: str, arm: str) -> Ranking:
    """The user's candidates from ``arm`` asked so far (``_NotFetched`` when not yet)."""
    ranking = fetched[arm].get(user_id)
    if ranking is None:
        raise _NotFetched(arm)
    return ranking
