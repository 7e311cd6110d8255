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
    RankedRows,
    WeightedRow,
    excluded_cells,
    grow,
    order_by_user_score_row,
    top_k_arrays,
)
from online_models.base import Interaction, Ranking, Recommender
from online_models.recent import RecentItems
from online_models.tables import id_array
from online_models.trending import (
    POPULAR_NOW,
    POPULAR_STRATEGY,
    PopularityLink,
    ReadsPopularity,
    Trending,
)

_DENSE_SLOTS = 1 << 20  # (user, item) scores held at once on the dense ranking path


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


class Sequential(ReadsPopularity, Recommender):
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

    def _add_item(self, item_id: str) -> int:
        row = self._items.add(item_id)
        if row >= len(self._out_total):
            self._out_total = grow(self._out_total, row + 1)
        while len(self._successors) <= row:
            self._successors.append(_Successors())
            self._sources.append(set())
        return row

    def learn_one(self, interaction: Interaction) -> None:
        self.learn_many((interaction,))

    def learn_many(self, interactions: Iterable[Interaction]) -> None:
        """``learn_one`` for each interaction in order, with the tables looked up once per
        batch and the outgoing totals added up in Python floats (the same sums)."""
        interactions = list(interactions)
        rows = [self._add_item(interaction.item_id) for interaction in interactions]  # as one by one would
        histories, window, weight = self._histories, self.window, self.weight
        steps, step_weights, backward = self.steps, self._step_weights(), self.backward_weight
        successors, into, log = self._successors, self._sources, self._pair_log
        totals = self._out_total  # holds every row of the batch now
        hits, trials, most = self._repeat_hits, self._repeat_trials, self.repeat_counts
        sizes, user_row, push = histories.sizes, histories.user_row, histories.push
        changed: dict[int, float] = {}  # outgoing totals this batch changed
        for interaction, row in zip(interactions, rows):
            u = user_row(interaction.user_id)
            size = sizes[u]
            if size:
                w = weight(interaction)
                recent = histories.rows[u, window - size :].tolist()
                recent.reverse()  # most recent first
                latest: dict[int, int] = {}  # row -> steps back of its latest click
                clicks: dict[int, int] = {}  # row -> its clicks in the window
                sources = into[row]
                for d, source in enumerate(recent):
                    if source in latest:
                        clicks[source] += 1
                    else:
                        latest[source] = d
                        clicks[source] = 1
                    if d < steps and source != row:
                        gain = w * step_weights[d]
                        successors[source].add(row, gain)
                        total = changed.get(source)
                        changed[source] = (float(totals[source]) if total is None else total) + gain
                        sources.add(source)
                        if log is not None:
                            log[0].append(source)
                            log[1].append(row)
                            log[2].append(gain)
                        if backward:
                            back_gain = gain * backward
                            successors[row].add(source, back_gain)
                            total = changed.get(row)
                            changed[row] = (float(totals[row]) if total is None else total) + back_gain
                            into[source].add(row)
                            if log is not None:
                                log[0].append(row)
                                log[1].append(source)
                                log[2].append(back_gain)
                for source, d in latest.items():
                    trials[d * most + min(clicks[source], most) - 1] += 1.0
                d = latest.get(row)
                if d is not None:
                    hits[d * most + min(clicks[row], most) - 1] += 1.0
            push(u, row, interaction.ts)
        if changed:
            totals[np.fromiter(changed, dtype=np.int64, count=len(changed))] = list(changed.values())
        learn_popularity = self._learn_popularity
        for interaction, row in zip(interactions, rows):
            learn_popularity(interaction, row)

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

    def recommend_rows(
        self, user_ids: Sequence[str], k: int = 10, exclude: Mapping[str, Collection[str]] | None = None
    ) -> RankedRows:
        """``recommend_many``'s lists as arrays (see ``RankedRows``): no per-user scoring
        nor list in Python. Each user's items scored above 0 come first, then popular items
        the user neither has nor excludes, scored 0."""
        users = list(user_ids)
        n = len(self._items)
        if n == 0 or k <= 0:  # nothing learned here; a shared popularity may know items
            empty = np.zeros((len(users), 0))
            return self._with_popular(users, k, empty.astype(np.int64), empty, exclude or {}) if k > 0 else \
                RankedRows(empty.astype(np.int64), empty, self._items)
        at_user, at_item = excluded_cells(self._items, users, exclude or {})
        user, rows, weight, back = self._sources_of(users)

        # repeats: each distinct recent item at the steps back of its latest click
        key = user * n + rows
        order = np.lexsort((back, key))  # per (user, item), the latest click first
        first = np.ones(len(key), dtype=bool)
        first[1:] = key[order][1:] != key[order][:-1]
        latest = order[first]
        clicks = np.bincount(np.cumsum(first) - 1, minlength=len(latest))
        most = self.repeat_counts
        repeat = self.repeat_rates()[back[latest] * most + np.minimum(clicks, most) - 1]
        repeat_total = np.bincount(user[latest], repeat, minlength=len(users))

        # transitions: each recent item's strongest successors, gathered for all users at once
        source_weight = weight * np.maximum(1.0 - repeat_total[user], 0.0) / (self._out_total[rows] + self.shrinkage)
        distinct, which = np.unique(rows, return_inverse=True)
        parts = [self._successors[r].strongest(self.max_successors) for r in distinct.tolist()]
        lengths = np.array([len(p[0]) for p in parts], dtype=np.int64)
        if lengths.sum():
            succ_rows = np.concatenate([p[0] for p in parts])
            succ_weights = np.concatenate([p[1] for p in parts])
            per_entry = lengths[which]
            starts = np.cumsum(lengths) - lengths
            ends = np.cumsum(per_entry)
            at = np.repeat(starts[which] - (ends - per_entry), per_entry) + np.arange(ends[-1] if len(ends) else 0)
            seq_keys = np.repeat(user, per_entry) * n + succ_rows[at]
            seq_vals = succ_weights[at] * np.repeat(source_weight, per_entry)
        else:
            seq_keys, seq_vals = np.zeros(0, dtype=np.int64), np.zeros(0)

        keys = np.concatenate([seq_keys, key[latest]])
        vals = np.concatenate([seq_vals, repeat])
        marked_keys = at_user * n + at_item if len(at_user) else None
        if len(keys) * 8 >= len(users) * n:  # dense enough: per-user score rows, no sort of the entries
            top_rows_, top_scores = self._dense_top(keys, vals, marked_keys, len(users), n, k)
        else:
            top_rows_, top_scores = self._sparse_top(keys, vals, marked_keys, len(users), n, k)
        return self._with_popular(users, k, top_rows_, top_scores, exclude or {})

    def _sources_of(self, users: list[str]) -> tuple[np.ndarray, ...]:
        """Every user's recent items as flat arrays: user position, item row, source weight
        (``a_d``, summing to 1 per user), and steps back."""
        histories, window = self._histories, self.window
        table = histories.users.rows
        at = [table.get(u, -1) for u in users]
        held_by = histories.sizes  # a list: read per user, not converted whole
        sizes = np.array([held_by[a] if a >= 0 else 0 for a in at], dtype=np.int64)
        at = np.array(at, dtype=np.int64)
        held = np.arange(window) >= (window - sizes)[:, None]
        user, col = np.nonzero(held)  # per user, oldest first
        table_rows = at[user]
        rows = histories.rows[table_rows, col]
        back = window - 1 - col
        weight = self._decay_powers()[back]
        if self.recency_half_life_s is not None and len(user):
            age = histories.values[table_rows, window - 1] - histories.values[table_rows, col]
            weight = weight * np.exp2(-age / self.recency_half_life_s)
        total = np.bincount(user, weight, minlength=len(users))
        return user, rows, weight / np.maximum(total[user], 1e-300), back

    def _decay_powers(self) -> np.ndarray:
        powers = self.__dict__.get("_powers_cache")
        if powers is None:
            powers = self._powers_cache = self.recency_decay ** np.arange(self.window, dtype=np.float64)
        return powers

    def _with_popular(self, users: list[str], k: int, rows: np.ndarray, scores: np.ndarray,
                      exclude: Mapping[str, Collection[str]]) -> RankedRows:
        """The lists ``rows``/``scores`` filled up to ``k`` with the most popular items that
        each user has neither listed nor excluded (scored 0), in popularity order."""
        listed = (rows >= 0).sum(axis=1)
        short = np.flatnonzero(listed < k)
        if not len(short):
            return RankedRows(rows, scores, self._items)
        # deep enough whatever each short user has listed or excludes (known here or not)
        depth = k + max(have + len(exclude.get(users[j]) or ()) for j, have in
                        zip(short.tolist(), listed[short].tolist()))
        popular = self._popular_rows(depth)
        width = min(k, len(self._items))  # the popularity may have named items new here
        out_rows = np.full((len(users), width), -1, dtype=np.int64)
        out_scores = np.full((len(users), width), -np.inf)
        out_rows[:, : rows.shape[1]], out_scores[:, : rows.shape[1]] = rows, scores
        if not len(popular):
            return RankedRows(out_rows, out_scores, self._items)
        # most short users list nothing and exclude nothing: the popular list as it is
        ex_user, ex_item = excluded_cells(self._items, [users[j] for j in short.tolist()], exclude)
        bare = listed[short] == 0
        bare[ex_user] = False
        m = min(width, len(popular))
        out_rows[short[bare], :m] = popular[:m]
        out_scores[short[bare], :m] = 0.0
        rest = np.flatnonzero(~bare)  # positions in ``short``
        if not len(rest):
            return RankedRows(out_rows, out_scores, self._items)
        # which popular items each of the others has listed or excluded
        at_popular = np.full(len(self._items), -1, dtype=np.int64)
        at_popular[popular] = np.arange(len(popular))
        taken = np.zeros((len(rest), len(popular)), dtype=bool)
        mine = rows[short[rest]]
        hit = np.where(mine >= 0, at_popular[np.where(mine >= 0, mine, 0)], -1)
        j, col = np.nonzero(hit >= 0)
        taken[j, hit[j, col]] = True
        at_rest = np.full(len(short), -1, dtype=np.int64)
        at_rest[rest] = np.arange(len(rest))
        hit = at_popular[ex_item]
        taken[at_rest[ex_user[hit >= 0]], hit[hit >= 0]] = True
        # the first ``width - listed`` free ones of each, after its own
        free = ~taken
        rank = np.cumsum(free, axis=1) - 1
        have = listed[short[rest]]
        j, p = np.nonzero(free & (rank < (width - have)[:, None]))
        users_at, cols = short[rest][j], have[j] + rank[j, p]
        out_rows[users_at, cols] = popular[p]
        out_scores[users_at, cols] = 0.0
        return RankedRows(out_rows, out_scores, self._items)

    def _popular_rows(self, m: int) -> np.ndarray:
        """Rows of the ``m`` most popular items, most popular first; a shared popularity
        (``use_popularity``) may name items this model has not met: they are added here."""
        ranked = self._trending.top(m)
        get = self._items.rows.get
        rows = [get(item) for item, _ in ranked]
        if None in rows:  # only a handed popularity can know items this model does not
            missing = [item for row, (item, _) in zip(rows, ranked) if row is None]
            found = dict(zip(missing, self._add_items(missing).tolist()))
            rows = [found[item] if row is None else row for row, (item, _) in zip(rows, ranked)]
        return np.array(rows, dtype=np.int64)

    @staticmethod
    def _sparse_top(keys: np.ndarray, vals: np.ndarray, marked: np.ndarray | None, n_users: int, n: int,
                    k: int) -> tuple[np.ndarray, np.ndarray]:
        """Each user's top ``k`` positive-scored rows from ``(user * n + row, value)`` entries
        (summed per key), leaving out the ``marked`` keys: one sort of the distinct keys.
        ``(n_users, min(k, n))`` rows and scores, ``-1`` / ``-inf`` after a shorter list."""
        keys, at = np.unique(keys, return_inverse=True)
        scores = np.bincount(at, vals, minlength=len(keys))
        keep = scores > 0
        if marked is not None:
            keep &= ~np.isin(keys, marked)
        user, row = np.divmod(keys[keep], n)
        scores = scores[keep]
        order = order_by_user_score_row(user, scores, row)  # keys are distinct: so are (user, row)
        user, row, scores = user[order], row[order], scores[order]
        counts = np.bincount(user, minlength=n_users)
        pos = np.arange(len(user)) - (np.cumsum(counts) - counts)[user]
        take = pos < k
        width = min(k, n)
        out_rows = np.full((n_users, width), -1, dtype=np.int64)
        out_scores = np.full((n_users, width), -np.inf)
        out_rows[user[take], pos[take]] = row[take]
        out_scores[user[take], pos[take]] = scores[take]
        return out_rows, out_scores

    @staticmethod
    def _dense_top(keys: np.ndarray, vals: np.ndarray, marked: np.ndarray | None, n_users: int, n: int,
                   k: int) -> tuple[np.ndarray, np.ndarray]:
        """``_sparse_top`` through a dense score row per user, a chunk of users at a time."""
        step = max(1, _DENSE_SLOTS // n)
        out_rows = np.full((n_users, min(k, n)), -1, dtype=np.int64)
        out_scores = np.full((n_users, min(k, n)), -np.inf)
        for first in range(0, n_users, step):
            users = min(step, n_users - first)
            lo, hi = first * n, (first + users) * n
            inside = (keys >= lo) & (keys < hi)
            scores = np.bincount(keys[inside] - lo, vals[inside], minlength=users * n)
            scores[scores <= 0] = -np.inf
            if marked is not None:
                mine = marked[(marked >= lo) & (marked < hi)]
                scores[mine - lo] = -np.inf
            out_rows[first : first + users], out_scores[first : first + users] = top_k_arrays(
                scores.reshape(users, n), k)
        return out_rows, out_scores

    # -- explanations and similar items --------------------------------------------------
    def explain(self, user_id: str, item_id: str) -> str:
        """Why ``item_id`` ranks for the user, in words."""
        return self._reasons(user_id, [item_id])[0]

    def _reasons(self, user_id: str, item_ids: Sequence[str]) -> list[str]:
        """``explain`` for several items: the user's recent items are read once."""
        get = self._items.rows.get
        return self._say(self._source_factors(user_id), [get(item_id, -1) for item_id in item_ids])

    def _say(self, sources: list[tuple[int, float]], rows: list[int]) -> list[str]:
        """Why each item row (``-1``: unknown here) ranks for a user whose recent items are
        ``sources`` (see ``_source_factors``): the source whose transition to it weighs
        most, the first of equals."""
        sources = [(source, factor, self._successors[source]) for source, factor in sources]
        recent = {source for source, _, _ in sources}
        ids = self._items.ids
        reasons = []
        for row in rows:
            if row < 0:
                reasons.append("popular right now")
                continue
            if row in recent:
                reasons.append("you clicked it recently")
                continue
            best, best_score = None, 0.0
            for source, factor, successors in sources:
                i = successors.pos.get(row)
                if i is not None and factor * successors.weights[i] > best_score:
                    best, best_score = source, factor * successors.weights[i]
            reasons.append(f"often clicked after {ids[best]}" if best is not None else "popular right now")
        return reasons

    def _source_factors(self, user_id: str) -> list[tuple[int, float]]:
        """The user's recent items, oldest first, each with ``a_d / (out + shrinkage)`` (what
        its transitions are multiplied by when ranking, before the repeats' share)."""
        history = self._histories.get(user_id)
        if history is None:
            return []
        if self.recency_half_life_s is None:  # a few numbers: plain Python beats numpy's calls
            rows = history[0].tolist()
            weights = self._decay_powers()[len(rows) - 1 :: -1].tolist()  # a_d, oldest first
            total = 0.0
            for a in weights:  # summed in _sources_of's order, so the same floats
                total += a
            total = max(total, 1e-300)
            weights = [a / total for a in weights]
        else:
            _, rows_, weight, _ = self._sources_of([user_id])
            rows, weights = rows_.tolist(), weight.tolist()
        out, shrinkage = self._out_total, self.shrinkage
        return [(row, a / (float(out[row]) + shrinkage)) for row, a in zip(rows, weights)]

    def explain_items(self, user_id: str, item_ids: Sequence[str]) -> list[tuple[str, str | None]]:
        """Per item, ``("sequence", "often clicked after X")`` (the recent item whose
        transition weighs most) or ``("sequence", "you clicked it recently")``; an item no
        transition reaches was ranked for its popularity: ``("trending", "popular now")``."""
        return list(map(self._strategy_of, self._reasons(user_id, item_ids)))

    def explain_rows(self, user_ids: Sequence[str], rows: np.ndarray, index: IdIndex
                     ) -> list[list[tuple[str, str | None]]]:
        """``explain_items`` for a batch of lists at once (``rows``: item rows of ``index``,
        ``-1`` where there is no item), with the same words: every user's recent items and
        their factors are read in one pass, not one call per user."""
        user_ids = list(user_ids)
        listed = rows >= 0
        lengths = listed.sum(axis=1).tolist()
        flat = rows[listed].tolist()
        if index is not self._items:
            get, ids = self._items.rows.get, index.ids
            flat = [get(ids[r], -1) for r in flat]
        user, sources, weight, _ = self._sources_of(user_ids)
        factors = (weight / (self._out_total[sources] + self.shrinkage)).tolist()  # as _source_factors
        held = np.bincount(user, minlength=len(user_ids)).tolist()
        sources, strategy_of = sources.tolist(), self._strategy_of
        explained, start, cell = [], 0, 0
        for size, length in zip(held, lengths):
            mine = list(zip(sources[start : start + size], factors[start : start + size]))
            explained.append(list(map(strategy_of, self._say(mine, flat[cell : cell + length]))))
            start, cell = start + size, cell + length
        return explained

    def _strategy_of(self, reason: str) -> tuple[str, str | None]:
        """An explanation as ``(strategy, reason)``: popular items are trending's."""
        return (POPULAR_STRATEGY, POPULAR_NOW) if reason == "popular right now" else (self.name, reason)

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
        rows = np.fromiter(map(self._add_item, ids), dtype=np.int64, count=len(ids))
        self._add_popularity_items(ids, rows)
        return rows

    # ReadsPopularity gives use_popularity; the lists read only the most popular ids (_popular_rows)
    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.__dict__.setdefault("_owns_popularity", True)  # saved before use_popularity
        self.__dict__.setdefault("_pop_link", None)
