"""How ``Sequential`` ranks and explains a batch of users on arrays: each user's recent items'
strongest successors and repeats summed per (user, item) cell, the popular items filling
short lists, one top-k per user. ``Sequential.recommend`` reads the same path, so the single
and the batch lists cannot disagree (tests also compare them with a plain-Python scoring)."""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence

import numpy as np

from online_models._arrays import (
    IdIndex,
    RankedRows,
    excluded_cells,
    order_by_user_score_row,
    per_row,
    spans,
    splitmix64,
    top_k_arrays,
)
from online_models.trending import (
    POPULAR_NOW,
    POPULAR_STRATEGY,
)

_DENSE_SLOTS = 1 << 20  # (user, item) scores held at once on the dense ranking path
_EXPLAINED_PAIRS = 1 << 18  # explain_rows: (listed item, recent item) pairs held at once, at most
_ALONE = -(2**62)  # keys of users ranked alone start here (a hash may land there too: compared)


def _mix(m: int) -> np.ndarray:
    """``m`` odd int64 multipliers, well mixed (evenly spaced ones add up alike: ``m1 + m4 ==
    m2 + m3``, so short histories of low rows collided): a user's recent items times these,
    summed with wrap-around, are the key that groups alike users (then compared)."""
    return (splitmix64(np.arange(1, m + 1, dtype=np.uint64)) | np.uint64(1)).view(np.int64)


