"""Trending: time-decayed popularity, the cold-start fallback every other model leans on."""

from __future__ import annotations

import math
from collections.abc import Collection, Iterable, Mapping, Sequence
from itertools import islice
from typing import Any

import numpy as np

from online_models import tables
from online_models._arrays import IdIndex, grow, top_k_of, top_rows
from online_models.base import Interaction, Ranking, Recommender

_RESCALE_AT = 50.0  # rescale once the growth factor passes e**50, long before float64 overflows
_MIN_CACHE = 256  # rows kept in the cached popularity order
_DENSE_BELOW = 4096  # catalogues this small are ranked whole
POPULAR_STRATEGY = "trending"
POPULAR_NOW = "popular now"
"""The explanation of an item ranked for its popularity (by this model or another's fallback)."""


class Trending(Recommender):
    """Items ranked by event weight, decayed exponentially with the event's age.

    Each event adds ``weight * 2 ** (ts / half_life_s)`` to its item; comparing those sums
    equals comparing decayed counts at any common "now", so nothing is touched per tick.

    Ranking does not sort the whole catalogue per call: a learned event only ever raises
    its own item's score, so the true top-``m`` always lies within a cached top list plus
    the items that gained since it was built (see :meth:`candidate_rows`).

    Parameters
    ----------
    half_life_s
        Age at which an event counts half. ``None`` means no decay (all-time counts).
    event_weights
        Weight per event type; defaults to ``EVENT_WEIGHTS``.

    Examples
    --------
    >>> from core.schema import Event
    >>> model = Trending(half_life_s=3600)
    >>> for ts, item in [(0, "old"), (0, "old"), (7200, "new")]:
    ...     model.learn_one(Event(user_id="u", item_id=item, type="click", ts=ts))
    >>> [item for item, _ in model.recommend("anyone", k=2)]
    ['new', 'old']
    """

    name = "trending"
    ITEM_TABLES = {"scores": "sum"}

    def __init__(self, half_life_s: float | None = 3 * 24 * 3600.0, event_weights: Mapping[str, float] | None = None):
        self.half_life_s = half_life_s
        self.event_weights = event_weights
        self._items = IdIndex()
        self._scores = np.zeros(0, dtype=np.float64)
        self._t0: float | None = None
        self._max = 0.0
        self._in_cache = np.zeros(0, dtype=bool)
        self._cache = np.zeros(0, dtype=np.int64)  # rows of the top scores when last built
        self._dirty: set[int] = set()  # rows whose score rose since the cache was built
        self._shadow: dict[str, np.ndarray] | None = None  # see online_models.tables

    def _growth(self, ts: float) -> float:
        if self.half_life_s is None:
            return 1.0
        if self._t0 is None:
            self._t0 = ts
        exponent = (ts - self._t0) / self.half_life_s * math.log(2)
        if exponent > _RESCALE_AT:
            scale = math.exp(-exponent)
            self._scores *= scale
            self._max *= scale
            tables.scale_shadow(self, "scores", scale)  # the same product: rows without own gains stay equal
            self._t0, exponent = ts, 0.0
            self._cache = self._cache[:0]  # rounding may have made new ties: rebuild the top list
        return math.exp(exponent)

    def learn_one(self, interaction: Interaction) -> None:
        row = self._items.add(interaction.item_id)
        if row >= len(self._scores):
            self._scores = grow(self._scores, row + 1)
        score = float(self._scores[row]) + self.weight(interaction) * self._growth(interaction.ts)
        self._scores[row] = score
        if score > self._max:
            self._max = score
        self._dirty.add(row)

    def learn_many(self, interactions: Iterable[Interaction]) -> None:
        """``learn_one`` of each interaction in turn, with the sums done by ``np.add.at`` (in
        order, so every score is the same float): the state ends bit for bit as one event
        after the other leaves it.

        >>> from core.schema import Event
        >>> one, many = Trending(), Trending()
        >>> events = [Event("u", item, "click", ts) for item, ts in [("a", 5.0), ("b", 9.0), ("a", 60.0)]]
        >>> for e in events:
        ...     one.learn_one(e)
        >>> many.learn_many(events)
        >>> many.raw_scores().tolist() == one.raw_scores().tolist(), many.max_score() == one.max_score()
        (True, True)
        """
        interactions = interactions if isinstance(interactions, list) else list(interactions)
        if not interactions:
            return
        items = self._items
        rows = items.add_all([interaction.item_id for interaction in interactions])  # new ones as learn_one adds them
        while len(self._scores) < len(items):  # the capacities learn_one's growth steps give
            self._scores = grow(self._scores, len(self._scores) + 1)
        weights = self.weights_of(interactions)
        if self.half_life_s is None:
            gains = weights  # times a growth of 1.0
        else:
            if self._t0 is None:
                self._t0 = interactions[0].ts
            ts = np.fromiter([i.ts for i in interactions], dtype=np.float64, count=len(interactions))
            exponents = (ts - self._t0) / self.half_life_s * math.log(2)  # learn_one's float operations
            if exponents.max() > _RESCALE_AT:  # a rescale falls within the batch: one at a time
                for interaction in interactions:
                    self.learn_one(interaction)
                return
            exp = math.exp  # libm's, as learn_one's (numpy's may differ in the last bit)
            gains = [w * exp(e) for w, e in zip(weights, exponents.tolist())]
        if min(gains) < 0:  # a loss: the running maximum may exceed every final score
            for interaction in interactions:
                self.learn_one(interaction)
            return
        np.add.at(self._scores, rows, gains)  # unbuffered, index after index: learn_one's sums
        distinct = set(rows)
        self._max = max(self._max, float(self._scores[list(distinct)].max()))
        self._dirty |= distinct

    def scores(self) -> np.ndarray:
        """Current popularity per item row, scaled so the best item scores 1."""
        scores = self._scores[: len(self._items)]
        return scores / self._max if self._max > 0 else scores.copy()

    def raw_scores(self) -> np.ndarray:
        """Unscaled popularity per item row (a view; divide by :meth:`max_score` to scale)."""
        return self._scores[: len(self._items)]

    def max_score(self) -> float:
        """The best item's unscaled score (0 when nothing was learned)."""
        return float(self._max)

    def candidate_rows(self, m: int) -> np.ndarray | None:
        """Rows (distinct) that surely include the ``m`` most popular, or ``None`` for "all rows".

        "Most popular" ranks ties to the lower row, as ``top_k`` does. ``None`` when the
        catalogue is small enough that ranking all of it is cheaper.
        """
        n = len(self._items)
        if n <= max(_DENSE_BELOW, 8 * m):
            return None
        # rebuilt once a quarter of it went dirty: every call converts the dirty rows
        if m > len(self._cache) // 2 or len(self._dirty) > len(self._cache) // 4:
            size = max(_MIN_CACHE, 4 * m)
            if size >= n:
                return None
            # the exact top ``size`` (ties to the lower row): any other row that has not
            # gained since then ranks below every cached row, whatever the cached rows gain
            self._cache = top_rows(self._scores[:n], size)
            self._in_cache = np.zeros(n, dtype=bool)
            self._in_cache[self._cache] = True
            self._dirty = set()
            return self._cache
        if not self._dirty:
            return self._cache
        dirty = np.fromiter(self._dirty, dtype=np.int64, count=len(self._dirty))
        newer = dirty >= len(self._in_cache)  # rows added since the cache was built
        older = dirty[~newer]
        return np.concatenate([self._cache, older[~self._in_cache[older]], dirty[newer]])

    def explain_items(self, user_id: str, item_ids: Sequence[str]) -> list[tuple[str, str | None]]:
        """Every item is here for its popularity.

        >>> Trending().explain_items("u", ["a"])
        [('trending', 'popular now')]
        """
        return [(POPULAR_STRATEGY, POPULAR_NOW)] * len(item_ids)

    def forget_user(self, user_id: str) -> None:
        """Nothing to do: trending keeps no per-user state."""

    def forget_items(self, item_ids: Collection[str]) -> None:
        """Zero the items' scores and free their rows (left out of rankings until reused)."""
        rows = self._items.remove(item_ids)
        if not len(rows):
            return
        self._scores[rows] = 0.0
        tables.rebase(self, rows)  # a freed row holds no gain: a reused one starts from nothing
        self._max = float(self._scores.max(initial=0.0))
        self._cache = self._cache[:0]  # the cached top lost rows: rebuild it

    def state_sizes(self) -> dict[str, int]:
        return {"users": 0, "items": self._items.live()}

    # -- scale-out ---------------------------------------------------------------------
    def export_users(self, user_ids: Collection[str]) -> dict[str, Any]:
        """Nothing: trending keeps no per-user state."""
        return {}

    def import_users(self, state: Mapping[str, Any]) -> None:
        """Nothing to adopt: trending keeps no per-user state."""

    def item_delta(self) -> dict[str, Any]:
        """The score each item gained from this model's own events since the last call.

        Returns
        -------
        dict
            ``items`` (str array), ``scores`` (float64 array, the gains, relative to the
            time origin) and ``t0`` (float, the time origin ``_t0``; 0.0 without decay or
            before any event). A receiver multiplies the gains by ``2 ** ((t0 - its t0) /
            half_life_s)``, computed as one exponent, so real epoch times never overflow.
        """
        return {**tables.item_delta(self), "t0": self._origin()}

    def merge_item_delta(self, delta: Mapping[str, Any]) -> None:
        """Add a peer's ``item_delta`` (rescaled to this model's time origin); they are not
        this model's own: they never return in its ``item_delta``."""
        gains = np.asarray(delta.get("scores", ()), dtype=np.float64)
        if not gains.any():
            return
        if self.half_life_s is not None:
            t0 = float(delta["t0"])
            self._growth(t0)  # adopts t0 when there is none; rescales first when t0 is far ahead
            # ratio of the origins' growth factors: one exponent, so epoch times never
            # overflow; a peer origin this far behind underflows only for scores ~e**-700 smaller
            gains = gains * math.exp((t0 - self._t0) / self.half_life_s * math.log(2))
        rows = tables.merge_item_delta(self, {"items": delta["items"], "scores": gains})
        if (gains >= 0).all():  # only gains: the cached top list still bounds the rest
            self._max = max(self._max, float(self._scores[rows].max()))
            self._dirty.update(rows.tolist())
        else:  # a peer's loss (negative event weights): rebuild the maximum and the top list
            self._max = float(self._scores[: len(self._items)].max(initial=0.0))
            self._cache = self._cache[:0]

    def _item_tables(self) -> dict[str, np.ndarray]:
        return {"scores": self._scores[: len(self._items)]}

    def _origin(self) -> float:
        """The time origin the raw scores are relative to (0.0 without one)."""
        return float(self._t0) if self._t0 is not None and self.half_life_s is not None else 0.0

    def _add_items(self, ids: Sequence[str]) -> np.ndarray:
        """Rows of ``ids``, the unknown ones created with no score (as ``learn_one`` adds
        them, so that a model sharing these rows, like ``Cooc``, can add them in step)."""
        rows = np.fromiter(map(self._items.add, ids), dtype=np.int64, count=len(ids))
        if len(self._items) > len(self._scores):
            self._scores = grow(self._scores, len(self._items))
        return rows

    def __setstate__(self, state: dict[str, Any]) -> None:
        reported = state.pop("_reported", None)  # saved before online_models.tables
        self.__dict__.update(state)
        if "_shadow" not in state:
            self._shadow = None if reported is None else {"scores": reported}

    def recommend(self, user_id: str, k: int = 10, exclude: Collection[str] | None = None) -> Ranking:
        return self.top(k, exclude)

    def recommend_many(
        self, user_ids: Sequence[str], k: int = 10, exclude: Mapping[str, Collection[str]] | None = None
    ) -> dict[str, Ranking]:
        """One popularity ranking, deep enough for the longest ``exclude``, filtered per user."""
        user_ids = list(user_ids)
        excludes = [exclude.get(u) if exclude else None for u in user_ids]
        ranked = self.top(k + max((len(e) for e in excludes if e), default=0))
        return {
            user_id: ranked[:k] if not seen else list(islice((p for p in ranked if p[0] not in seen), k))
            for user_id, seen in zip(user_ids, excludes)
        }

    def top(self, k: int = 10, exclude: Collection[str] | None = None) -> Ranking:
        """The ``k`` most popular items right now, none of ``exclude``."""
        exclude_rows = self._items.excluded_rows(exclude)
        rows = self.candidate_rows(k + (len(exclude_rows) if exclude_rows is not None else 0))
        if rows is None:
            return self._items.top(self.scores(), k, exclude_rows)
        best, vals = top_k_of(rows, self._scores[rows] / self._max, k, exclude_rows, len(self._items))
        return self._items.ranking(best, vals)


