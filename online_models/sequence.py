"""Sequence: what users click next, from the order of their recent clicks (sequential rules)
and their repeats, learned exactly and incrementally, one event at a time."""

from __future__ import annotations

from array import array
from collections.abc import Collection, Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from online_models import tables
from online_models._arrays import (
    IdIndex,
    WeightedRow,
    grow,
)
from online_models.base import Interaction, Ranking, Recommender
from online_models.recent import RecentItems
from online_models.sequence_ranking import SequenceRanking, repeat_cells
from online_models.tables import id_array
from online_models.trending import (
    PopularityLink,
    ReadsPopularity,
    Trending,
)


class _Successors(WeightedRow):
    """One item's outgoing transitions: successor rows and weights (see ``WeightedRow``).

    ``strongest`` caches the heaviest ``m`` (rows and positions), refreshed once the row
    changed by a tenth.
    """

    __slots__ = ("cached",)

    def __init__(self) -> None:
        super().__init__()
        self.cached: tuple[np.ndarray, np.ndarray] | None = None

    def _changed(self) -> None:
        self.cached = None

    def strongest(self, m: int | None) -> tuple[np.ndarray, np.ndarray]:
        """Rows and weights of the ``m`` heaviest successors (``None``: all); while a
        row holds fewer than ``m``, all of them, always current."""
        size = len(self.rows)
        if m is None or size <= m:  # views: the caller copies them before the row can grow again
            return np.frombuffer(self.rows, dtype=np.int64), np.frombuffer(self.weights, dtype=np.float64)
        if self.cached is None or len(self.cached[0]) != m or self.stale > max(size // 10, 16):
            weights = np.frombuffer(self.weights, dtype=np.float64)
            top = np.sort(np.argpartition(weights, size - m)[size - m :])
            self.cached = (np.frombuffer(self.rows, dtype=np.int64)[top].copy(), top)
            self.stale = 0
        rows, top = self.cached
        return rows, np.frombuffer(self.weights, dtype=np.float64)[top]  # current weights at the cached positions

    def __getstate__(self):
        return self.rows, self.weights

    def __setstate__(self, state):
        self._load(*state)
        self.cached, self.stale = None, 0


_Histories = RecentItems  # the name checkpoints from before the shared class pickled


class Sequential(SequenceRanking, ReadsPopularity, Recommender):
    """What users click next: sequential rules over each user's recent items, plus repeats.

    Learning an event of item ``i`` by a user whose recent items are ``h_1`` (the last
    one), ``h_2``, ... adds ``w_i / d ** distance_power`` to the transition ``h_d -> i``
    for ``d <= steps`` (``w_i``: the event type's weight), and to ``h_d``'s outgoing
    total. It also counts repeats: how often the next event is the item whose latest
    click was ``d`` steps back, out of the events that had such an item.

    A user's score for item ``x`` is a probability that ``x`` comes next:

        repeat(x) + (1 - sum of repeat) * sum_d a_d * T(h_d -> x) / (out(h_d) + shrinkage)

    where ``repeat(x)`` is the learned repeat rate of the step ``x`` was last clicked at
    (times ``repeat_weight``; 0 for items not in the user's last ``window``), and the
    source weights ``a_d`` fall by ``recency_decay`` per step back and, with
    ``recency_half_life_s``, with the time between the user's last event and ``h_d``;
    they sum to 1. Repeats take part only when the request does not exclude the user's
    items. Items no transition reaches follow, by popularity (``Trending``), scored 0.

    Everything learned about items is a sum, so replicas that exchange ``item_delta``
    rank like one model that learned every event.

    Parameters
    ----------
    window
        Recent items of each user kept for ranking and repeats.
    steps
        How far back in a user's history a new event makes transitions.
    distance_power
        A transition ``d`` steps back weighs ``1 / d ** distance_power``.
    recency_decay
        Factor per step back applied to a source item's weight when ranking.
    recency_half_life_s
        Time after which a source item weighs half (from the user's last event), or
        ``None``.
    shrinkage
        Added to each source's outgoing total: a source seen once is not trusted fully.
    repeat_weight
        Multiplies the learned repeat rates (0: no repeats).
    repeat_prior
        Pseudo-trials without a repeat added to each step's repeat rate.
    half_life_s
        Half-life of the popularity fallback.
    event_weights
        Weight per event type; defaults to ``EVENT_WEIGHTS``.
    max_successors
        Each source adds only its ``max_successors`` heaviest transitions to a ranking
        (``None``: all), which bounds the cost per user.

    Examples
    --------
    >>> from core.schema import Event
    >>> model = Sequential()
    >>> for t, (user, item) in enumerate([("a", "x"), ("a", "y"), ("a", "z"), ("b", "x"), ("b", "y")]):
    ...     model.learn_one(Event(user_id=user, item_id=item, type="click", ts=t))
    >>> model.recommend("b", k=1, exclude={"x", "y"})[0][0]
    'z'
    >>> model.explain("b", "z")
    'often clicked after y'
    """

    name = "sequence"

    def __init__(
        self,
        window: int = 20,
        steps: int = 10,
        distance_power: float = 1.0,
        recency_decay: float = 0.4,
        recency_half_life_s: float | None = None,
        shrinkage: float = 20.0,
        repeat_weight: float = 0.8,
        repeat_prior: float = 10.0,
        half_life_s: float | None = 3 * 24 * 3600.0,
        event_weights: Mapping[str, float] | None = None,
        max_successors: int | None = 500,
        backward_weight: float = 0.5,
        repeat_counts: int = 3,
    ):
        self.window = window
        self.steps = steps
        self.distance_power = distance_power
        self.recency_decay = recency_decay
        self.recency_half_life_s = recency_half_life_s
        self.shrinkage = shrinkage
        self.repeat_weight = repeat_weight
        self.repeat_prior = repeat_prior
        self.half_life_s = half_life_s
        self.event_weights = event_weights
        self.max_successors = max_successors
        self.backward_weight = backward_weight
        self.repeat_counts = repeat_counts
        self._items = IdIndex()
        self._successors: list[_Successors] = []
        self._sources: list[set[int]] = []  # rows with a transition into each row (for forget_items)
        self._out_total = np.zeros(0, dtype=np.float64)
        self._histories = RecentItems(window)  # values: the events' times
        # per (steps back d of an item's latest click, its clicks c in the window), at
        # d * repeat_counts + c - 1: events with such an item, and those that repeated it
        self._repeat_hits = [0.0] * (window * repeat_counts)
        self._repeat_trials = [0.0] * (window * repeat_counts)
        self._trending = Trending(half_life_s=half_life_s, event_weights=event_weights)
        self._owns_popularity = True  # False once handed one (use_popularity): its owner learns it
        self._pop_link: PopularityLink | None = None  # (ReadsPopularity) set with a handed popularity
        # what item_delta reports (see _start_sharing): None until sharing starts
        self._out_reported: np.ndarray | None = None
        self._repeats_reported: np.ndarray | None = None
        self._pair_log: tuple[array, array, array] | None = None  # own (source, target, weight) since the last delta
        self._pairs_carried: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None

    # -- learning ----------------------------------------------------------------------
    def _step_weights(self) -> list[float]:
        weights = self.__dict__.get("_step_weight_cache")
        if weights is None:
            weights = self._step_weight_cache = [1.0 / (d + 1) ** self.distance_power for d in range(self.steps)]
        return weights

    def _item_rows(self, ids: list[str]) -> list[int]:
        """The rows of ``ids``, in order (``IdIndex.add_all``: freed rows first); every table
        indexed by item row grows once."""
        rows = self._items.add_all(ids)
        n = len(self._items)
        if len(self._successors) < n:
            self._out_total = grow(self._out_total, n)
            self._successors.extend([_Successors() for _ in range(n - len(self._successors))])
            self._sources.extend([set() for _ in range(n - len(self._sources))])
        return rows

    def learn_one(self, interaction: Interaction) -> None:
        # plain Python: for one event a batch's array calls (push_many) cost ~25x more
        (row,) = self._item_rows([interaction.item_id])
        histories = self._histories
        u = histories.user_row(interaction.user_id)
        recent = histories.history(u)[0].tolist()
        histories.push(u, row, interaction.ts)
        if recent:
            self._learn_event(interaction, row, recent[::-1])
        self._learn_popularity(interaction, row)

    def learn_many(self, interactions: Iterable[Interaction]) -> None:
        """``learn_one`` for each interaction in order: the histories pushed in one call
        (``RecentItems.push_many``, which gives each event the history it found), the
        repeat counts tallied per cell and the transitions listed on arrays in the order
        event after event would make them, their gains added to the outgoing totals by
        ``np.add.at`` (index after index: the same sums). Python runs per transition (its
        event's weight, and adding it to its rows) and per repeat-table cell."""
        interactions = list(interactions)
        if len(interactions) <= 1:
            for interaction in interactions:
                self.learn_one(interaction)
            return
        rows = self._item_rows([interaction.item_id for interaction in interactions])
        users = self._histories.user_rows([interaction.user_id for interaction in interactions])
        rows = np.array(rows, dtype=np.int64)
        found, held, _ = self._histories.push_many(
            users, rows, np.array([interaction.ts for interaction in interactions], dtype=np.float64))
        if len(held):
            self._learn_transitions(interactions, rows, found, held)
        self._learn_popularity_many(interactions, np.unique(rows))

    def _learn_event(self, interaction: Interaction, row: int, recent: list[int]) -> None:
        """``_learn_transitions`` of one event at item ``row`` whose user's history was
        ``recent`` (most recent first), in plain Python."""
        hits, trials, most = self._repeat_hits, self._repeat_trials, self.repeat_counts
        latest: dict[int, int] = {}  # row -> steps back of its latest click
        clicks: dict[int, int] = {}  # row -> its clicks in the window
        for d, source in enumerate(recent):
            if source in latest:
                clicks[source] += 1
            else:
                latest[source] = d
                clicks[source] = 1
        for source, d in latest.items():
            trials[d * most + min(clicks[source], most) - 1] += 1.0
        d = latest.get(row)
        if d is not None:
            hits[d * most + min(clicks[row], most) - 1] += 1.0
        w, step_weights, backward = self.weight(interaction), self._step_weights(), self.backward_weight
        successors, into, log, totals = self._successors, self._sources, self._pair_log, self._out_total
        for d, source in enumerate(recent[: self.steps]):
            if source == row:
                continue
            gain = w * step_weights[d]
            links = ((source, row, gain), (row, source, gain * backward)) if backward else ((source, row, gain),)
            for before, after, link_gain in links:
                successors[before].add(after, link_gain)
                totals[before] += link_gain
                into[after].add(before)
                if log is not None:
                    log[0].append(before)
                    log[1].append(after)
                    log[2].append(link_gain)

    def _learn_transitions(self, interactions: list[Interaction], rows: np.ndarray, found: np.ndarray,
                           held: np.ndarray) -> None:
        """What the events at item ``rows`` teach from the histories they found (``found``
        items each, flat in ``held``, each oldest first): repeat counts and transitions."""
        n, most, steps = len(self._items), self.repeat_counts, self.steps
        event = np.repeat(np.arange(len(found)), found)
        end = np.cumsum(found)
        back = end[event] - 1 - np.arange(len(held))  # steps back: 0 is the event's last item
        # repeats: each event's distinct recent items at the steps back of their latest click
        latest, at = repeat_cells(event, held, back, n, most)
        repeated = held[latest] == rows[event[latest]]
        for table, cells in ((self._repeat_trials, at), (self._repeat_hits, at[repeated])):
            for cell, count in enumerate(np.bincount(cells, minlength=len(table)).tolist()):
                if count:
                    table[cell] += float(count)  # counts: exact in any order
        # transitions into each event's row from its last ``steps`` items, most recent first
        span = np.minimum(found, steps)
        step = np.arange(int(span.sum())) - np.repeat(np.cumsum(span) - span, span)
        at = np.repeat(end - 1, span) - step
        source, target = held[at], rows[event[at]]
        made = source != target
        source, target, step = source[made], target[made], step[made]
        if not len(source):
            return
        gain = np.array(self.weights_of(interactions), dtype=np.float64)[event[at][made]] * np.array(
            self._step_weights())[step]
        backward = self.backward_weight
        successors, into, log = self._successors, self._sources, self._pair_log
        if backward:
            back_gain = gain * backward
            for s, t, g, b in zip(source.tolist(), target.tolist(), gain.tolist(), back_gain.tolist()):
                successors[s].add(t, g)
                into[t].add(s)
                successors[t].add(s, b)
                into[s].add(t)
            # in the order one event after another adds them: source's gain, then target's
            changed = np.stack([source, target], axis=1).reshape(-1)
            gains = np.stack([gain, back_gain], axis=1).reshape(-1)
            pairs = (changed, np.stack([target, source], axis=1).reshape(-1), gains)
        else:
            for s, t, g in zip(source.tolist(), target.tolist(), gain.tolist()):
                successors[s].add(t, g)
                into[t].add(s)
            changed, gains, pairs = source, gain, (source, target, gain)
        np.add.at(self._out_total, changed, gains)
        if log is not None:
            for logged, part in zip(log, pairs):
                logged.frombytes(part.tobytes())

    # -- ranking -----------------------------------------------------------------------
    def repeat_rates(self) -> np.ndarray:
        """The learned chance that the next event repeats the item last clicked ``d`` steps
        back, per ``d`` (times ``repeat_weight``)."""
        hits = np.asarray(self._repeat_hits, dtype=np.float64)
        trials = np.asarray(self._repeat_trials, dtype=np.float64)
        return self.repeat_weight * hits / (trials + self.repeat_prior + 1e-12)

    def recommend(self, user_id: str, k: int = 10, exclude: Collection[str] | None = None) -> Ranking:
        return self.recommend_many([user_id], k, {user_id: exclude} if exclude else None)[user_id]

    def recommend_many(
        self, user_ids: Sequence[str], k: int = 10, exclude: Mapping[str, Collection[str]] | None = None
    ) -> dict[str, Ranking]:
        """All users ranked together in a few numpy calls (``recommend_rows``)."""
        users = list(dict.fromkeys(user_ids))
        return self.recommend_rows(users, k, exclude).rankings(users)

    def similar_items(self, item_id: str, k: int = 10) -> Ranking:
        """The items most often clicked next after ``item_id`` (share of its transitions)."""
        row = self._items.get(item_id)
        if row is None or k <= 0:
            return []
        rows, weights = self._successors[row].strongest(None)
        if not len(rows):
            return []
        scores = weights / (self._out_total[row] + self.shrinkage)
        order = np.lexsort((rows, -scores))[:k]
        return self._items.ranking(rows[order], scores[order])

    # -- forgetting --------------------------------------------------------------------
    def forget_user(self, user_id: str) -> None:
        self._histories.forget([user_id])

    def forget_items(self, item_ids: Collection[str]) -> None:
        """Drop the items' transitions (both ways) and popularity, take them out of users'
        histories, and free their rows. Outgoing totals of other items keep what went to
        them (totals only grow, so replicas stay sums of each other)."""
        rows = self._items.remove(item_ids)
        if not len(rows):
            return
        gone = set(rows.tolist())
        for row in gone:
            for source in self._sources[row]:
                if source not in gone:
                    self._successors[source].discard(row)
            for target in self._successors[row].rows:
                if target not in gone:
                    self._sources[target].discard(row)
            self._successors[row] = _Successors()
            self._sources[row] = set()
        self._out_total[rows] = 0.0
        if self._out_reported is not None:
            self._out_reported[rows[rows < len(self._out_reported)]] = 0.0
        if self._pair_log is not None:
            a, b, w = self._pending_pairs()
            keep = ~(np.isin(a, rows) | np.isin(b, rows))
            self._pairs_carried = a[keep], b[keep], w[keep]
        self._histories.drop_items(rows)
        self._forget_popularity(item_ids, rows)

    def state_sizes(self) -> dict[str, int]:
        return {"users": len(self._histories), "items": self._items.live()}

    # -- scale-out ---------------------------------------------------------------------
    def export_users(self, user_ids: Collection[str]) -> dict[str, Any]:
        """The users' recent items, by id, with their times.

        Returns
        -------
        dict
            ``users`` (str), ``lengths`` (int64), ``items`` (str) and ``ts`` (float64): the
            users' histories one after the other, each oldest first. Unknown users are left out.
        """
        histories = self._histories
        users = [u for u in dict.fromkeys(user_ids) if u in histories.users]
        parts = [histories.history(histories.users.rows[u]) for u in users]
        rows = np.concatenate([p[0] for p in parts]) if parts else np.zeros(0, dtype=np.int64)
        return {
            "users": np.array(users, dtype=str),
            "lengths": np.array([len(p[0]) for p in parts], dtype=np.int64),
            "items": id_array(self._items, rows),
            "ts": np.concatenate([p[1] for p in parts]) if parts else np.zeros(0),
        }

    def import_users(self, state: Mapping[str, Any]) -> None:
        """Adopt ``export_users``' users, replacing their histories here."""
        users = np.asarray(state.get("users", ())).tolist()
        if not users:
            return
        rows = self._add_items(np.asarray(state["items"]).tolist())
        ts = np.asarray(state["ts"], dtype=np.float64)
        lengths = np.asarray(state["lengths"], dtype=np.int64).tolist()
        end = 0
        for user_id, size in zip(users, lengths):
            start, end = end, end + size
            self._histories.set(user_id, rows[start:end], ts[start:end])

    def item_delta(self) -> dict[str, Any]:
        """What this model's own events added to its item state since the last call.

        Returns
        -------
        dict
            ``items`` (str) names the items below by position; ``out_total`` (float64,
            one per item) the gains in outgoing totals; ``popularity/...`` the item delta
            of its trending (see ``Trending.item_delta``);
            ``pair_source``, ``pair_target`` (int64 positions in ``items``) and
            ``pair_w`` (float64) the transition gains; ``repeat_hits`` and
            ``repeat_trials`` (float64, one per step back) the repeat counts' gains.
        """
        self._start_sharing()
        n = len(self._items)
        out_rows = np.flatnonzero(self._out_total[:n] != self._out_reported[:n])
        out_gains = self._out_total[out_rows] - self._out_reported[out_rows]
        self._out_reported[out_rows] = self._out_total[out_rows]
        repeats = np.array([self._repeat_hits, self._repeat_trials], dtype=np.float64)
        repeat_gains = repeats - self._repeats_reported
        self._repeats_reported = repeats
        a, b, w = self._pending_pairs()
        self._pairs_carried = None
        rows = np.unique(np.concatenate([out_rows, a, b]))
        out_total = np.zeros(len(rows))
        out_total[np.searchsorted(rows, out_rows)] = out_gains
        changed = bool(repeat_gains.any())
        return {
            **self._popularity_delta(),
            "items": id_array(self._items, rows), "out_total": out_total,
            "pair_source": np.searchsorted(rows, a), "pair_target": np.searchsorted(rows, b), "pair_w": w,
            "repeat_hits": repeat_gains[0] if changed else np.zeros(0),
            "repeat_trials": repeat_gains[1] if changed else np.zeros(0),
        }

    def merge_item_delta(self, delta: Mapping[str, Any]) -> None:
        """Add a peer's ``item_delta``: transitions, totals, repeat counts and trending add up."""
        self._start_sharing()
        delta, parts = tables.split(delta, ["popularity"])
        self._merge_popularity(parts["popularity"])  # items first met here get the same row in both tables
        hits = np.asarray(delta.get("repeat_hits", ()), dtype=np.float64)
        if len(hits):
            trials = np.asarray(delta["repeat_trials"], dtype=np.float64)
            m = min(len(hits), len(self._repeat_hits))
            for d in range(m):
                self._repeat_hits[d] += float(hits[d])
                self._repeat_trials[d] += float(trials[d])
            self._repeats_reported[0, :m] += hits[:m]
            self._repeats_reported[1, :m] += trials[:m]
        ids = delta.get("items")
        if ids is None or not len(ids):
            return
        rows = self._add_items(np.asarray(ids).tolist())
        gains = np.asarray(delta["out_total"], dtype=np.float64)
        changed = gains != 0
        self._out_total[rows[changed]] += gains[changed]
        self._out_reported = grow(self._out_reported, len(self._out_total))
        self._out_reported[rows[changed]] += gains[changed]
        sources = rows[np.asarray(delta["pair_source"], dtype=np.int64)]
        targets = rows[np.asarray(delta["pair_target"], dtype=np.int64)]
        successors, into = self._successors, self._sources
        for source, target, w in zip(sources.tolist(), targets.tolist(),
                                     np.asarray(delta["pair_w"], dtype=np.float64).tolist()):
            successors[source].add(target, w)
            into[target].add(source)

    def _start_sharing(self) -> None:
        """Start tallying own changes: what was learned so far is all own and unreported."""
        if self._out_reported is None:
            self._out_reported = np.zeros(len(self._out_total), dtype=np.float64)
        self._out_reported = grow(self._out_reported, len(self._out_total))
        if self._repeats_reported is None:
            self._repeats_reported = np.zeros((2, len(self._repeat_hits)), dtype=np.float64)
        if self._pair_log is None:
            self._pairs_carried = self._all_pairs()
            self._pair_log = (array("q"), array("q"), array("d"))

    def _all_pairs(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        parts = [(np.full(len(s.rows), row, dtype=np.int64),) + s.strongest(None)
                 for row, s in enumerate(self._successors) if len(s.rows)]
        if not parts:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64), np.zeros(0)
        return tuple(np.concatenate([p[i] for p in parts]) for i in range(3))  # type: ignore[return-value]

    def _pending_pairs(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The unreported own transition gains summed per pair ``(source, target, weight)``;
        they replace the log."""
        log = self._pair_log
        parts = [self._pairs_carried] if self._pairs_carried is not None else []
        if log is not None and len(log[0]):
            parts.append((np.frombuffer(log[0], dtype=np.int64).copy(), np.frombuffer(log[1], dtype=np.int64).copy(),
                          np.frombuffer(log[2], dtype=np.float64).copy()))
        if not parts:
            a, b, w = np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64), np.zeros(0)
        else:
            a, b, w = (np.concatenate([p[i] for p in parts]) for i in range(3))
        n = max(len(self._items), 1)
        keys, at = np.unique(a * n + b, return_inverse=True)
        w = np.bincount(at, weights=w, minlength=len(keys))
        kept = w != 0
        a, b = np.divmod(keys[kept], n)
        w = w[kept]
        self._pair_log = (array("q"), array("q"), array("d"))
        self._pairs_carried = (a, b, w)
        return a, b, w

    def _add_items(self, ids: Sequence[str]) -> np.ndarray:
        """Rows of ``ids``, unknown ones created with no learned state, here and in the
        popularity (its own, whose rows are these rows, or a handed one, linked)."""
        rows = np.array(self._item_rows(list(ids)), dtype=np.int64)
        self._add_popularity_items(ids, rows)
        return rows

    # ReadsPopularity gives use_popularity; the lists read only the most popular ids (_popular_rows)
    def __getstate__(self) -> dict[str, Any]:
        """The state with every item's successors in three flat arrays (counts per row,
        rows, weights) instead of an object per item, and without ``_sources``, which is
        their transpose: a checkpoint pickles a few buffers, not a Python object per item
        and an int per transition."""
        state = dict(self.__dict__)
        successors = state.pop("_successors")
        del state["_sources"]
        state["_successor_table"] = (
            np.array([len(links.rows) for links in successors], dtype=np.int64),
            np.frombuffer(b"".join([links.rows for links in successors]), dtype=np.int64),
            np.frombuffer(b"".join([links.weights for links in successors]), dtype=np.float64),
        )
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        state = dict(state)
        table = state.pop("_successor_table", None)
        self.__dict__.update(state)
        self.__dict__.setdefault("_owns_popularity", True)  # saved before use_popularity
        self.__dict__.setdefault("_pop_link", None)
        if table is not None:  # (a checkpoint from before pickled the objects themselves)
            self._successors, self._sources = _unpack_successors(*table)


def _unpack_successors(lengths: np.ndarray, rows: np.ndarray, weights: np.ndarray
                       ) -> tuple[list[_Successors], list[set[int]]]:
    """``Sequential.__getstate__``'s flat successor table back as one ``_Successors`` per
    row, and each row's sources (the rows with a transition into it)."""
    successors, sources = [], [set() for _ in range(len(lengths))]
    end = 0
    for source, size in enumerate(lengths.tolist()):
        start, end = end, end + size
        links = _Successors()
        links.__setstate__((array("q", rows[start:end].tobytes()), array("d", weights[start:end].tobytes())))
        successors.append(links)
    targets = rows.tolist()
    for source, target in zip(np.repeat(np.arange(len(lengths)), lengths).tolist(), targets):
        sources[target].add(source)
    return successors, sources
