"""Incremental item-to-item co-occurrence over each user's recent items."""

from __future__ import annotations

import math
from array import array
from collections import deque
from collections.abc import Collection, Mapping

import numpy as np

from online_models._arrays import IdIndex, grow, top_k, top_k_of
from online_models.base import Interaction, Ranking, Recommender
from online_models.trending import Trending

_DENSE_ITEMS = 4096  # below this many items the co-occurrence is one dense float32 matrix


class _Neighbours:
    """One item's co-occurrence row: neighbour rows and weights in append-only arrays.

    ``array.array`` keeps each update a plain Python operation (no numpy scalar overhead)
    while numpy reads them zero-copy for the vectorised scoring. ``strongest`` keeps the
    positions of the heaviest neighbours, refreshed after the row changed by a tenth.
    """

    __slots__ = ("pos", "rows", "weights", "top", "stale")

    def __init__(self) -> None:
        self.pos: dict[int, int] = {}
        self.rows = array("q")
        self.weights = array("d")
        self.top: np.ndarray | None = None
        self.stale = 0

    def add(self, row: int, weight: float) -> None:
        i = self.pos.get(row)
        if i is None:
            self.pos[row] = len(self.rows)
            self.rows.append(row)
            self.weights.append(weight)
        else:
            self.weights[i] += weight
        self.stale += 1

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """Copies of the neighbour rows and weights."""
        return np.array(self.rows, dtype=np.int64), np.array(self.weights, dtype=np.float64)

    def strongest(self, m: int) -> np.ndarray:
        """Positions of (about) the ``m`` heaviest neighbours."""
        if self.top is None or len(self.top) != m or self.stale > max(len(self.rows) // 10, 16):
            weights = np.frombuffer(self.weights, dtype=np.float64)
            self.top = np.sort(np.argpartition(weights, len(weights) - m)[len(weights) - m :])
            self.stale = 0
        return self.top

    def __getstate__(self):
        return self.rows, self.weights, self.top, self.stale

    def __setstate__(self, state):
        self.rows, self.weights, self.top, self.stale = state
        self.pos = {row: i for i, row in enumerate(self.rows)}


class Cooc(Recommender):
    """Items that co-occur with the user's recent items, cosine-normalised, plus trending.

    When a user interacts with item ``i``, each of the user's last ``window`` items ``j``
    gains co-occurrence ``w_i * w_j`` with ``i`` (symmetric). A user's score for item ``x``
    sums ``cooc(j, x) / sqrt(n_j * n_x)`` over the recent items ``j``, the more recent
    weighing more (``recency_decay`` per step back), and adds ``popularity_weight`` times
    the trending score so that users with little history still get a sensible list.

    Storage: up to 4,096 items the co-occurrences are one dense float32 matrix (a user's
    scores are one gather and one vector-matrix product); past that they move to sparse
    per-item rows, and a user's scores are built from the neighbourhoods of the recent
    items plus the popular candidates from ``Trending.candidate_rows``, which ranks
    exactly as the dense scores would (except for the ``max_neighbours`` cap).

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
    max_neighbours
        Once the catalogue outgrows the dense matrix (4,096 items), each recent item adds
        only its ``max_neighbours`` heaviest co-occurrences to a user's scores (``None``:
        all), which bounds the cost per user on large catalogues.

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
        recency_decay: float = 0.8,
        popularity_weight: float = 0.05,
        half_life_s: float | None = 3 * 24 * 3600.0,
        event_weights: Mapping[str, float] | None = None,
        max_neighbours: int | None = 500,
    ):
        self.max_neighbours = max_neighbours
        self.window = window
        self.recency_decay = recency_decay
        self.popularity_weight = popularity_weight
        self.half_life_s = half_life_s
        self.event_weights = event_weights
        self._items = IdIndex()
        self._counts = np.zeros(0, dtype=np.float64)  # weighted occurrences per item
        self._inv_norm = np.zeros(0, dtype=np.float32)  # 1 / sqrt(counts)
        self._powers = np.ones(1, dtype=np.float32)  # recency_decay ** age, cached
        self._neighbours: list[_Neighbours] = []  # sparse rows, once the catalogue is large
        self._dense = np.zeros((0, 0), dtype=np.float32)  # dense co-occurrence while it is small
        self._recent: dict[str, deque[tuple[int, float]]] = {}
        self._trending = Trending(half_life_s=half_life_s, event_weights=event_weights)

    def learn_one(self, interaction: Interaction) -> None:
        w = self.weight(interaction)
        row = self._items.add(interaction.item_id)
        if row >= len(self._counts):
            self._counts = grow(self._counts, row + 1)
            self._inv_norm = grow(self._inv_norm, row + 1)
            if self._dense is not None:
                self._grow_dense(row + 1)
        if self._dense is None and row == len(self._neighbours):
            self._neighbours.append(_Neighbours())
        self._counts[row] += w
        self._inv_norm[row] = 1.0 / math.sqrt(self._counts[row])
        recent = self._recent.get(interaction.user_id)
        if recent is None:
            recent = self._recent[interaction.user_id] = deque(maxlen=self.window)
        if recent:
            if self._dense is not None:
                others = [o for o, _ in recent if o != row]
                if others:
                    cols = np.array(others, dtype=np.int64)
                    vals = np.array([w * wo for o, wo in recent if o != row], dtype=np.float32)
                    if len(set(others)) == len(others):
                        self._dense[row, cols] += vals
                        self._dense[cols, row] += vals
                    else:  # the user met an item twice in the window: accumulate repeats
                        np.add.at(self._dense, (row, cols), vals)
                        np.add.at(self._dense, (cols, row), vals)
            else:
                mine, neighbours = self._neighbours[row], self._neighbours
                for other, w_other in recent:
                    if other != row:
                        mine.add(other, w * w_other)
                        neighbours[other].add(row, w * w_other)
        recent.append((row, w))
        self._trending.learn_one(interaction)

    def _grow_dense(self, n: int) -> None:
        dense = self._dense
        if n <= len(dense):
            return
        if n > _DENSE_ITEMS:  # too large for a dense matrix: move to sparse neighbour rows
            size = len(self._neighbours)
            for i in range(size, len(dense)):
                nb = _Neighbours()
                cols = np.flatnonzero(dense[i])
                nb.rows.extend(cols.tolist())
                nb.weights.extend(dense[i, cols].astype(np.float64).tolist())
                nb.pos = {int(c): j for j, c in enumerate(cols.tolist())}
                self._neighbours.append(nb)
            while len(self._neighbours) < n:
                self._neighbours.append(_Neighbours())
            self._dense = None
            return
        new = np.zeros((min(max(n, 2 * len(dense), 64), _DENSE_ITEMS),) * 2, dtype=np.float32)
        new[: len(dense), : len(dense)] = dense
        self._dense = new

    def _scores(self, user_id: str, m: int) -> tuple[np.ndarray | None, np.ndarray]:
        """Scores of candidate rows (``None``: all rows), a superset of the user's top-``m``.

        Items outside the user's neighbourhood score by popularity alone, so the popular
        candidates from ``Trending.candidate_rows`` complete the neighbours exactly.
        """
        n = len(self._items)
        trending = self._trending
        top = trending.max_score()
        pop = self.popularity_weight / top if top > 0 else 0.0
        recent = self._recent.get(user_id)
        if self._dense is not None:  # small catalogue: one gather and one product
            scores = trending.raw_scores() * pop
            if recent:
                rows = [r for r, _ in reversed(recent)]
                inv_norm = self._inv_norm
                factors = self._decay_powers(len(rows)) * inv_norm[rows]
                scores += (factors @ self._dense[rows, :n]) * inv_norm[:n]
            return None, scores
        nb_rows, nb_weights = self._neighbour_sums(recent) if recent else (None, None)
        if nb_rows is None:
            cand = trending.candidate_rows(m)
            if cand is None:
                return None, trending.raw_scores() * pop
            return cand, trending.raw_scores()[cand] * pop
        # sum repeated rows in O(entries): each entry points at its row's last entry
        last = np.empty(n, dtype=np.int64)
        entries = np.arange(len(nb_rows))
        last[nb_rows] = entries
        owner = last[nb_rows]
        sums = np.bincount(owner, nb_weights, minlength=len(nb_rows))
        keep = owner == entries
        rows, sums = nb_rows[keep], sums[keep]
        cand = trending.candidate_rows(m + len(rows))
        if cand is None:  # rank the whole catalogue
            scores = trending.raw_scores() * pop
            scores[rows] += sums * self._inv_norm[rows]
            return None, scores
        in_hood = last[cand]
        fresh = cand[(in_hood < 0) | (in_hood >= len(nb_rows)) | (nb_rows[np.clip(in_hood, 0, len(nb_rows) - 1)] != cand)]
        scores = np.concatenate([trending.raw_scores()[rows] * pop + sums * self._inv_norm[rows],
                                 trending.raw_scores()[fresh] * pop])
        return np.concatenate([rows, fresh]), scores

    def _decay_powers(self, n: int) -> np.ndarray:
        if len(self._powers) < n:
            self._powers = (self.recency_decay ** np.arange(max(n, self.window))).astype(np.float32)
        return self._powers[:n]

    def _neighbour_sums(self, recent: deque[tuple[int, float]]) -> tuple[np.ndarray | None, np.ndarray | None]:
        """Neighbour rows (with repeats) and their weights ``decay**age * cooc / sqrt(n_j)``."""
        rows, weights, factors, lengths = [], [], [], []
        factor, decay, neighbours, counts = 1.0, self.recency_decay, self._neighbours, self._counts
        cap = self.max_neighbours
        for row, _ in reversed(recent):
            nb = neighbours[row]
            if nb.rows:
                nb_rows = np.frombuffer(nb.rows, dtype=np.int64)
                nb_weights = np.frombuffer(nb.weights, dtype=np.float64)
                if cap is not None and len(nb_rows) > cap:
                    top = nb.strongest(cap)
                    nb_rows, nb_weights = nb_rows[top], nb_weights[top]
                rows.append(nb_rows)
                weights.append(nb_weights)
                factors.append(factor / math.sqrt(counts[row]))
                lengths.append(len(nb_rows))
            factor *= decay
        if not rows:
            return None, None
        return np.concatenate(rows), np.concatenate(weights) * np.repeat(factors, lengths)

    def recommend(self, user_id: str, k: int = 10, exclude: Collection[str] | None = None) -> Ranking:
        exclude_rows = self._items.rows_of(exclude) if exclude else None
        rows, scores = self._scores(user_id, k + (0 if exclude_rows is None else len(exclude_rows)))
        if rows is None:
            best, vals = top_k(scores, k, exclude_rows)
        else:
            best, vals = top_k_of(rows, scores, k, exclude_rows, len(self._items))
        return self._items.ranking(best, vals)

    def _neighbour_arrays(self, row: int) -> tuple[np.ndarray, np.ndarray]:
        if self._dense is not None:
            cols = np.flatnonzero(self._dense[row, : len(self._items)])
            return cols, self._dense[row, cols].astype(np.float64)
        return self._neighbours[row].arrays()

    def forget_user(self, user_id: str) -> None:
        self._recent.pop(user_id, None)

    def similar_items(self, item_id: str, k: int = 10) -> Ranking:
        row = self._items.get(item_id)
        if row is None:
            return []
        rows, weights = self._neighbour_arrays(row)
        counts = np.sqrt(np.maximum(self._counts[rows], 1e-12))
        sims = weights / (counts * math.sqrt(max(self._counts[row], 1e-12)))
        best, vals = top_k(sims, k)
        return self._items.ranking(rows[best], vals)