class PopularityLink:
    """A model's item rows linked to the rows of a popularity it reads but does not own
    (``use_popularity``), by item id.

    The owner learns each event before the model, so an item the model learns is known
    there; items the model creates otherwise (merges, imports) are created there too.
    Once the owner frees rows (idle expiry), every row is looked up again.

    >>> popularity, index = Trending(half_life_s=None), IdIndex()
    >>> popularity._add_items(["x", "y"]).tolist()
    [0, 1]
    >>> popularity._scores[:2] = [3.0, 5.0]
    >>> link = PopularityLink(popularity); _ = index.add("y"), index.add("new")
    >>> link.relink(index); link.scores(index).tolist()
    [5.0, 0.0]
    """

    __slots__ = ("popularity", "rows", "generation")

    def __init__(self, popularity: Trending) -> None:
        self.popularity = popularity
        self.rows = np.zeros(0, dtype=np.int64)  # the popularity's row of each model row, -1: none
        self.generation = popularity._items.generation

    def link(self, index: IdIndex, rows: np.ndarray | list[int], ids: Sequence[str | None]) -> None:
        """Look up the popularity's rows of the model's ``rows`` (items ``ids``)."""
        if len(self.rows) < len(index):
            old = len(self.rows)
            self.rows = grow(self.rows, len(index))
            self.rows[old:] = -1
        get = self.popularity._items.rows.get
        self.rows[rows] = [-1 if i is None else get(i, -1) for i in ids]

    def link_one(self, index: IdIndex, row: int, item_id: str) -> None:
        """``link`` for one row the model just learned, looked up only if it has no link yet
        (a linked row stays right until either side frees rows, which ``unlink`` and
        ``scores`` take care of)."""
        if row >= len(self.rows):
            self.link(index, [row], [item_id])
        elif self.rows[row] < 0:
            self.rows[row] = self.popularity._items.rows.get(item_id, -1)

    def place(self, index: IdIndex, rows: np.ndarray, popularity_rows: np.ndarray) -> None:
        """Link the model's ``rows`` to the popularity's ``popularity_rows`` (known already)."""
        if len(self.rows) < len(index):
            old = len(self.rows)
            self.rows = grow(self.rows, len(index))
            self.rows[old:] = -1
        self.rows[rows] = popularity_rows

    def relink(self, index: IdIndex) -> None:
        """Look every row up again."""
        self.link(index, np.arange(len(index)), index.ids)
        self.generation = self.popularity._items.generation

    def unlink(self, rows: np.ndarray) -> None:
        """The model freed these rows."""
        self.rows[rows[rows < len(self.rows)]] = -1

    def scores(self, index: IdIndex) -> np.ndarray:
        """Unscaled popularity per row of ``index`` (0 where the item has none)."""
        if self.generation != self.popularity._items.generation:  # it freed rows since
            self.relink(index)
        rows = self.rows[: len(index)]  # shorter while the model's last rows were never linked
        scores = np.zeros(len(index))
        known = np.flatnonzero(rows >= 0)
        scores[known] = self.popularity.raw_scores()[rows[known]]
        return scores

    def __getstate__(self):
        return self.popularity, self.rows, self.generation

    def __setstate__(self, state):
        self.popularity, self.rows, self.generation = state