def repeat_cells(group: np.ndarray, rows: np.ndarray, back: np.ndarray, n: int, most: int
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Each group's (a user's, an event's) distinct recent items, from its entries ``rows``
    at ``back`` steps back: the entry of the item's latest click, and the item's cell in
    the repeat tables (``back * most + min(clicks, most) - 1``).

    >>> [a.tolist() for a in repeat_cells(np.array([0, 0, 0]), np.array([5, 6, 5]), np.array([2, 1, 0]), 10, 3)]
    [[2, 1], [1, 3]]
    """
    key = group * n + rows
    order = np.lexsort((back, key))  # per (group, item), the latest click first
    first = np.ones(len(key), dtype=bool)
    first[1:] = key[order][1:] != key[order][:-1]
    latest = order[first]
    clicks = np.bincount(np.cumsum(first) - 1, minlength=len(latest))
    return latest, back[latest] * most + np.minimum(clicks, most) - 1


class SequenceRanking:
    """``Sequential``'s batch ranking and explanations (a mixin: it reads ``Sequential``'s tables)."""

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
        places = self._held(users)
        first, alike = self._alike_users(users, exclude or {}, places)
        if first is None:
            return self._ranked_rows(users, k, exclude or {}, places)
        ranked = self._ranked_rows([users[j] for j in first.tolist()], k, exclude or {},
                                   (places[0][first], places[1][first]))
        return RankedRows(ranked.rows[alike], ranked.scores[alike], ranked.index)

    def _alike_users(self, users: list[str], exclude: Mapping[str, Collection[str]],
                     places: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray | None, np.ndarray]:
        """Users whose lists must be equal: the same recent items in the same order (and,
        with ``recency_half_life_s``, at the same ages) and nothing excluded; a user's list
        depends on nothing else, so each such group is ranked once (in a shop's stream,
        many users of a batch have clicked one popular item only).

        Returns one user per group (positions in ``users``) and each user's group, or
        ``(None, ...)`` where no two users are alike. ``places``: ``_held(users)``."""
        histories, window = self._histories, self.window
        if len(users) < 2 or not len(histories.rows):  # one user; or none learned here (a replica that merged items)
            return None, np.zeros(0, dtype=np.int64)
        at, held = places
        cells = np.where(held, histories.rows[at], -1)  # -1: no item (an unknown user's row -1 holds none)
        mix = _mix(2 * window)
        key = cells * mix[:window]
        if self.recency_half_life_s is not None:
            values = histories.values[at]
            ages = np.where(held, values[:, window - 1 :] - values, 0.0)
            cells = np.concatenate([cells, ages.view(np.int64)], axis=1)  # compared bit by bit below
            key = np.concatenate([key, ages.view(np.int64) * mix[window:]], axis=1)
        key = key.sum(axis=1)  # wraps around: a hash; the cells are compared after
        if exclude:  # a user who excludes items is ranked alone
            alone = np.fromiter(map(bool, map(exclude.get, users)), dtype=bool, count=len(users))
            key[alone] = np.arange(int(alone.sum())) + _ALONE
        _, first, alike = np.unique(key, return_index=True, return_inverse=True)
        if len(first) == len(users):
            return None, alike
        same = (cells == cells[first[alike]]).all(axis=1)
        if exclude:  # an alone user shares its key with none but itself
            same &= (first[alike] == np.arange(len(users))) | ~(alone | alone[first[alike]])
        if not same.all():  # a hash collision (or a key equal to an alone user's): these alone
            apart = np.flatnonzero(~same)
            alike = alike.copy()
            alike[apart] = len(first) + np.arange(len(apart))
            first = np.concatenate([first, apart])
        return first, alike

    def _ranked_rows(self, users: list[str], k: int, exclude: Mapping[str, Collection[str]],
                     places: tuple[np.ndarray, np.ndarray] | None = None) -> RankedRows:
        """``recommend_rows`` for ``users`` one by one, all at once: no two users share work
        (``places``: ``_held(users)``, when the caller has it)."""
        n = len(self._items)
        at_user, at_item = excluded_cells(self._items, users, exclude or {})
        user, rows, weight, back = self._sources_of(users, places)

        # repeats: each distinct recent item at the steps back of its latest click
        latest, cell = repeat_cells(user, rows, back, n, self.repeat_counts)
        key = user * n + rows
        repeat = self.repeat_rates()[cell]
        repeat_total = np.bincount(user[latest], repeat, minlength=len(users))

        # transitions: each recent item's strongest successors, gathered for all users at once
        source_weight = weight * np.maximum(1.0 - repeat_total[user], 0.0) / (self._out_total[rows] + self.shrinkage)
        distinct, which = np.unique(rows, return_inverse=True)
        lengths, succ_rows, succ_weights = self._strongest_of(distinct.tolist())
        if len(succ_rows):
            per_entry = lengths[which]
            at = spans((np.cumsum(lengths) - lengths)[which], per_entry)
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

    def _strongest_of(self, rows: list[int], every: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Each row's strongest successors (``_Successors.strongest``; ``every``: all of
        them), one row after the other: their counts per row, rows and weights. A row within
        ``max_successors`` is read as it is: its arrays' bytes joined with the others', no
        numpy call per row."""
        successors, m = self._successors, None if every else self.max_successors
        lengths, row_parts, weight_parts = [], [], []
        for r in rows:
            links = successors[r]
            size = len(links.rows)
            if m is None or size <= m:
                row_parts.append(links.rows)
                weight_parts.append(links.weights)
            else:
                top_rows, top_weights = links.strongest(m)
                row_parts.append(top_rows)
                weight_parts.append(top_weights)
                size = m
            lengths.append(size)
        return (np.array(lengths, dtype=np.int64), np.frombuffer(b"".join(row_parts), dtype=np.int64),
                np.frombuffer(b"".join(weight_parts), dtype=np.float64))

    def _sources_of(self, users: list[str], places: tuple[np.ndarray, np.ndarray] | None = None
                    ) -> tuple[np.ndarray, ...]:
        """Every user's recent items as flat arrays: user position, item row, source weight
        (``a_d``, summing to 1 per user), and steps back (``places``: ``_held(users)``, if known)."""
        histories, window = self._histories, self.window
        at, held = self._held(users) if places is None else places
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

    def _held(self, users: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Each user's row in the history table (``-1``: unknown) and which of the row's
        ``window`` cells hold an item (the last ones)."""
        return self._histories.held_of(users)

    def _decay_powers(self) -> np.ndarray:
        powers = self.__dict__.get("_powers_cache")
        if powers is None:
            powers = self._powers_cache = self.recency_decay ** np.arange(self.window, dtype=np.float64)
        return powers

    def _with_popular(self, users: list[str], k: int, rows: np.ndarray, scores: np.ndarray,
                      exclude: Mapping[str, Collection[str]]) -> RankedRows:
        """The lists ``rows``/``scores`` filled up to ``k`` with the most popular items that
        each user has neither listed nor excluded (scored 0), in popularity order.

        The ``q``-th popular item a user may take is at ``q`` plus the number of its taken
        ones (listed or excluded, at sorted positions ``t_i``) with ``t_i - i <= q``: one
        count per taken item, a cumulative sum over the rows of users who took any, and
        one gather of the popular list for all cells."""
        listed = np.count_nonzero(rows >= 0, axis=1)
        short = np.flatnonzero(listed < k)
        if not len(short):
            return RankedRows(rows, scores, self._items)
        have = listed[short]
        # deep enough whatever each short user has listed or excludes (known here or not)
        if exclude:
            depth = k + max(h + len(exclude.get(users[j]) or ()) for j, h in zip(short.tolist(), have.tolist()))
        else:
            depth = k + int(have.max())
        popular = self._popular_rows(depth)
        width = min(k, len(self._items))  # the popularity may have named items new here
        if rows.shape[1] != width:
            out_rows = np.full((len(users), width), -1, dtype=np.int64)
            out_scores = np.full((len(users), width), -np.inf)
            out_rows[:, : rows.shape[1]], out_scores[:, : rows.shape[1]] = rows, scores
            rows, scores = out_rows, out_scores
        if not len(popular):
            return RankedRows(rows, scores, self._items)
        # the listed cells of the short users (each list comes first), and which are popular
        every = len(short) == len(users)
        listed_user = np.repeat(np.arange(len(short)), have)
        listed_col = np.arange(len(listed_user)) - np.repeat(np.cumsum(have) - have, have)
        listed_at = listed_user if every else short[listed_user]  # their users' rows in ``rows``
        listed_rows = rows[listed_at, listed_col]
        at_popular = np.full(len(self._items), -1, dtype=np.int64)
        at_popular[popular] = np.arange(len(popular))
        hit = at_popular[listed_rows]
        ex_user, ex_item = excluded_cells(self._items, [users[j] for j in short.tolist()], exclude)
        ex_hit = at_popular[ex_item]
        taken = listed_user[hit >= 0] * len(popular) + hit[hit >= 0]  # distinct: a list names an item once
        if len(ex_item):  # an excluded item is not listed, but may be excluded twice
            taken = np.unique(np.concatenate([taken, ex_user[ex_hit >= 0] * len(popular) + ex_hit[ex_hit >= 0]]))
        else:
            taken.sort()
        # per cell, the position in the popular list it takes (the listed cells are put back after)
        if len(taken):
            j, t = np.divmod(taken, len(popular))  # sorted by user, then position
            before = t - (np.arange(len(j)) - np.searchsorted(j, j))  # free positions before each
            col = have[j] + before
            inside = col < width
            at = np.bincount(j[inside] * width + col[inside], minlength=len(short) * width
                             ).reshape(len(short), width).cumsum(axis=1)
            at += np.arange(width) - have[:, None]
        else:
            at = np.arange(width) - have[:, None]
        np.clip(at, 0, len(popular), out=at)  # past the popular list: no item (before it: a listed cell)
        filled_rows = np.append(popular, -1)[at]
        filled_scores = np.append(np.zeros(len(popular)), -np.inf)[at]
        filled_rows[listed_user, listed_col] = listed_rows
        filled_scores[listed_user, listed_col] = scores[listed_at, listed_col]
        if every:
            return RankedRows(filled_rows, filled_scores, self._items)
        rows[short], scores[short] = filled_rows, filled_scores
        return RankedRows(rows, scores, self._items)

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
        ``-1`` where there is no item), with the same words, on arrays: every listed item
        is paired with each recent item of its user, the pairs' transition weights are
        found by one sorted join (``_transition_weights``), and each item takes the recent
        item whose factor times weight is highest (of equals, the earliest place in the
        user's list, as ``_say``); Python runs only to write the reasons out."""
        user_ids = list(user_ids)
        listed = rows >= 0
        lengths = listed.sum(axis=1)
        # users in chunks of at most _EXPLAINED_PAIRS pairs (a user has window recent items at most)
        bound = np.cumsum(lengths * self.window)
        if not len(user_ids) or bound[-1] <= _EXPLAINED_PAIRS:
            return self._explain_chunk(user_ids, rows, listed, lengths, index)
        explained, start = [], 0
        while start < len(user_ids):
            before = int(bound[start - 1]) if start else 0
            end = max(int(np.searchsorted(bound, before + _EXPLAINED_PAIRS, side="right")), start + 1)
            explained += self._explain_chunk(user_ids[start:end], rows[start:end], listed[start:end],
                                             lengths[start:end], index)
            start = end
        return explained

    def _explain_chunk(self, user_ids: list[str], rows: np.ndarray, listed: np.ndarray, lengths: np.ndarray,
                       index: IdIndex) -> list[list[tuple[str, str | None]]]:
        """``explain_rows`` for a few users at once (see there)."""
        cell_rows = self._items.rows_from(index, rows[listed])  # row after row: each user's cells together
        asked = np.flatnonzero(lengths)  # users with nothing to explain: not read
        user, sources, weight, _ = self._sources_of([user_ids[j] for j in asked.tolist()])
        factors = weight / (self._out_total[sources] + self.shrinkage)  # as _source_factors
        # every cell with every recent item of its user, in the user's order (places)
        held = np.bincount(user, minlength=len(asked))
        cell_user = np.repeat(np.arange(len(asked)), lengths[asked])
        per_cell = held[cell_user]
        pair_cell = np.repeat(np.arange(len(cell_rows)), per_cell)
        pair_entry = spans((np.cumsum(held) - held)[cell_user], per_cell)
        pair_source, pair_row = sources[pair_entry], cell_rows[pair_cell]
        recently = np.zeros(len(cell_rows), dtype=bool)
        recently[pair_cell[pair_source == pair_row]] = True
        distinct, which = np.unique(sources, return_inverse=True)
        score = factors[pair_entry] * self._transition_weights(distinct, which[pair_entry], pair_row)
        best = np.zeros(len(cell_rows))
        paired = per_cell > 0
        if len(score):  # pairs go by cell: one segment per cell with any
            best[paired] = np.maximum.reduceat(score, (np.cumsum(per_cell) - per_cell)[paired])
        wins = np.flatnonzero((score > 0) & (score == best[pair_cell]))
        first = np.ones(len(wins), dtype=bool)  # pairs go by cell, then place: the first winner of each
        first[1:] = pair_cell[wins[1:]] != pair_cell[wins[:-1]]
        winner = np.full(len(cell_rows), -1, dtype=np.int64)
        winner[pair_cell[wins[first]]] = pair_source[wins[first]]
        # each cell's reason as a code: 0 popular, 1 clicked recently, 2 + the source among those named
        after = (winner >= 0) & ~recently
        at_named = np.zeros(len(self._items), dtype=np.int64)  # by source row (no sort of the cells)
        at_named[winner[after]] = 1
        named = np.flatnonzero(at_named)
        at_named[named] = 2 + np.arange(len(named))
        cell_code = np.where(after, at_named[winner], recently)
        ids = self._items.ids
        said = np.fromiter([(POPULAR_STRATEGY, POPULAR_NOW), (self.name, "you clicked it recently"),
                            *[(self.name, f"often clicked after {ids[source]}") for source in named.tolist()]],
                           dtype=object)
        return per_row(said[cell_code].tolist(), listed)  # the same tuple objects, gathered in C

    def _transition_weights(self, distinct: np.ndarray, which: np.ndarray, targets: np.ndarray) -> np.ndarray:
        """The weight of each transition ``distinct[which[i]] -> targets[i]`` (0 where there
        is none, or the target is ``-1``): the successors of the rows ``distinct`` that go
        to a wanted target (a linear pass), joined with the pairs by one sort of their
        ``(source, row)`` keys."""
        weights = np.zeros(len(which))
        if not len(which):
            return weights
        n = len(self._items)
        lengths, succ_rows, succ_weights = self._strongest_of(distinct.tolist(), every=True)
        wanted_row = np.zeros(n + 1, dtype=bool)  # the last slot: where -1 lands
        wanted_row[targets] = True
        wanted_row[-1] = False
        keep = wanted_row[succ_rows]
        keys = (np.repeat(np.arange(len(distinct)), lengths)[keep] * n + succ_rows[keep])
        order = np.argsort(keys)
        keys = keys[order]
        if not len(keys):
            return weights
        wanted = which * n + targets
        found = np.minimum(np.searchsorted(keys, wanted), len(keys) - 1)
        hit = (targets >= 0) & (keys[found] == wanted)
        weights[hit] = succ_weights[keep][order[found[hit]]]
        return weights

    def _strategy_of(self, reason: str) -> tuple[str, str | None]:
        """An explanation as ``(strategy, reason)``: popular items are trending's."""
        return (POPULAR_STRATEGY, POPULAR_NOW) if reason == "popular right now" else (self.name, reason)
