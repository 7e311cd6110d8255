"""Trending: time-decayed popularity, the cold-start fallback every other model leans on."""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping

import numpy as np

from online_models._arrays import IdIndex, grow, top_k
from online_models.base import Interaction, Ranking, Recommender

_RESCALE_AT = 50.0  # rescale once the growth factor passes e**50, long before float64 overflows


class Trending(Recommender):
    """Items ranked by event weight, decayed exponentially with the event's age.

    Each event adds ``weight * 2 ** (ts / half_life_s)`` to its item; comparing those sums
    equals comparing decayed counts at any common "now", so nothing is touched per tick.

    Parameters
    ----------
    half_life_s
        Age at which an event counts half. ``None`` means no decay (all-time counts).
    event_weights
        Weight per event type; defaults to ``EVENT_WEIGHTS``.

    Examples
    --------
    >>> from stream.schema import Event
    >>> model = Trending(half_life_s=3600)
    >>> for ts, item in [(0, "old"), (0, "old"), (7200, "new")]:
    ...     model.learn_one(Event(user_id="u", item_id=item, type="click", ts=ts))
    >>> [item for item, _ in model.recommend("anyone", k=2)]
    ['new', 'old']
    """

    name = "trending"

    def __init__(self, half_life_s: float | None = 3 * 24 * 3600.0, event_weights: Mapping[str, float] | None = None):
        self.half_life_s = half_life_s
        self.event_weights = event_weights
        self._items = IdIndex()
        self._scores = np.zeros(0, dtype=np.float64)
        self._t0: float | None = None

    def _growth(self, ts: float) -> float:
        if self.half_life_s is None:
            return 1.0
        if self._t0 is None:
            self._t0 = ts
        exponent = (ts - self._t0) / self.half_life_s * math.log(2)
        if exponent > _RESCALE_AT:
            self._scores *= math.exp(-exponent)
            self._t0, exponent = ts, 0.0
        return math.exp(exponent)

    def learn_one(self, interaction: Interaction) -> None:
        row = self._items.add(interaction.item_id)
        self._scores = grow(self._scores, row + 1)
        self._scores[row] += self.weight(interaction) * self._growth(interaction.ts)

    def scores(self) -> np.ndarray:
        """Current popularity per item row, scaled so the best item scores 1."""
        scores = self._scores[: len(self._items)]
        top = scores.max(initial=0.0)
        return scores / top if top > 0 else scores.copy()

    def recommend(self, user_id: str, k: int = 10, exclude: Collection[str] | None = None) -> Ranking:
        return self.top(k, exclude)

    def top(self, k: int = 10, exclude: Collection[str] | None = None) -> Ranking:
        """The ``k`` most popular items right now, none of ``exclude``."""
        rows, vals = top_k(self.scores(), k, self._items.rows_of(exclude) if exclude else None)
        ids = self._items.ids
        return [(ids[r], float(v)) for r, v in zip(rows.tolist(), vals.tolist())]