class ReadsPopularity:
    """Mixin of a model that ranks with item popularity (the ``UsesPopularity`` capability).

    Standalone, the model owns its ``Trending`` and learns, forgets and shares it. Handed
    one by ``use_popularity``, it reads that one through a ``PopularityLink`` and leaves
    learning, forgetting and sharing it to its owner. A model whose own trending's rows are
    its own rows (every item it adds is added there too, in the same order) reads it
    directly (``_pop_link`` is ``None`` while it owns it); any other links to its own too.

    The model holds ``_items`` (an ``IdIndex``), ``_trending``, ``_pop_link`` and
    ``_owns_popularity``, and has ``_add_items(ids) -> rows`` (``merge_item_delta``'s).
    """

    _items: IdIndex
    _trending: Trending
    _pop_link: PopularityLink | None
    _owns_popularity: bool

    def use_popularity(self, popularity: Trending) -> bool:
        """Rank with ``popularity`` (learned, forgotten and shared by its owner) instead of
        this model's own trending, when it has the same hyperparameters as this model's."""
        if popularity is self._trending:
            return True
        if type(popularity) is not Trending or popularity._get_params() != self._trending._get_params():
            return False
        self._trending, self._pop_link, self._owns_popularity = popularity, PopularityLink(popularity), False
        self._pop_link.relink(self._items)
        return True

    def _raw_popularity(self) -> np.ndarray:
        """Unscaled popularity per item row of this model (not to be modified)."""
        return self._trending.raw_scores() if self._pop_link is None else self._pop_link.scores(self._items)

    def _learn_popularity(self, interaction: Interaction, row: int) -> None:
        """After the model learned ``interaction`` at item ``row``: its own trending learns it
        too (an owner learned it first)."""
        if self._owns_popularity:
            self._trending.learn_one(interaction)
        if self._pop_link is not None:
            self._pop_link.link_one(self._items, row, interaction.item_id)

    def _learn_popularity_many(self, interactions: Sequence[Interaction], distinct_rows: np.ndarray) -> None:
        """``_learn_popularity`` of a batch the model learned at the item rows ``distinct_rows``
        (each once): its own trending learns the batch in order, and each row is linked once."""
        if self._owns_popularity:
            self._trending.learn_many(interactions)
        if self._pop_link is not None:
            ids = self._items.ids
            for row in distinct_rows.tolist():
                self._pop_link.link_one(self._items, row, ids[row])

    def _add_popularity_items(self, ids: Sequence[str], rows: np.ndarray) -> None:
        """Items the model created at ``rows`` otherwise than by learning (merges, imports):
        created in the trending too, so that its owner's merge finds them."""
        popularity_rows = self._trending._add_items(ids)
        if self._pop_link is not None:
            self._pop_link.place(self._items, rows, popularity_rows)
        elif not np.array_equal(popularity_rows, rows):
            raise AssertionError(f"{type(self).__name__} and its trending gave an item different rows")

    def _forget_popularity(self, item_ids: Collection[str], rows: np.ndarray) -> None:
        """The model freed ``rows`` (items ``item_ids``); its own trending forgets them too."""
        if self._pop_link is not None:
            self._pop_link.unlink(rows)
        if self._owns_popularity:
            self._trending.forget_items(item_ids)  # rows shared with the model: both free them alike

    def _popularity_delta(self) -> dict[str, Any]:
        """Its own trending's ``item_delta``, keys prefixed ``popularity/`` (none when handed one)."""
        return tables.prefixed({"popularity": self._trending.item_delta()}) if self._owns_popularity else {}

    def _merge_popularity(self, delta: Mapping[str, Any]) -> None:
        """Merge a peer's ``popularity/`` part (``tables.split`` of its delta) into its own trending."""
        if self._owns_popularity and delta:
            self._add_items(np.asarray(delta.get("items", ())).tolist())
            self._trending.merge_item_delta(delta)
