"""Incremental item-to-item co-occurrence over each user's recent items."""

from __future__ import annotations

import math
from collections.abc import Collection, Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from online_models import tables
from online_models._arrays import IdIndex, WeightedRow, grow, top_k
from online_models.base import Interaction, Ranking, Recommender
from online_models.cooc_ranking import CoocRanking
from online_models.cooc_table import NeighbourTable
from online_models.recent import RecentItems
from online_models.tables import id_array
from online_models.trending import POPULAR_NOW, POPULAR_STRATEGY, PopularityLink, ReadsPopularity, Trending

_DENSE_ITEMS = 4096  # below this many items the co-occurrence is one dense float32 matrix
_RecentItems = RecentItems  # the name checkpoints from before the shared class pickled


class _Neighbours(WeightedRow):
    """One item's co-occurrence row as checkpoints before ``NeighbourTable`` pickled it
    (``_upgrade`` moves them into the table)."""

    __slots__ = ("top", "top_rows")

    def __setstate__(self, state):
        rows, weights, self.top, self.stale = state
        self._load(rows, weights)
        self.top_rows = None


class Cooc(CoocRanking, ReadsPopularity, Recommender):
    """Items that co-occur with the user's recent items, cosine-normalised, plus trending.

    When a user interacts with item ``i``, each of the user's last ``window`` items ``j``
    gains co-occurrence ``w_i * w_j`` with ``i`` (symmetric). A user's score for item ``x``
    sums ``cooc(j, x) / sqrt(n_j * n_x)`` over the recent items ``j``, the more recent
    weighing more (``recency_decay`` per step back), and adds ``popularity_weight`` times
    the trending score so that users with little history still get a sensible list.

    Storage: up to 4,096 items the co-occurrences are one dense float32 matrix (a user's
    scores are one gather and one vector-matrix product); past that they move to sparse
    per-item rows, and a user's scores are built from the neighbourhoods of the recent
    items plus the most popular items, which ranks exactly as the dense scores would
    (except for the ``max_neighbours`` cap); ``recommend_many`` does that for all its
    users at once. Ties go to the lower row.

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
    >>> from core.schema import Event
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
    ITEM_TABLES = {"counts": "sum"}
    USER_TABLES = {"recent": "weighted-items"}

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
        self._neighbours = NeighbourTable()  # sparse rows, once the catalogue is large
        self._dense = np.zeros((0, 0), dtype=np.float32)  # dense co-occurrence while it is small
        # which cells of the dense matrix are nonzero, row by row: what batch ranking reads
        # of it, without scanning the matrix (the values are the matrix's); kept by learn_many,
        # dropped by learn_one, found again by a scan when needed (see _links_of_dense)
        self._dense_links: NeighbourTable | None = NeighbourTable.of_dense(self._dense, keyed=False)
        self._recent = RecentItems(window)
        self._trending = Trending(half_life_s=half_life_s, event_weights=event_weights)
        # None: the trending above is this model's own, its rows are these rows; handed one
        # (use_popularity): these rows linked to its rows
        self._pop_link: PopularityLink | None = None
        self._owns_popularity = True
        # what item_delta has to report: None until sharing starts (see online_models.tables
        # and _start_pair_log), so that a model nobody shares pays one ``is None`` test per event
        self._shadow: dict[str, np.ndarray] | None = None
        self._pair_log: list[tuple[int, np.ndarray, np.ndarray]] | None = None  # own (row, cols, weights)
        self._pairs_carried: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None  # (a, b, w) not yet reported

    def learn_one(self, interaction: Interaction) -> None:
        w = self.weight(interaction)
        row = self._items.add(interaction.item_id)
        self._grow_rows(row + 1)
        count = self._counts[row] + w
        self._counts[row] = count
        self._inv_norm[row] = 1.0 / math.sqrt(count)
        recent = self._recent
        u = recent.user_row(interaction.user_id)
        if recent.sizes[u]:
            history, weights = recent.history(u)
            others = history != row
            cols = history[others]
            if len(cols):
                pairs = w * weights[others]
                if self._pair_log is not None:
                    self._pair_log.append((row, cols, pairs))
                if self._dense is not None:
                    vals = pairs.astype(np.float32)
                    dense_row, dense_col = self._dense[row], self._dense[:, row]  # 1-d views index faster
                    self._dense_links = None  # cheaper found again when needed than kept event by event
                    if len(cols) == 1 or len(set(cols.tolist())) == len(cols):
                        # the matrix is symmetric: the row's new values are the column's too
                        vals += dense_row[cols]
                        dense_row[cols] = vals
                        dense_col[cols] = vals
                    else:  # the user met an item twice in the window: accumulate repeats
                        np.add.at(dense_row, cols, vals)
                        np.add.at(dense_col, cols, vals)
                else:
                    self._neighbours.add_many(*_both_ways(np.full(len(cols), row), cols, pairs))
        recent.push(u, row, w)
        self._learn_popularity(interaction, row)

    def learn_many(self, interactions: Iterable[Interaction]) -> None:
        """``learn_one`` of each interaction in turn, with the batch's pair updates gathered
        into arrays: each event meets the recent items the events before it left, and every
        table ends as it would one event after the other (the same sums in the same order)."""
        interactions = list(interactions)
        rows = self._items.add_all([interaction.item_id for interaction in interactions])
        if self._dense is not None:  # the event whose item outgrows the dense matrix moves it to sparse rows
            moving = next((j for j, row in enumerate(rows) if row >= _DENSE_ITEMS), None)
            if moving is not None:
                self._learn_batch(interactions[:moving], rows[:moving])
                self.learn_one(interactions[moving])
                interactions, rows = interactions[moving + 1 :], rows[moving + 1 :]
        self._learn_batch(interactions, rows)

    def _learn_batch(self, interactions: list[Interaction], rows: list[int]) -> None:
        """``learn_many`` of interactions whose items have ``rows`` already."""
        if not interactions:
            return
        recent = self._recent
        self._grow_rows(max(rows) + 1)
        weights = np.array(self.weights_of(interactions), dtype=np.float64)
        rows = np.array(rows, dtype=np.int64)
        users = recent.user_rows([interaction.user_id for interaction in interactions])
        np.add.at(self._counts, rows, weights)
        distinct = np.unique(rows)
        self._inv_norm[distinct] = 1.0 / np.sqrt(self._counts[distinct])
        lengths, history, history_weights = recent.push_many(users, rows, weights)
        row_of = np.repeat(rows, lengths)
        others = history != row_of
        a, b, pairs = row_of[others], history[others], np.repeat(weights, lengths)[others] * history_weights[others]
        if self._pair_log is not None:
            self._pair_log.append((a, b, pairs))
        if self._dense is not None:
            self._link_dense(a, b, pairs)
            targets, cols, values = _both_ways(a, b, pairs)  # on the flat view: numpy's fast 1-d path
            np.add.at(self._dense.reshape(-1), targets * len(self._dense) + cols, values.astype(np.float32))
        else:
            self._neighbours.add_many(*_both_ways(a, b, pairs))
        self._learn_popularity_many(interactions, distinct)

    def _link_dense(self, a: np.ndarray, b: np.ndarray, w: np.ndarray) -> None:
        """Before co-occurrences ``w`` are added to the dense cells ``(a, b)`` and ``(b, a)``:
        the cells still empty join the links. A weight below 0 could empty a cell and link
        it twice later: then the links are dropped, to be found again by a scan."""
        if self._dense_links is None:
            return
        if (w <= 0).any():
            self._dense_links = None
            return
        empty = self._dense[a, b] == 0
        if empty.any():
            self._dense_links.append(*_both_ways(a[empty], b[empty], w[empty])[:2])

    def _links_of_dense(self) -> NeighbourTable:
        """The dense matrix's links (see ``_dense_links``), found by a scan if they were dropped."""
        if self._dense_links is None:
            self._dense_links = NeighbourTable.of_dense(self._dense, keyed=False)
        return self._dense_links

    def _grow_dense(self, n: int) -> None:
        dense = self._dense
        if n <= len(dense):
            return
        if n > _DENSE_ITEMS:  # too large for a dense matrix: move to sparse neighbour rows
            if self._dense_links is None:
                self._neighbours = NeighbourTable.of_dense(dense)
            else:  # the links name the nonzero cells: each row's in column order, as a scan finds them
                rows, cols, _ = self._dense_links.links(len(self._dense_links))
                order = np.lexsort((cols, rows))
                rows, cols = rows[order], cols[order]
                self._neighbours = NeighbourTable.of_segments(
                    np.bincount(rows, minlength=len(dense)), cols, dense[rows, cols])
            self._neighbours.ensure(n)
            self._dense = self._dense_links = None
            return
        new = np.zeros((min(max(n, 2 * len(dense), 64), _DENSE_ITEMS),) * 2, dtype=np.float32)
        new[: len(dense), : len(dense)] = dense
        self._dense = new

    def _popularity_factor(self) -> float:
        """What the trending score is multiplied by: ``popularity_weight`` over the best score."""
        top = self._trending.max_score()
        return self.popularity_weight / top if top > 0 else 0.0

    def _dense_scores(self, user_id: str, pop: float) -> np.ndarray:
        """Every item's score for the user, from the dense matrix: one gather, one product."""
        n = len(self._items)
        scores = self._raw_popularity() * pop
        recent = self._recent.get(user_id)
        if recent is not None:
            rows = recent[0][::-1]  # most recent first
            inv_norm = self._inv_norm
            factors = self._decay_powers(len(rows)) * inv_norm[rows]
            # the recent items' rows summed one after the other, as the batch path's sparse
            # product sums them (a BLAS product would round differently)
            cooc = np.multiply(factors[:, None], self._dense[rows, :n]).sum(axis=0)
            cooc *= inv_norm[:n]
            scores += cooc
        return scores

    def _decay_powers(self, n: int) -> np.ndarray:
        if len(self._powers) < n:
            self._powers = (self.recency_decay ** np.arange(max(n, self.window))).astype(np.float32)
        return self._powers[:n]

    def recommend(self, user_id: str, k: int = 10, exclude: Collection[str] | None = None) -> Ranking:
        if self._dense is None:
            return self._sparse_rankings([user_id], k, [exclude])[user_id]
        exclude_rows = self._items.excluded_rows(exclude)
        return self._items.top(self._dense_scores(user_id, self._popularity_factor()), k, exclude_rows)

    def recommend_many(
        self, user_ids: Sequence[str], k: int = 10, exclude: Mapping[str, Collection[str]] | None = None
    ) -> dict[str, Ranking]:
        """``recommend`` for each user, all users scored at once (``recommend_rows``)."""
        user_ids = list(user_ids)
        return self.recommend_rows(user_ids, k, exclude).rankings(user_ids)

    def recent(self, user_id: str) -> list[tuple[int, float]]:
        """The user's recent items as ``(row, weight)``, oldest first."""
        history = self._recent.get(user_id)
        return [] if history is None else list(zip(history[0].tolist(), history[1].tolist()))

    def forget_user(self, user_id: str) -> None:
        self._recent.forget([user_id])

    def forget_items(self, item_ids: Collection[str]) -> None:
        """Drop the items' counts and co-occurrences (both sides), take them out of the users'
        recent items (one pass over the users) and free their rows for new items."""
        rows = self._items.remove(item_ids)
        if not len(rows):
            return
        gone = set(rows.tolist())
        self._counts[rows] = 0.0
        tables.rebase(self, rows)  # a reused row must not report the old item's count
        if self._pair_log is not None:  # nor its unreported co-occurrences (they go with it)
            a, b, w = self._pending_pairs()
            keep = ~(np.isin(a, rows) | np.isin(b, rows))
            self._pairs_carried = a[keep], b[keep], w[keep]
        self._inv_norm[rows] = 0.0
        if self._dense is not None:
            self._dense[rows, :] = 0.0
            self._dense[:, rows] = 0.0
        links = self._neighbours if self._dense is None else self._dense_links  # (dropped links stay dropped)
        for row in gone if links is not None else ():
            for other in links.row(row)[0].tolist():
                if other not in gone:
                    links.discard(other, row)
            links.clear(row)
        self._recent.drop_items(rows)
        self._forget_popularity(item_ids, rows)

    def state_sizes(self) -> dict[str, int]:
        return {"users": len(self._recent), "items": self._items.live()}

    # -- scale-out (online_models.tables) ---------------------------------------------
    def export_users(self, user_ids: Collection[str]) -> dict[str, Any]:
        """The users' recent items (ids, each user's oldest first) and their event weights."""
        return tables.export_users(self, user_ids)

    def import_users(self, state: Mapping[str, Any]) -> None:
        """Adopt ``export_users``' users, replacing their recent items here; items not met
        yet are created with no count and no co-occurrence."""
        tables.import_users(self, state)

    def _has_user(self, user_id: str) -> bool:
        return user_id in self._recent.users

    def _user_get(self, name: str, user_id: str) -> tuple[np.ndarray, np.ndarray]:
        return self._recent.history(self._recent.users.rows[user_id])

    def _user_put(self, name: str, user_id: str, value: tuple[np.ndarray, np.ndarray]) -> None:
        self._recent.set(user_id, *value)  # the newest ``window``

    def item_delta(self) -> dict[str, Any]:
        """What this model's own events added to the item counts, co-occurrences and
        trending scores since the last call; starts a new tally.

        Returns
        -------
        dict
            ``items`` (str array) and ``counts`` (float64), the gains in weighted
            occurrences; ``pair_a``, ``pair_b`` (str, ``a`` before ``b`` in row order) and
            ``pair_w`` (float64), the co-occurrence gains, each pair once (the matrix is
            symmetric); its trending's delta under keys prefixed ``popularity/``.

        Notes
        -----
        The first call (or first merge) starts the tally: everything learned until then
        is this model's own, so it reports all of it; from then on each event also logs
        its co-occurrence gains, which are summed here.
        """
        self._start_pair_log()
        a, b, w = self._pending_pairs()
        self._pair_log, self._pairs_carried = [], None
        return {**tables.item_delta(self), "pair_a": id_array(self._items, a), "pair_b": id_array(self._items, b),
                "pair_w": w, **self._popularity_delta()}

    def merge_item_delta(self, delta: Mapping[str, Any]) -> None:
        """Add a peer's ``item_delta``: counts, co-occurrences (both halves of the symmetric
        matrix) and trending scores add up; the inverse norms follow the counts."""
        own, parts = tables.split(delta, ["popularity"])
        self._start_pair_log()  # before the peer's sums mix in: what is here now is own
        tables.merge_item_delta(self, own)
        if len(own.get("pair_w", ())):
            a = self._add_items(np.asarray(own["pair_a"]).tolist())
            b = self._add_items(np.asarray(own["pair_b"]).tolist())
            self._add_pairs(a, b, np.asarray(own["pair_w"], dtype=np.float64))
        self._merge_popularity(parts["popularity"])

    def _item_tables(self) -> dict[str, np.ndarray]:
        return {"counts": self._counts[: len(self._items)]}

    def _merged(self, rows: np.ndarray, item_tables: dict[str, np.ndarray]) -> None:
        total = self._counts[rows]  # learn_one's 1 / sqrt(count), rounded alike
        self._inv_norm[rows] = np.where(total > 0, 1.0 / np.sqrt(np.maximum(total, 1e-300)), 0.0)

    def _start_pair_log(self) -> None:
        """Start logging own co-occurrence gains: what was learned so far is all own and unreported."""
        if self._pair_log is None:
            self._pairs_carried = self._all_pairs()
            self._pair_log = []

    def _all_pairs(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Every co-occurrence as ``(a, b, weight)`` with ``a < b``."""
        n = len(self._items)
        if self._dense is not None:
            a, b = _dense_cells(self._dense[:n, :n], self._dense_links)
            upper = a < b
            a, b = a[upper], b[upper]
            return a, b, self._dense[a, b].astype(np.float64)
        a, b, w = self._neighbours.links(n)
        upper = b > a
        return a[upper], b[upper], w[upper]

    def _pending_pairs(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The unreported own co-occurrence gains, summed per pair: ``(a, b, weight)``,
        ``a < b``, sorted; they replace the log."""
        log = self._pair_log or []
        parts = [self._pairs_carried] if self._pairs_carried is not None else []
        if log:  # a row per entry (learn_one) or per pair (learn_many)
            parts.append((
                np.concatenate([np.broadcast_to(np.asarray(row, dtype=np.int64), len(cols)) for row, cols, _ in log]),
                np.concatenate([cols for _, cols, _ in log]),
                np.concatenate([w for _, _, w in log]),
            ))
        a, b, w = self._concat_pairs(parts)
        lo, hi = np.minimum(a, b), np.maximum(a, b)
        keys, at = np.unique(lo * max(len(self._items), 1) + hi, return_inverse=True)
        w = np.bincount(at, weights=w, minlength=len(keys))
        kept = w != 0
        keys, w = keys[kept], w[kept]
        a, b = np.divmod(keys, max(len(self._items), 1))
        self._pair_log, self._pairs_carried = [], (a, b, w)
        return a, b, w

    @staticmethod
    def _concat_pairs(
        parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]],
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(a, b, weight)`` parts joined into one."""
        if not parts:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64), np.zeros(0)
        return tuple(np.concatenate([p[i] for p in parts]) for i in range(3))  # type: ignore[return-value]

    def _add_items(self, ids: Sequence[str]) -> np.ndarray:
        """Rows of ``ids``, the unknown ones created with no learned state, in this model's
        tables and in its trending's (their rows stay the same, as in ``learn_one``)."""
        rows = np.fromiter(map(self._items.add, ids), dtype=np.int64, count=len(ids))
        self._grow_rows(len(self._items))
        self._add_popularity_items(ids, rows)
        return rows

    def _grow_rows(self, n: int) -> None:
        """Room for rows ``0 .. n-1`` in every item table, grown one row at a time (each
        table's capacity doubling), so that the dense matrix sees every size on its way and
        keeps room for every row of the counts (or moves to sparse rows when it would
        outgrow ``_DENSE_ITEMS``)."""
        while len(self._counts) < n:
            row = len(self._counts)
            self._counts = grow(self._counts, row + 1)
            self._inv_norm = grow(self._inv_norm, row + 1)
            if self._dense is not None:
                self._grow_dense(row + 1)
        if self._dense is None:
            self._neighbours.ensure(n)

    def _add_pairs(self, a: np.ndarray, b: np.ndarray, w: np.ndarray) -> None:
        """Add co-occurrence ``w`` to the distinct unordered pairs ``(a, b)``, both halves."""
        if not len(w):
            return
        if self._dense is not None:
            self._link_dense(a, b, w)
            vals = w.astype(np.float32)
            self._dense[a, b] += vals
            self._dense[b, a] += vals
            return
        self._neighbours.add_many(*_both_ways(a, b, w))

    def __getstate__(self):
        state = self.__dict__.copy()
        if self._dense is not None:  # mostly empty: its cells, not its 64 MiB
            state["_dense"] = _dense_state(self._dense, self._dense_links)
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        if isinstance(self._dense, dict):
            self._dense = _dense_of_state(self._dense)
        self._upgrade()

    def _upgrade(self) -> None:
        """Bring a model saved by an older version up to date."""
        for key in ("_pair_log", "_pairs_carried", "_pop_link"):  # saved before sharing, before use_popularity
            self.__dict__.setdefault(key, None)
        self.__dict__.setdefault("_owns_popularity", self._pop_link is None)  # saved before ReadsPopularity
        if "_shadow" not in self.__dict__:  # saved before online_models.tables
            reported = self.__dict__.pop("_counts_reported", None)
            self._shadow = None if reported is None else {"counts": reported}
        if isinstance(self._recent, dict):  # saved before _RecentItems: user -> deque of (row, weight)
            table = RecentItems(self.window)
            for user_id, history in self._recent.items():
                u = table.user_row(user_id)
                for row, weight in history:
                    table.push(u, row, weight)
            self._recent = table
        if isinstance(self._neighbours, list):  # saved before NeighbourTable: one _Neighbours per row
            rows = self._neighbours
            self._neighbours = NeighbourTable.of_segments(
                np.array([len(nb.rows) for nb in rows], dtype=np.int64),
                np.array([c for nb in rows for c in nb.rows], dtype=np.int64),
                np.array([w for nb in rows for w in nb.weights], dtype=np.float64),
                np.array([nb.stale for nb in rows], dtype=np.int64),
                {x: nb.top for x, nb in enumerate(rows) if nb.top is not None})
        self.__dict__.setdefault("_dense_links", None)  # saved before the dense matrix's links were kept

    def explain_items(self, user_id: str, item_ids: Sequence[str]) -> list[tuple[str, str | None]]:
        """Per item, the user's recent items that led to it: those whose co-occurrence with it
        weighs most in the user's score (recency-weighted as in ``recommend``; the second one
        is named too when it weighs at least half as much). An item none of them co-occurs
        with was ranked for its popularity: ``("trending", "popular now")``.

        >>> from core.schema import Event
        >>> model = Cooc()
        >>> for user, items in {"a": "xy", "b": "xy", "c": "xz"}.items():
        ...     for item in items:
        ...         model.learn_one(Event(user_id=user, item_id=item, type="view", ts=0))
        >>> model.explain_items("c", ["y"]), model.explain_items("new-user", ["y"])
        ([('cooc', 'often viewed with x, which you viewed')], [('trending', 'popular now')])
        """
        recent = self._recent.get(user_id)
        rows = [self._items.get(item) for item in item_ids]
        known = [n for n, row in enumerate(rows) if row is not None]
        explained: list[tuple[str, str | None]] = [(self.name, None)] * len(item_ids)
        if recent is None or not known:
            return [(POPULAR_STRATEGY, POPULAR_NOW) if row is not None else (self.name, None) for row in rows]
        history = recent[0][::-1]  # most recent first, as recommend weighs them
        mine, at = np.unique(history, return_inverse=True)  # an item met twice in the window counts once
        factors = np.zeros(len(mine))
        np.add.at(factors, at, self._decay_powers(len(history)) * self._inv_norm[history])
        targets = np.array([rows[n] for n in known], dtype=np.int64)
        if self._dense is not None:
            weights = self._dense[np.ix_(mine, targets)].astype(np.float64)
        else:  # the neighbours ranking used (the strongest), all at once, matched to the targets by a binary search
            weights = np.zeros((len(mine), len(targets)))
            hoods = [(j, hood) for j, row in enumerate(mine.tolist()) if (hood := self._strongest_neighbours(row))]
            if hoods:
                rows = np.concatenate([hood[0] for _, hood in hoods])
                values = np.concatenate([hood[1] for _, hood in hoods])
                owner = np.repeat([j for j, _ in hoods], [hood[3] for _, hood in hoods])
                order = np.argsort(targets, kind="stable")
                at = np.minimum(np.searchsorted(targets[order], rows), len(targets) - 1)
                hit = targets[order][at] == rows
                weights[owner[hit], order[at[hit]]] = values[hit]
        contributions = weights * factors[:, None]
        order = np.argsort(-contributions, axis=0, kind="stable")[:2]
        best = np.take_along_axis(contributions, order, axis=0)
        ids, mine = self._items.ids, mine.tolist()
        firsts, tops = order[0].tolist(), best[0].tolist()
        seconds, runners = (order[1].tolist(), best[1].tolist()) if len(order) > 1 else ([0] * len(known), [0.0] * len(known))
        for n, first, top, second, runner in zip(known, firsts, tops, seconds, runners):
            if top <= 0:
                explained[n] = (POPULAR_STRATEGY, POPULAR_NOW)
                continue
            names = ids[mine[first]] + (f" and {ids[mine[second]]}" if runner >= top / 2 else "")
            explained[n] = (self.name, f"often viewed with {names}, which you viewed")
        return explained

    def similar_items(self, item_id: str, k: int = 10) -> Ranking:
        row = self._items.get(item_id)
        if row is None:
            return []
        rows, weights = self._neighbour_arrays(row)
        counts = np.sqrt(np.maximum(self._counts[rows], 1e-12))
        sims = weights / (counts * math.sqrt(max(self._counts[row], 1e-12)))
        best, vals = top_k(sims, k)
        return self._items.ranking(rows[best], vals)


