"""Purchase re-ranking: a River logistic regression re-orders a base model's candidates."""

from __future__ import annotations

import heapq
import math
from collections import deque
from collections.abc import Collection, Mapping, Sequence
from itertools import chain
from typing import Any

import numpy as np
from river import linear_model, optim

from online_models import tables
from online_models.base import Interaction, Ranking, Recommender
from online_models.capabilities import Explains, declare_from_parts, undeclared
from online_models.parts import make_part

_NO_USER = (0.0, 0.0, 0.0)  # events, carts, purchases of a user never seen
_NO_ITEM = (0.0, 0.0)  # exposures, purchases
_NO_TOUCH = (0.0, 0.0)  # count, strongest type
_FEATURES = ("is_cart", "is_click", "user_purchase_rate", "user_cart_rate", "user_events",
             "item_conversion", "item_popularity", "user_item_touches", "recency")


class PurchaseRerank(Recommender):
    """Re-ranks a base model's top candidates by how likely the user is to buy them.

    A River logistic regression learns, per event, whether an item a user viewed, clicked
    or put in the cart is bought within ``purchase_window_s``: the exposure opens with the
    features of that moment and closes as a positive on the matching purchase, or as a
    negative once it expires. Features: the exposure's event type, the user's purchase and
    cart rates and activity, the item's smoothed conversion rate and popularity, how often
    the user touched the item, and the time since the user's previous event.

    ``recommend`` takes the base model's top ``n_candidates`` and orders them by
    ``(1 - purchase_weight) * relevance + purchase_weight * P(purchase)``, relevance being
    the base score min-max scaled over the candidates. Until the classifier has seen
    ``min_purchases`` purchases (logs without purchases) the base order is kept.

    Scale-out: the item statistics and the purchases seen are sums, and the classifier's
    weights are shared like a parameter server's (each replica sends the change its own
    steps made and adds the others'): ``item_delta`` reports them, with the base model's
    delta. Users move with their statistics, touches and open exposures, and with the base
    model's user state.

    Parameters
    ----------
    base
        Registry name of the candidate model.
    base_params
        Its hyperparameters.
    n_candidates
        Candidates taken from the base model.
    purchase_weight
        Mix of purchase probability and base relevance.
    purchase_window_s
        How long an exposure waits for its purchase.
    lr
        SGD learning rate of the logistic regression.
    min_purchases
        Purchases needed before re-ranking starts.
    event_weights
        Passed to nothing; kept for a uniform interface (the base has its own).

    Examples
    --------
    >>> from core.schema import Event
    >>> model = PurchaseRerank(base="trending", base_params={"half_life_s": None}, min_purchases=1)
    >>> log = [("u1", "cheap", "click"), ("u1", "cheap", "purchase"), ("u2", "cheap", "click"),
    ...        ("u2", "cheap", "purchase"), ("u1", "toy", "click"), ("u2", "toy", "click"),
    ...        ("u3", "toy", "click")]
    >>> for t, (user, item, kind) in enumerate(log):
    ...     model.learn_one(Event(user_id=user, item_id=item, type=kind, ts=t))
    >>> [item for item, _ in model.recommend("u4", k=2)]
    ['cheap', 'toy']
    """

    name = "purchase-rerank"

    def __init__(
        self,
        base: str = "cooc",
        base_params: Mapping[str, Any] | None = None,
        n_candidates: int = 50,
        purchase_weight: float = 0.5,
        purchase_window_s: float = 24 * 3600.0,
        lr: float = 0.05,
        min_purchases: int = 10,
        event_weights: Mapping[str, float] | None = None,
    ):
        self.base = base
        self.base_params = base_params
        self.n_candidates = n_candidates
        self.purchase_weight = purchase_weight
        self.purchase_window_s = purchase_window_s
        self.lr = lr
        self.min_purchases = min_purchases
        self.event_weights = event_weights
        self._base = make_part(base, base_params)
        self._clf = linear_model.LogisticRegression(optimizer=optim.SGD(lr))
        self._user_stats: dict[str, list[float]] = {}  # events, carts, purchases, last ts
        self._item_stats: dict[str, list[float]] = {}  # exposures, purchases
        self._touches: dict[str, dict[str, list[float]]] = {}  # user -> item -> count, strongest type (0/1/2)
        self._open: dict[tuple[str, str], dict[str, float]] = {}  # exposure -> features
        self._queue: deque[tuple[float, str, str]] = deque()
        self._purchases = 0
        # item statistics, classifier weights and purchases as last reported by item_delta,
        # plus what peers added since: the difference is this model's own learning. None
        # until sharing starts, so that learn_one pays nothing for it but a test
        self._reported: dict[str, Any] | None = None
        self._dirty: set[str] | None = None  # items whose statistics own events changed since
        declare_from_parts(self, [self._base])

    def _features(self, user_id: str, item_id: str, kind: float, ts: float | None) -> dict[str, float]:
        events, carts, purchases, last_ts = self._user_stats.get(user_id, (0.0, 0.0, 0.0, None))
        exposures, bought = self._item_stats.get(item_id, (0.0, 0.0))
        touches = self._touches.get(user_id, {}).get(item_id, (0.0, 0.0))[0]
        gap = 0.0 if ts is None or last_ts is None else max(ts - last_ts, 0.0)
        return {
            "is_cart": float(kind == 2),
            "is_click": float(kind == 1),
            "user_purchase_rate": (purchases + 0.1) / (events + 1.0),
            "user_cart_rate": (carts + 0.1) / (events + 1.0),
            "user_events": math.log1p(events) / 5,
            "item_conversion": (bought + 0.1) / (exposures + 1.0),
            "item_popularity": math.log1p(exposures) / 5,
            "user_item_touches": math.log1p(touches),
            "recency": math.log1p(gap) / 10,
        }

    def _close(self, key: tuple[str, str], bought: bool) -> None:
        features = self._open.pop(key, None)
        if features is not None:
            self._clf.learn_one(features, bought)

    def learn_one(self, interaction: Interaction) -> None:
        user, item, ts = interaction.user_id, interaction.item_id, float(interaction.ts)
        while self._queue and self._queue[0][0] < ts - self.purchase_window_s:
            _, u, i = self._queue.popleft()
            self._close((u, i), False)
        key = (user, item)
        ustats = self._user_stats.setdefault(user, [0.0, 0.0, 0.0, None])
        istats = self._item_stats.setdefault(item, [0.0, 0.0])
        touch = self._touches.setdefault(user, {}).setdefault(item, [0.0, 0.0])
        if interaction.type == "purchase":
            self._purchases += 1
            istats[1] += 1
            ustats[2] += 1
            self._close(key, True)
        else:
            kind = {"click": 1.0, "add_to_cart": 2.0}.get(interaction.type, 0.0)
            if key not in self._open:
                self._open[key] = self._features(user, item, kind, ts)
                self._queue.append((ts, user, item))
                if len(self._queue) > 2 * len(self._open) + 64:  # mostly closed or forgotten: compact
                    self._queue = deque(entry for entry in self._queue if entry[1:] in self._open)
            else:
                self._open[key]["is_cart"] = max(self._open[key]["is_cart"], float(kind == 2))
            istats[0] += 1
            ustats[1] += interaction.type == "add_to_cart"
            touch[1] = max(touch[1], kind)
        touch[0] += 1
        ustats[0] += 1
        ustats[3] = ts
        if self._dirty is not None:
            self._dirty.add(item)
        self._base.learn_one(interaction)

    def purchase_probabilities(self, user_id: str, item_ids: list[str]) -> np.ndarray:
        """P(purchase) of each item for the user, with the classifier's weights in numpy."""
        return self._probabilities([user_id], [item_ids])

    def _probabilities(self, user_ids: list[str], item_lists: list[list[str]]) -> np.ndarray:
        """P(purchase) of each item of each user's list, all lists concatenated.

        The features are ``_features`` at ranking time (no timestamp, so ``recency`` is 0),
        computed a column at a time for every candidate of every user.
        """
        sizes = [len(items) for items in item_lists]
        owner = np.repeat(np.arange(len(user_ids)), sizes)
        n = len(owner)
        user_stats, item_stats, touches = self._user_stats, self._item_stats, self._touches
        users = [user_stats.get(u, _NO_USER)[:3] for u in user_ids]
        events, carts, purchases = np.fromiter(chain.from_iterable(users), np.float64, 3 * len(users)).reshape(-1, 3).T
        items = [item_stats.get(i, _NO_ITEM) for items in item_lists for i in items]
        exposures, bought = np.fromiter(chain.from_iterable(items), np.float64, 2 * n).reshape(-1, 2).T
        touched = np.zeros((n, 2))  # count, strongest type: most candidates were never touched
        pairs = [pair for u, items in zip(user_ids, item_lists) for pair in map(touches.get(u, {}).get, items)]
        hits = [j for j, pair in enumerate(pairs) if pair is not None]
        if hits:
            touched[hits] = [pairs[j] for j in hits]
        columns = {
            "is_cart": (touched[:, 1] == 2).astype(np.float64),
            "is_click": (touched[:, 1] == 1).astype(np.float64),
            "user_purchase_rate": ((purchases + 0.1) / (events + 1.0))[owner],
            "user_cart_rate": ((carts + 0.1) / (events + 1.0))[owner],
            "user_events": (np.log1p(events) / 5)[owner],
            "item_conversion": (bought + 0.1) / (exposures + 1.0),
            "item_popularity": np.log1p(exposures) / 5,
            "user_item_touches": np.log1p(touched[:, 0]),
            "recency": np.zeros(len(owner)),
        }
        weights = self._clf._weights
        logits = np.zeros(len(owner))
        for name in _FEATURES:  # one feature after another: the same sums whatever the batch
            logits += weights.get(name, 0.0) * columns[name]
        return 1.0 / (1.0 + np.exp(-(logits + self._clf.intercept)))

    def recommend(self, user_id: str, k: int = 10, exclude: Collection[str] | None = None) -> Ranking:
        candidates = self._base.recommend(user_id, max(k, self.n_candidates), exclude)
        return self._rerank([user_id], [candidates], k)[0]

    def recommend_many(
        self, user_ids: Sequence[str], k: int = 10, exclude: Mapping[str, Collection[str]] | None = None
    ) -> dict[str, Ranking]:
        """The base model's batched candidates, re-ranked for all users at once."""
        user_ids = list(user_ids)
        lists = self._base.recommend_many(user_ids, max(k, self.n_candidates), exclude)
        return dict(zip(user_ids, self._rerank(user_ids, [lists[u] for u in user_ids], k)))

    def explain_items(self, user_id: str, item_ids: Sequence[str]) -> list[tuple[str, str | None]]:
        """The base model's reasons: it proposed every candidate (re-ranking moves them)."""
        explained = self._base.explain_items(user_id, item_ids) if isinstance(self._base, Explains) else None
        return explained or [(self.name, None)] * len(item_ids)

    def _rerank(self, user_ids: list[str], lists: list[Ranking], k: int) -> list[Ranking]:
        """Each user's candidates ordered by the mix of scaled relevance and P(purchase)."""
        if self._purchases < self.min_purchases:
            return [candidates[:k] for candidates in lists]
        sizes = np.array([len(candidates) for candidates in lists])
        starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
        owner = np.repeat(np.arange(len(lists)), sizes)
        base = np.array([score for candidates in lists for _, score in candidates], dtype=np.float64)
        if len(base) == 0:
            return [[] for _ in lists]
        nonempty = starts[sizes > 0]  # reduceat reads an empty segment as its next value: skip them
        low, high = np.zeros(len(lists)), np.zeros(len(lists))
        low[sizes > 0] = np.minimum.reduceat(base, nonempty)
        high[sizes > 0] = np.maximum.reduceat(base, nonempty)
        span = (high - low)[owner]
        relevance = np.ones(len(base))
        np.divide(base - low[owner], span, out=relevance, where=span > 0)
        ids = [item for candidates in lists for item, _ in candidates]
        scores = (1 - self.purchase_weight) * relevance + self.purchase_weight * self._probabilities(
            user_ids, [[item for item, _ in candidates] for candidates in lists]
        )
        position = np.arange(len(base)) - starts[owner]
        order = np.lexsort((position, -scores, owner)).tolist()  # by user, score, base rank
        values = scores.tolist()
        return [
            [(ids[j], values[j]) for j in order[start : start + min(size, k)]]
            for start, size in zip(starts.tolist(), sizes.tolist())
        ]

    def _forget_user(self, user_id: str) -> None:
        """Drop the user's statistics and open exposures, and forget them in the base model."""
        self._forget_own(user_id)
        self._base.forget_user(user_id)

    def _forget_own(self, user_id: str) -> None:
        """Drop the user's statistics, touches and open exposures (not the base model's)."""
        self._user_stats.pop(user_id, None)
        touched = self._touches.pop(user_id, {})
        for item_id in touched:
            self._open.pop((user_id, item_id), None)  # an open exposure is a touch too

    def _forget_items(self, item_ids: Collection[str]) -> None:
        """Drop the items' statistics, their touches and open exposures, and forget them in
        the base model (one pass over the users' touches)."""
        gone = set(item_ids)
        reported = self._reported["items"] if self._reported is not None else {}
        for item_id in gone:
            self._item_stats.pop(item_id, None)
            reported.pop(item_id, None)  # an item that comes back starts afresh, here and in the tally
        for touched in self._touches.values():
            if not gone.isdisjoint(touched):
                for item_id in gone.intersection(touched):
                    del touched[item_id]
        for key in [key for key in self._open if key[1] in gone]:
            del self._open[key]
        self._base.forget_items(item_ids)

    def _state_sizes(self) -> dict[str, int]:
        return self._base.state_sizes()

    # -- scale-out ---------------------------------------------------------------------
    def _export_users(self, user_ids: Collection[str]) -> dict[str, Any]:
        """The users' statistics, touches and open exposures, and the base model's export
        (its keys prefixed with ``base/``), as flat arrays.

        An open exposure goes with its user, so that the new owner closes it: as a
        positive on the user's purchase, or as a negative once it expires.

        Returns
        -------
        dict
            ``users`` (str); ``stats`` ``(n, 3)`` (events, carts, purchases) and ``last_ts``
            (NaN where unknown); the touches one user after the other, cut by
            ``touch_len``: ``touch_items`` (str) and ``touches`` ``(m, 2)`` (count,
            strongest type); per open exposure ``open_user`` (position in ``users``),
            ``open_item`` (str), ``open_ts`` (when it expires, less the window) and
            ``open_features`` ``(m, 9)`` (in the order of ``_FEATURES``). Unknown users are
            left out.
        """
        users = [u for u in dict.fromkeys(user_ids) if u in self._user_stats]
        position = {u: j for j, u in enumerate(users)}
        stats = [self._user_stats[u] for u in users]
        touched = [self._touches.get(u, {}) for u in users]
        opened: dict[tuple[str, str], float] = {}
        for ts, user_id, item_id in self._queue:  # the first entry of an exposure closes it
            key = (user_id, item_id)
            if user_id in position and key in self._open and key not in opened:
                opened[key] = ts
        state = {
            "users": np.array(users, dtype=str),
            "stats": np.array([s[:3] for s in stats], dtype=np.float64).reshape(-1, 3),
            "last_ts": np.array([np.nan if s[3] is None else s[3] for s in stats], dtype=np.float64),
            "touch_len": np.array([len(t) for t in touched], dtype=np.int64),
            "touch_items": np.array([i for t in touched for i in t], dtype=str),
            "touches": np.array([v for t in touched for v in t.values()], dtype=np.float64).reshape(-1, 2),
            "open_user": np.array([position[u] for u, _ in opened], dtype=np.int64),
            "open_item": np.array([i for _, i in opened], dtype=str),
            "open_ts": np.array(list(opened.values()), dtype=np.float64),
            "open_features": np.array([[self._open[key][f] for f in _FEATURES] for key in opened],
                                      dtype=np.float64).reshape(-1, len(_FEATURES)),
        }
        return {**state, **tables.prefixed({"base": self._base.export_users(user_ids)})}

    def _import_users(self, state: Mapping[str, Any]) -> None:
        """Adopt ``export_users``' users, replacing what this model and its base knew of
        them; their open exposures join the expiry queue in time order."""
        self._base.import_users(tables.split(state, ["base"])[1]["base"])
        users = np.asarray(state.get("users", ())).tolist()
        if not users:
            return
        for user_id in users:
            self._forget_own(user_id)
        last = np.asarray(state["last_ts"], dtype=np.float64).tolist()
        for user_id, (events, carts, purchases), ts in zip(users, np.asarray(state["stats"]).tolist(), last):
            self._user_stats[user_id] = [events, carts, purchases, None if math.isnan(ts) else ts]
        items, values = np.asarray(state["touch_items"]).tolist(), np.asarray(state["touches"]).tolist()
        start = 0
        for user_id, size in zip(users, np.asarray(state["touch_len"]).tolist()):
            self._touches[user_id] = dict(zip(items[start : start + size], values[start : start + size]))
            start += size
        entries = []
        for j, item_id, ts, features in zip(np.asarray(state["open_user"]).tolist(),
                                            np.asarray(state["open_item"]).tolist(),
                                            np.asarray(state["open_ts"]).tolist(),
                                            np.asarray(state["open_features"]).tolist()):
            self._open[(users[j], item_id)] = dict(zip(_FEATURES, features))
            entries.append((ts, users[j], item_id))
        if entries:  # expiry pops from the left: the queue stays in time order
            self._queue = deque(heapq.merge(self._queue, sorted(entries), key=lambda entry: entry[0]))

    def _item_delta(self) -> dict[str, Any]:
        """What this model's own learning changed since the last call: the items' exposure
        and purchase counts, the classifier's weights and intercept, the purchases seen;
        and the base model's delta. Starts a new tally.

        Counts add up. The classifier is shared like a parameter server's weights: each
        replica sends the change its own SGD steps made, and adds the others'. The first
        call starts the tally (until then nothing is kept) and reports everything learned
        so far; from then on ``learn_one`` notes the items its events touch.

        Returns
        -------
        dict
            ``items`` (str), ``exposures`` and ``purchases`` (float64), one entry per
            item; ``features`` (str) and ``weights`` (float64), the changed weights;
            ``intercept`` (float) and ``purchase_count`` (int), the gains; the base
            model's delta under keys prefixed with ``base/``.
        """
        reported = self._start_sharing()
        items, gains = tables.take_keyed(self._item_stats, reported["items"], self._dirty)
        self._dirty = set()
        features, steps = tables.take_keyed(self._clf._weights, reported["weights"], list(self._clf._weights))
        intercept = self._clf.intercept - reported["intercept"]
        purchases = self._purchases - reported["purchases"]
        reported["intercept"], reported["purchases"] = self._clf.intercept, self._purchases
        per_item = gains.reshape(-1, 2)
        delta = {
            "items": np.array(items, dtype=str), "exposures": per_item[:, 0], "purchases": per_item[:, 1],
            "features": np.array(features, dtype=str), "weights": steps.reshape(-1),
            "intercept": float(intercept), "purchase_count": int(purchases),
        }
        return {**delta, **tables.prefixed({"base": self._base.item_delta()})}

    def _merge_item_delta(self, delta: Mapping[str, Any]) -> None:
        """Add a peer's ``item_delta`` to the item counts, the classifier and the purchases
        seen, and to the tally (so that none of it is reported back); pass the base model
        its part."""
        self._base.merge_item_delta(tables.split(delta, ["base"])[1]["base"])
        reported = self._start_sharing()  # before the peer's changes mix in: what is here now is own
        tables.add_keyed(self._item_stats, reported["items"], np.asarray(delta.get("items", ())).tolist(),
                         np.stack([np.asarray(delta.get(key, ()), dtype=np.float64) for key in ("exposures", "purchases")], 1))
        tables.add_keyed(self._clf._weights, reported["weights"], np.asarray(delta.get("features", ())).tolist(),
                         np.asarray(delta.get("weights", ()), dtype=np.float64))
        intercept = float(delta.get("intercept", 0.0))
        self._clf.intercept += intercept
        reported["intercept"] += intercept
        purchases = int(delta.get("purchase_count", 0))
        self._purchases += purchases
        reported["purchases"] += purchases

    def _start_sharing(self) -> dict[str, Any]:
        """The tally, started on first use: everything learned so far is own and unreported
        (River's classifier starts from zero weights and intercept)."""
        if self.__dict__.get("_reported") is None:
            self._reported = {"items": {}, "weights": {}, "intercept": 0.0, "purchases": 0}
            self._dirty = set(self._item_stats)
        return self._reported

    def __getstate__(self) -> dict[str, Any]:
        return undeclared(self.__dict__)

    def __setstate__(self, state: dict) -> None:
        state = undeclared(state)
        touches = state.get("_touches", {})
        if touches and isinstance(next(iter(touches)), tuple):  # saved when touches were keyed by pairs
            by_user: dict[str, dict[str, list[float]]] = {}
            for (user_id, item_id), touch in touches.items():
                by_user.setdefault(user_id, {})[item_id] = touch
            state = {**state, "_touches": by_user}
        self.__dict__.update(state)
        for key in ("_reported", "_dirty"):  # saved before sharing
            self.__dict__.setdefault(key, None)
        declare_from_parts(self, [self._base])

    # -- capabilities, declared when the base model makes them sound (declare_from_parts) --
    def _similar_items(self, item_id: str, k: int = 10) -> Ranking:
        return self._base.similar_items(item_id, k)

    def _learn_item(self, item_id: str, metadata: Mapping[str, Any]) -> None:
        self._base.learn_item(item_id, metadata)

    def _use_popularity(self, popularity: Any) -> bool:
        return self._base.use_popularity(popularity)
