"""River models under the streamrec contract: biased matrix factorisation, purchase re-ranking."""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Collection, Mapping, Sequence
from itertools import chain
from typing import Any

import numpy as np
import torch
from river import linear_model, optim, reco

from online_models._arrays import IdIndex, grow, top_k
from online_models.base import Interaction, Ranking, Recommender
from online_models.embeddings import top_k_by_product

_TIE_BREAK = 1e-6  # weight of log-popularity in scores: orders equally scored items


class RiverMF(Recommender):
    """River's ``reco.BiasedMF``, learning ratings online, ranking all known items at once.

    The target of each event is its ``value`` (a rating) when it has one, else its event
    weight. ``predict_one(user, item)`` gives the rating prediction (for MAE/RMSE);
    ``recommend`` ranks every known item by ``mean + b_u + b_i + <p_u, q_i>``, computed with
    one float32 matrix product per chunk of users over a mirror of River's item weights
    (River keeps them in dicts; the mirror copies the one item row each ``learn_one``
    touches), the best items picked as the embeddings model picks them.

    The defaults are River's documented MovieLens 100K settings (MAE about 0.75).

    Parameters
    ----------
    n_factors
        Latent factors.
    bias_lr
        SGD learning rate of the biases.
    latent_lr
        SGD learning rate of the latent factors.
    l2_bias
        L2 penalty on the biases.
    l2_latent
        L2 penalty on the latent factors.
    init_std
        Standard deviation of the Normal latent initialiser.
    seed
        Seed of the latent initialiser.
    event_weights
        Target of events without a ``value``; defaults to ``EVENT_WEIGHTS``.

    Examples
    --------
    >>> from stream.schema import Event
    >>> model = RiverMF()
    >>> for user, item, rating in [("a", "x", 5), ("a", "y", 1), ("b", "x", 4), ("b", "y", 2)]:
    ...     model.learn_one(Event(user_id=user, item_id=item, type="view", ts=0, value=rating))
    >>> [item for item, _ in model.recommend("a", k=2)]
    ['x', 'y']
    >>> round(model.predict_one("b", "x"), 2)
    3.04
    """

    name = "river-mf"

    def __init__(
        self,
        n_factors: int = 10,
        bias_lr: float = 0.025,
        latent_lr: float = 0.05,
        l2_bias: float = 0.005,
        l2_latent: float = 0.003,
        init_std: float = 0.1,
        seed: int = 73,
        event_weights: Mapping[str, float] | None = None,
    ):
        self.n_factors = n_factors
        self.bias_lr = bias_lr
        self.latent_lr = latent_lr
        self.l2_bias = l2_bias
        self.l2_latent = l2_latent
        self.init_std = init_std
        self.seed = seed
        self.event_weights = event_weights
        self._mf = reco.BiasedMF(
            n_factors=n_factors,
            bias_optimizer=optim.SGD(bias_lr),
            latent_optimizer=optim.SGD(latent_lr),
            weight_initializer=optim.initializers.Zeros(),
            latent_initializer=optim.initializers.Normal(mu=0.0, sigma=init_std, seed=seed),
            l2_bias=l2_bias,
            l2_latent=l2_latent,
        )
        self._items = IdIndex()
        self._item_vecs = np.zeros((0, n_factors), dtype=np.float32)  # ranking runs in float32
        self._item_base = np.zeros(0, dtype=np.float32)  # item bias + popularity tie-break
        self._counts = np.zeros(0, dtype=np.float64)

    def target(self, interaction: Interaction) -> float:
        """What the model regresses on: the rating if there is one, else the event weight."""
        value = getattr(interaction, "value", None)
        return float(value) if value is not None else self.weight(interaction)

    def learn_one(self, interaction: Interaction) -> None:
        user, item = interaction.user_id, interaction.item_id
        self._mf.learn_one(user, item, self.target(interaction))
        row = self._items.add(item)
        if row >= len(self._item_base):
            self._item_vecs = grow(self._item_vecs, row + 1)
            self._item_base = grow(self._item_base, row + 1)
            self._counts = grow(self._counts, row + 1)
        self._item_vecs[row] = self._mf.i_latents[item]
        self._counts[row] += 1.0
        self._item_base[row] = self._mf.i_biases[item] + _TIE_BREAK * math.log1p(self._counts[row])

    def predict_one(self, user_id: str, item_id: str) -> float:
        """Predicted rating; unseen users or items contribute no bias and no latent term.

        Unlike River's own ``predict_one`` this never creates entries for unseen ids.
        """
        mf = self._mf
        pred = mf.global_mean.get() + mf.u_biases.get(user_id, 0.0) + mf.i_biases.get(item_id, 0.0)
        u, i = mf.u_latents.get(user_id), mf.i_latents.get(item_id)
        if u is not None and i is not None:
            pred += float(np.dot(u, i))
        return float(pred)

    def scores(self, user_id: str) -> np.ndarray:
        """Predicted rating of every known item (row order) for the user (plus a tiny tie-break)."""
        n = len(self._items)
        mf = self._mf
        scores = mf.global_mean.get() + mf.u_biases.get(user_id, 0.0) + self._item_base[:n]
        u = mf.u_latents.get(user_id)
        if u is not None:
            scores = scores + self._item_vecs[:n] @ u
        return scores

    def recommend(self, user_id: str, k: int = 10, exclude: Collection[str] | None = None) -> Ranking:
        """One user's scores with one numpy product (a backtest asks one user at a time)."""
        n = len(self._items)
        if n == 0:
            return []
        mf = self._mf
        latent = np.asarray(mf.u_latents.get(user_id, np.zeros(self.n_factors)), dtype=np.float32)
        scores = (latent[None, :] @ self._item_vecs[:n].T)[0]
        scores += self._item_base[:n]
        rows, vals = top_k(scores, k, self._items.rows_of(exclude) if exclude else None)
        offset = mf.global_mean.get() + mf.u_biases.get(user_id, 0.0)  # the same for every item
        return self._items.ranking(rows, vals + offset)

    def recommend_many(
        self, user_ids: Sequence[str], k: int = 10, exclude: Mapping[str, Collection[str]] | None = None
    ) -> dict[str, Ranking]:
        """Scores of all known items for a chunk of users per matrix product (``top_k_by_product``)."""
        n = len(self._items)
        user_ids = list(user_ids)
        if n == 0:
            return {u: [] for u in user_ids}
        mf = self._mf
        zero = np.zeros(self.n_factors)

        def latents(chunk: list[str]) -> np.ndarray:
            return np.array([mf.u_latents.get(u, zero) for u in chunk], dtype=np.float32).reshape(len(chunk), -1)

        best = top_k_by_product(torch.from_numpy(self._item_vecs[:n]), torch.from_numpy(self._item_base[:n]), latents,
                                self._items, user_ids, k, exclude or {})
        ids, mean = self._items.ids, mf.global_mean.get()
        result: dict[str, Ranking] = {}
        for user_id, (rows, vals) in zip(user_ids, best):
            offset = mean + mf.u_biases.get(user_id, 0.0)  # the same for every item: added after ranking
            vals = (np.array(vals, dtype=np.float32) + offset).tolist()  # float32, as the scores
            result[user_id] = [(ids[r], v) for r, v in zip(rows, vals)]
        return result

    def forget_user(self, user_id: str) -> None:
        """Drop the user's bias and latent vector (item weights keep what they learned)."""
        self._mf.u_biases.pop(user_id, None)
        self._mf.u_latents.pop(user_id, None)

    def forget_items(self, item_ids: Collection[str]) -> None:
        """Drop the items' biases and latent vectors and free their rows (a freed row's
        ranking base is ``-inf`` until a new item takes it)."""
        for item_id in item_ids:
            self._mf.i_biases.pop(item_id, None)
            self._mf.i_latents.pop(item_id, None)
        rows = self._items.remove(item_ids)
        self._item_vecs[rows] = 0.0
        self._item_base[rows] = -np.inf
        self._counts[rows] = 0.0

    def state_sizes(self) -> dict[str, int]:
        return {"users": len(self._mf.u_latents), "items": self._items.live()}

    def similar_items(self, item_id: str, k: int = 10) -> Ranking:
        """Items with the closest latent vectors (cosine)."""
        row = self._items.get(item_id)
        if row is None:
            return []
        vecs = self._item_vecs[: len(self._items)]
        sims = vecs @ vecs[row] / (np.linalg.norm(vecs, axis=1) * np.linalg.norm(vecs[row]) + 1e-12)
        rows, vals = top_k(sims, k, np.array([row, *self._items.free]))
        return self._items.ranking(rows, vals)


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
    >>> from stream.schema import Event
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
        from online_models.registry import make_model

        self.base = base
        self.base_params = base_params
        self.n_candidates = n_candidates
        self.purchase_weight = purchase_weight
        self.purchase_window_s = purchase_window_s
        self.lr = lr
        self.min_purchases = min_purchases
        self.event_weights = event_weights
        self._base = make_model(base, **dict(base_params or {}))
        self._clf = linear_model.LogisticRegression(optimizer=optim.SGD(lr))
        self._user_stats: dict[str, list[float]] = {}  # events, carts, purchases, last ts
        self._item_stats: dict[str, list[float]] = {}  # exposures, purchases
        self._touches: dict[str, dict[str, list[float]]] = {}  # user -> item -> count, strongest type (0/1/2)
        self._open: dict[tuple[str, str], dict[str, float]] = {}  # exposure -> features
        self._queue: deque[tuple[float, str, str]] = deque()
        self._purchases = 0

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

    def forget_user(self, user_id: str) -> None:
        """Drop the user's statistics and open exposures, and forget them in the base model."""
        self._user_stats.pop(user_id, None)
        touched = self._touches.pop(user_id, {})
        for item_id in touched:
            self._open.pop((user_id, item_id), None)  # an open exposure is a touch too
        self._base.forget_user(user_id)

    def forget_items(self, item_ids: Collection[str]) -> None:
        """Drop the items' statistics, their touches and open exposures, and forget them in
        the base model (one pass over the users' touches)."""
        gone = set(item_ids)
        for item_id in gone:
            self._item_stats.pop(item_id, None)
        for touched in self._touches.values():
            if not gone.isdisjoint(touched):
                for item_id in gone.intersection(touched):
                    del touched[item_id]
        for key in [key for key in self._open if key[1] in gone]:
            del self._open[key]
        self._base.forget_items(item_ids)

    def state_sizes(self) -> dict[str, int]:
        return self._base.state_sizes()

    def __setstate__(self, state: dict) -> None:
        touches = state.get("_touches", {})
        if touches and isinstance(next(iter(touches)), tuple):  # saved when touches were keyed by pairs
            by_user: dict[str, dict[str, list[float]]] = {}
            for (user_id, item_id), touch in touches.items():
                by_user.setdefault(user_id, {})[item_id] = touch
            state = {**state, "_touches": by_user}
        self.__dict__.update(state)

    def similar_items(self, item_id: str, k: int = 10) -> Ranking:
        return self._base.similar_items(item_id, k)
