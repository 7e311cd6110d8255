"""River's biased matrix factorisation under the streamrec contract."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Collection, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from river import optim, reco

from online_models import tables
from online_models._arrays import IdIndex, grow, grow_all, top_k
from online_models.base import Interaction, Ranking, Recommender
from online_models.embeddings_ranking import top_k_by_product
from online_models.trending import POPULAR_NOW, POPULAR_STRATEGY

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

    Scale-out: an item's latents start from ``(seed, item id)`` alone (``initial_latent``;
    River would draw them in arrival order), so replicas that meet it apart start alike and
    exchange only their own steps to the item biases and latents, the item counts and the
    global mean (``item_delta``, diffed against a shadow copy that the first call builds;
    learning never touches it). Users move with their bias and latent vector.

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
        Seeds the latent initialiser: River's generator for users, an item's from this seed
        and its id.
    event_weights
        Target of events without a ``value``; defaults to ``EVENT_WEIGHTS``.

    Examples
    --------
    >>> from core.schema import Event
    >>> model = RiverMF()
    >>> for user, item, rating in [("a", "x", 5), ("a", "y", 1), ("b", "x", 4), ("b", "y", 2)]:
    ...     model.learn_one(Event(user_id=user, item_id=item, type="view", ts=0, value=rating))
    >>> [item for item, _ in model.recommend("a", k=2)]
    ['x', 'y']
    >>> round(model.predict_one("b", "x"), 2)
    3.06
    """

    name = "river-mf"
    ITEM_TABLES = {"counts": "sum", "biases": "sum", "latents": "step"}
    USER_TABLES = {"biases": "vector", "latents": "vector"}

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
        self._shadow: dict[str, np.ndarray] | None = None  # item state as of the last delta; see item_delta
        self._mean_reported = np.zeros(2)  # the global mean's ratings as reported, and their sum

    def target(self, interaction: Interaction) -> float:
        """What the model regresses on: the rating if there is one, else the event weight."""
        value = getattr(interaction, "value", None)
        return float(value) if value is not None else self.weight(interaction)

    def learn_one(self, interaction: Interaction) -> None:
        user, item = interaction.user_id, interaction.item_id
        row = self._items.get(item)
        if row is None:
            row = self._add_item(item)
        mf = self._mf
        mf.learn_one(user, item, self.target(interaction))
        self._item_vecs[row] = mf.i_latents[item]
        self._counts[row] += 1.0
        self._item_base[row] = mf.i_biases[item] + _TIE_BREAK * math.log1p(self._counts[row])

    def initial_latent(self, item_id: str) -> np.ndarray:
        """The item's starting latent vector (float64): Normal draws seeded by ``(seed,
        item id)`` alone.

        River would draw it from one generator in the order items arrive, so replicas that
        meet an item apart would start it differently and could not add up their steps.

        >>> model = RiverMF(n_factors=3)
        >>> bool((model.initial_latent("x") == RiverMF(n_factors=3).initial_latent("x")).all())
        True
        """
        key = int.from_bytes(hashlib.blake2b(item_id.encode(), digest_size=8).digest(), "little")
        seed = 0 if self.seed is None else self.seed & (2**64 - 1)
        return np.random.default_rng([seed, key]).normal(0.0, self.init_std, self.n_factors)

    def _add_item(self, item_id: str) -> int:
        """The item's row; an unknown item is created with its initial latent, a zero bias
        and no count (in River's dicts, the ranking mirror and the shadow, if any)."""
        row = self._items.add(item_id)
        if row >= len(self._item_base):
            self._item_vecs = grow(self._item_vecs, row + 1)
            self._item_base = grow(self._item_base, row + 1)
            self._counts = grow(self._counts, row + 1)
        mf = self._mf
        if item_id not in mf.i_latents:
            mf.i_latents[item_id] = latent = self.initial_latent(item_id)
            mf.i_biases[item_id] = 0.0
            self._item_vecs[row] = latent
            self._item_base[row] = 0.0  # a freed row's base is -inf: a new item must rank
            self._counts[row] = 0.0
            shadow = self.__dict__.get("_shadow")
            if shadow is not None:  # a new item's tally starts from its initial state
                grow_all(shadow, len(self._items))
                shadow["latents"][row], shadow["biases"][row], shadow["counts"][row] = latent, 0.0, 0.0
        return row

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

    def explain_items(self, user_id: str, item_ids: Sequence[str]) -> list[tuple[str, str | None]]:
        """Latent factors name no single reason: "matches your taste" for a user with
        factors, "popular now" (the item biases) for one without."""
        if self._mf.u_latents.get(user_id) is None:
            return [(POPULAR_STRATEGY, POPULAR_NOW)] * len(item_ids)
        return [(self.name, "matches your taste")] * len(item_ids)

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

    # -- scale-out (online_models.tables) ---------------------------------------------
    def export_users(self, user_ids: Collection[str]) -> dict[str, Any]:
        """The users' biases and latent vectors (float64, as River keeps them)."""
        return tables.export_users(self, user_ids)

    def import_users(self, state: Mapping[str, Any]) -> None:
        """Adopt ``export_users``' users, replacing their bias and latent vector here."""
        tables.import_users(self, state)

    def _has_user(self, user_id: str) -> bool:
        return user_id in self._mf.u_latents

    def _user_get(self, name: str, user_id: str) -> np.ndarray:
        mf = self._mf
        return np.array([mf.u_biases.get(user_id, 0.0)]) if name == "biases" else mf.u_latents[user_id]

    def _user_put(self, name: str, user_id: str, value: np.ndarray) -> None:
        if name == "biases":
            self._mf.u_biases[user_id] = float(value[0])
        else:
            self._mf.u_latents[user_id] = np.asarray(value, dtype=np.float64)  # its own array: SGD steps it in place

    def item_delta(self) -> dict[str, Any]:
        """What this model's own learning changed in the item biases and latents, the item
        counts and the global mean since the last call; starts a new tally.

        An item met since then reports its change from its initial latents
        (``initial_latent``), which a peer that has not met it starts from too (see
        ``online_models.tables``).

        Returns
        -------
        dict
            ``items`` (str), ``counts``, ``biases`` and ``latents`` ``(n, n_factors)``
            (float64), one entry per item; ``mean_n`` and ``mean_sum`` (floats), the own
            ratings added to the global mean: their number and their sum.
        """
        self._start_mean_tally()
        delta = tables.item_delta(self)
        mean, reported = self._mf.global_mean, self._mean_reported
        gained = float(mean.n - reported[0])
        total = float(mean.n * mean._mean)
        # no own rating, no own sum: the rounding of a merged mean must not echo back
        delta["mean_n"], delta["mean_sum"] = gained, (total - reported[1] if gained else 0.0)
        if gained:
            reported[:] = mean.n, total
        return delta

    def merge_item_delta(self, delta: Mapping[str, Any]) -> None:
        """Add a peer's ``item_delta``: its steps to the item biases and latents, its counts,
        and its ratings to the global mean. Items not met yet start from their initial latents."""
        self._start_mean_tally()
        mean_n = float(delta.get("mean_n", 0.0))
        if mean_n:
            mean, mean_sum = self._mf.global_mean, float(delta["mean_sum"])
            # River's Mean keeps n and the mean: the two replicas' sums, over their counts
            n = mean.n + mean_n
            mean._mean = (mean.n * mean._mean + mean_sum) / n if n else 0.0
            mean.n = n
            self._mean_reported += (mean_n, mean_sum)
        tables.merge_item_delta(self, delta)

    def _start_mean_tally(self) -> None:
        if self.__dict__.get("_shadow") is None:  # sharing starts: every rating so far is own
            self._mean_reported = np.zeros(2)

    def _item_tables(self) -> dict[str, np.ndarray]:
        """The item state, gathered from River's dicts (freed rows: zeros); ``_merged``
        writes merged rows back."""
        n, ids, mf = len(self._items), self._items.ids, self._mf
        live = [(row, ids[row]) for row in self._items.live_rows().tolist()]
        biases, latents = np.zeros(n), np.zeros((n, self.n_factors))
        if live:
            rows = [row for row, _ in live]
            biases[rows] = [mf.i_biases[i] for _, i in live]
            latents[rows] = [mf.i_latents[i] for _, i in live]
        return {"counts": self._counts[:n], "biases": biases, "latents": latents}

    def _initial_items(self, ids: Sequence[str]) -> dict[str, np.ndarray]:
        return {"latents": np.array([self.initial_latent(i) for i in ids]).reshape(len(ids), self.n_factors)}

    def _add_items(self, ids: Sequence[str]) -> np.ndarray:
        return np.array([self._add_item(i) for i in ids], dtype=np.int64)

    def _merged(self, rows: np.ndarray, item_tables: dict[str, np.ndarray]) -> None:
        mf, ids = self._mf, self._items.ids
        biases, latents = item_tables["biases"][rows], item_tables["latents"][rows]
        for row, bias, latent in zip(rows.tolist(), biases.tolist(), latents):
            mf.i_latents[ids[row]] = latent.copy()  # its own array: River's SGD steps it in place
            mf.i_biases[ids[row]] = bias
        self._item_vecs[rows] = latents
        self._item_base[rows] = biases + _TIE_BREAK * np.log1p(self._counts[rows])

    def similar_items(self, item_id: str, k: int = 10) -> Ranking:
        """Items with the closest latent vectors (cosine)."""
        row = self._items.get(item_id)
        if row is None:
            return []
        vecs = self._item_vecs[: len(self._items)]
        sims = vecs @ vecs[row] / (np.linalg.norm(vecs, axis=1) * np.linalg.norm(vecs[row]) + 1e-12)
        rows, vals = top_k(sims, k, np.array([row, *self._items.free]))
        return self._items.ranking(rows, vals)
