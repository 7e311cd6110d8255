"""Incremental item-to-item co-occurrence over each user's recent items."""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Collection, Mapping

import numpy as np

from online_models._arrays import IdIndex, grow, top_k
from online_models.base import Interaction, Ranking, Recommender
from online_models.trending import Trending


class _Neighbours:
    """One item's co-occurrence row: neighbour rows and weights in growable arrays."""

    __slots__ = ("pos", "rows", "weights")

    def __init__(self) -> None:
        self.pos: dict[int, int] = {}
        self.rows = np.zeros(4, dtype=np.int64)
        self.weights = np.zeros(4, dtype=np.float64)

    def add(self, row: int, weight: float) -> None:
        i = self.pos.get(row)
        if i is None:
            i = self.pos[row] = len(self.pos)
            if i >= len(self.rows):
                self.rows = grow(self.rows, i + 1)
                self.weights = grow(self.weights, i + 1)
            self.rows[i] = row
        self.weights[i] += weight

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        n = len(self.pos)
        return self.rows[:n], self.weights[:n]


class Cooc(Recommender):
    """Items that co-occur with the user's recent items, cosine-normalised, plus trending.

    When a user interacts with item ``i``, each of the user's last ``window`` items ``j``
    gains co-occurrence ``w_i * w_j`` with ``i`` (symmetric). A user's score for item ``x``
    sums ``cooc(j, x) / sqrt(n_j * n_x)`` over the recent items ``j``, the more recent
    weighing more (``recency_decay`` per step back), and adds ``popularity_weight`` times
    the trending score so that users with little history still get a sensible list.

    Parameters
    ----------
    window
        How many recent items of each user take part.
    recency_decay
        Factor applied per step back in the user's history when scoring.
    popularity_weight
        Weight of the trending score (scaled to [0, 1]) in the final score.
    half_life_s
        Half-life of the trending component.
    event_weights
        Weight per event type; defaults to ``EVENT_WEIGHTS``.

    Examples
    --------
    >>> from stream.schema import Event
    >>> model = Cooc()
    >>> for user, items in {"a": "xy", "b": "xy", "c": "xz"}.items():
    ...     for item in items:
    ...         model.learn_one(Event(user_id=user, item_id=item, type="view", ts=0))
    >>> model.recommend("new-user", k=3, exclude={"x"})[0][0]
    'y'
    >>> [item for item, _ in model.similar_items("y", k=1)]
    ['x']
    """

    name = "cooc"

    def __init__(
        self,
        window: int = 20,
        recency_decay: float = 0.9,
        popularity_weight: float = 0.05,
        half_life_s: float | None = 3 * 24 * 3600.0,
        event_weights: Mapping[str, float] | None = None,
    ):
        self.window = window
        self.recency_decay = recency_decay
        self.popularity_weight = popularity_weight
        self.half_life_s = half_life_s
        self.event_weights = event_weights
        self._items = IdIndex()
        self._counts = np.zeros(0, dtype=np.float64)  # weighted occurrences per item
        self._neighbours: list[_Neighbours] = []
        self._recent: dict[str, deque[tuple[int, float]]] = {}
        self._trending = Trending(half_life_s=half_life_s, event_weights=event_weights)

    def learn_one(self, interaction: Interaction) -> None:
        w = self.weight(interaction)
        row = self._items.add(interaction.item_id)
        if row == len(self._neighbours):
            self._neighbours.append(_Neighbours())
            self._counts = grow(self._counts, row + 1)
        self._counts[row] += w
        recent = self._recent.get(interaction.user_id)
        if recent is None:
            recent = self._recent[interaction.user_id] = deque(maxlen=self.window)
        mine = self._neighbours[row]
        for other, w_other in recent:
            if other != row:
                mine.add(other, w * w_other)
                self._neighbours[other].add(row, w * w_other)
        recent.append((row, w))
        self._trending.learn_one(interaction)

    def _user_scores(self, user_id: str) -> np.ndarray:
        n = len(self._items)
        scores = self.popularity_weight * self._trending.scores()[:n] if n else np.zeros(0)
        recent = self._recent.get(user_id)
        if not recent:
            return scores
        # trending indexes items in the same order as we do: both see the same stream
        counts = np.sqrt(np.maximum(self._counts[:n], 1e-12))
        factor = 1.0
        for row, _ in reversed(recent):
            rows, weights = self._neighbours[row].arrays()
            if len(rows):
                scores[rows] += factor * weights / (counts[rows] * counts[row])
            factor *= self.recency_decay
        return scores

    def recommend(self, user_id: str, k: int = 10, exclude: Collection[str] | None = None) -> Ranking:
        scores = self._user_scores(user_id)
        rows, vals = top_k(scores, k, self._items.rows_of(exclude) if exclude else None)
        ids = self._items.ids
        return [(ids[r], float(v)) for r, v in zip(rows.tolist(), vals.tolist())]

    def similar_items(self, item_id: str, k: int = 10) -> Ranking:
        row = self._items.get(item_id)
        if row is None:
            return []
        rows, weights = self._neighbours[row].arrays()
        counts = np.sqrt(np.maximum(self._counts[rows], 1e-12))
        sims = weights / (counts * math.sqrt(max(self._counts[row], 1e-12)))
        best, vals = top_k(sims.copy(), k)
        ids = self._items.ids
        return [(ids[r], float(v)) for r, v in zip(rows[best].tolist(), vals.tolist())]