def _both_ways(a: np.ndarray, b: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each link ``a[i] - b[i]`` (weight ``w[i]``) as the increments ``a -> b`` then ``b -> a``,
    in order: what ``learn_one`` adds one after the other."""
    return np.column_stack([a, b]).reshape(-1), np.column_stack([b, a]).reshape(-1), np.repeat(w, 2)


def _dense_cells(dense: np.ndarray, links: NeighbourTable | None) -> tuple[np.ndarray, np.ndarray]:
    """The nonzero cells of the square ``dense`` as ``(rows, cols)``, row by row: from its
    ``links`` when they are kept (each row's cells then in the order they were linked),
    else by a scan (each row's in column order)."""
    if links is None:
        return np.nonzero(dense)
    rows, cols, _ = links.links(min(len(links), len(dense)))
    inside = cols < len(dense)
    rows, cols = rows[inside], cols[inside]
    nonzero = dense[rows, cols] != 0
    return rows[nonzero], cols[nonzero]


def _dense_state(dense: np.ndarray, links: NeighbourTable | None) -> dict[str, Any] | np.ndarray:
    """What a checkpoint keeps of the dense matrix: its nonzero cells while they take less
    room than the matrix (``_dense_of_state`` puts them back), else the matrix."""
    rows, cols = _dense_cells(dense, links)
    if 3 * len(rows) >= dense.size:  # (a cell costs three numbers)
        return dense
    return {"size": len(dense), "rows": rows.astype(np.int32), "cols": cols.astype(np.int32),
            "values": dense[rows, cols]}


def _dense_of_state(state: dict[str, Any]) -> np.ndarray:
    """The dense matrix of ``_dense_state``'s cells."""
    dense = np.zeros((state["size"],) * 2, dtype=np.float32)
    dense[state["rows"], state["cols"]] = state["values"]
    return dense
