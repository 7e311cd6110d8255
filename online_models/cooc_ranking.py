"""How ``Cooc`` ranks a batch of users: sparse products in C instead of per-user Python.

The users' recent items, weighted and decayed, are a sparse users x items matrix; times
the item-neighbour rows (dense below a few thousand items, CSR above) it gives every
user's candidate scores at once, and one top-k per user picks their lists. The single-user
``Cooc.recommend`` is the reference: these paths give the same lists (tests compare them).
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence
from itertools import repeat

import numpy as np
from scipy.sparse import csr_matrix

from online_models._arrays import (IdIndex, RankedRows, excluded_cells, order_by_user_score_row, per_row, spans,
                                   top_rows)
from online_models.base import Ranking
from online_models.trending import POPULAR_NOW, POPULAR_STRATEGY

_SCRATCH_SLOTS = 1 << 20  # (user, item) slots summed at once on the sparse path: 4 MiB of int32 stay in cache
_CHUNK_CELLS = 1 << 22  # padded (user, candidate) cells ranked at once: 32 MB of float64
_EXPLAIN_CELLS = 1 << 20  # (listed item, recent item) contributions weighed at once: 8 MB of float64


class CoocRanking:
    """``Cooc``'s batch ranking (a mixin: it reads ``Cooc``'s tables)."""

    def recommend_rows(
        self, user_ids: Sequence[str], k: int = 10, exclude: Mapping[str, Collection[str]] | None = None
    ) -> RankedRows:
        """``recommend_many``'s lists as arrays (see ``RankedRows``), scored as sparse
        matrix products in scipy.

        The users' recent items are one sparse users x items matrix ``W`` (weight
        ``decay**age / sqrt(n_j)``). On the dense path ``W`` times the co-occurrence matrix
        gives every item's score (float32, summed in the order ``recommend`` sums). On the
        sparse path ``W`` times the recent items' neighbour rows in
        CSR gives each user's neighbourhood sums, in the order ``recommend`` adds them
        (most recent item first); the candidates are those plus the most popular items.
        Each user's own entries are ranked by one partition per chunk and one sort of the
        few at or above each user's ``k``-th score, and the popular items, ranked once for
        all users, are merged into them (``_merge_popular``).
        """
        user_ids = list(user_ids)
        n = len(self._items)
        width = max(min(k, n), 0)
        if n == 0 or width == 0 or not user_ids:
            return RankedRows(np.full((len(user_ids), width), -1, dtype=np.int64),
                              np.full((len(user_ids), width), -np.inf), self._items)
        at_user, at_item = excluded_cells(self._items, user_ids, exclude or {})
        rows, scores = self._rows_from_sums(user_ids, k, at_user, at_item)
        return RankedRows(rows, scores, self._items)

    def explain_rows(self, user_ids: Sequence[str], rows: np.ndarray, index: IdIndex
                     ) -> list[list[tuple[str, str | None]]]:
        """``explain_items`` for every user's listed items at once (``rows``: item rows of
        ``index``, ``-1`` after each list), with the same words.

        Per listed item, each recent item's contribution (its co-occurrence with the item
        times its summed recency weight) in one padded array per chunk of users; the best
        and the runner-up are two ``argmax`` per row (ties to the lower item row, as the
        stable sort of ``explain_items``), and each distinct sentence is written once. A
        user with one recent item (most, on a busy shop) needs only its contribution's sign.
        """
        user_ids = list(user_ids)
        listed = rows >= 0
        lengths = listed.sum(axis=1)
        flat = rows[listed]
        own = self._items.rows_from(index, flat)
        n = len(self._items)
        # what each listed item says: -2 (the model, no reason: an unknown item), -1 (popular
        # now), else the recent item it is often viewed with, and ``also`` the second one + 1 (0: none)
        said = np.where(own >= 0, -1, -2)
        also = np.zeros(len(flat), dtype=np.int64)
        if len(flat) and n:
            history, held = self._history_table(user_ids)
            users_of, ages = np.nonzero(held)
            items = history[users_of, ages]
            # each user's distinct recent items (ascending) and their summed recency weights,
            # added in the order explain_items adds them (most recent first, float32 terms)
            terms = (self._decay_powers(self.window)[ages] * self._inv_norm[items]).astype(np.float64)
            keys, at = np.unique(users_of * n + items, return_inverse=True)
            factors = np.bincount(at.reshape(-1), weights=terms, minlength=len(keys))
            mine_user, mine_item = np.divmod(keys, n)
            per_user = np.bincount(mine_user, minlength=len(user_ids))
            mine_start = np.cumsum(per_user) - per_user
            owner = np.repeat(np.arange(len(user_ids)), lengths)
            known = own >= 0
            asked = np.flatnonzero(known & (per_user[owner] > 1))
            alone = np.flatnonzero(known & (per_user[owner] == 1))  # most users: one recent item, nothing to weigh
            width = max(int(per_user.max(initial=0)), 1)
            neighbours = local = None
            if self._dense is None and (len(asked) or len(alone)):
                distinct = np.unique(mine_item)
                neighbours = self._neighbour_rows(distinct, n)
                neighbours.sort_indices()
                local = np.searchsorted(distinct, mine_item)

            def contributions_of(mine: np.ndarray, targets: np.ndarray) -> np.ndarray:
                """Recent items ``mine``'s co-occurrences with ``targets`` times their recency weights."""
                if neighbours is None:
                    weights = self._dense[mine_item[mine], targets].astype(np.float64)
                else:
                    weights = np.asarray(neighbours[local[mine], targets]).reshape(-1)
                return weights * factors[mine]

            if len(alone):
                mine = mine_start[owner[alone]]
                said[alone] = np.where(contributions_of(mine, own[alone]) > 0, mine_item[mine], -1)
            step = max(1, _EXPLAIN_CELLS // width)
            for start in range(0, len(asked), step):
                cells = asked[start : start + step]
                user = owner[cells]
                m = per_user[user]
                # one (listed item, recent item) pair per cell of the padded array
                pair_cell = np.repeat(np.arange(len(cells)), m)
                slot = np.arange(len(pair_cell)) - np.repeat(np.cumsum(m) - m, m)
                mine = mine_start[user[pair_cell]] + slot
                contributions = np.full((len(cells), width), -np.inf)
                contributions[pair_cell, slot] = contributions_of(mine, own[cells[pair_cell]])
                line = np.arange(len(cells))
                first = contributions.argmax(axis=1)
                top = contributions[line, first]
                contributions[line, first] = -np.inf
                second = contributions.argmax(axis=1)
                runner = contributions[line, second]
                first_item = mine_item[mine_start[user] + first]
                second_item = mine_item[mine_start[user] + second]
                chosen = top > 0
                said[cells] = np.where(chosen, first_item, -1)
                also[cells] = np.where(chosen & (runner >= top / 2), second_item + 1, 0)
        return per_row(self._sentences(said, also, n), listed)

    def _sentences(self, said: np.ndarray, also: np.ndarray, n: int) -> list[tuple[str, str | None]]:
        """What ``explain_rows``' ``said`` and ``also`` say, each distinct sentence written once
        and handed out by one gather of an object array. The sentences naming one item are
        numbered by a table per item (no sort: they are most), those naming two by ``np.unique``."""
        one = np.flatnonzero((said >= 0) & (also == 0))
        two = np.flatnonzero(also)
        single_items = np.flatnonzero(np.bincount(said[one], minlength=n))
        pair_codes, pair_at = np.unique(said[two] * (n + 1) + also[two], return_inverse=True)
        number = np.zeros(n, dtype=np.int64)
        number[single_items] = np.arange(2, 2 + len(single_items))
        which = np.where(said == -2, 0, 1)  # the model without a reason; popular now
        which[one] = number[said[one]]
        which[two] = 2 + len(single_items) + pair_at.reshape(-1)
        ids, (pair_first, pair_second) = self._items.ids, np.divmod(pair_codes, n + 1)
        palette = np.empty(2 + len(single_items) + len(pair_codes), dtype=object)
        palette[:] = [(self.name, None), (POPULAR_STRATEGY, POPULAR_NOW)] + [
            (self.name, f"often viewed with {ids[a]}, which you viewed") for a in single_items.tolist()] + [
            (self.name, f"often viewed with {ids[a]} and {ids[b - 1]}, which you viewed")
            for a, b in zip(pair_first.tolist(), pair_second.tolist())]
        return palette[which].tolist()

    def _history_table(self, user_ids: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """The users' recent item rows, most recent first, and which entries are held:
        two ``(len(user_ids), window)`` arrays."""
        recent = self._recent
        table_rows = np.fromiter(map(recent.users.rows.get, user_ids, repeat(-1)), dtype=np.int64,
                                 count=len(user_ids))
        known = table_rows >= 0
        sizes = np.zeros(len(user_ids), dtype=np.int64)
        if known.any():  # read one by one: the list of every user's size is long
            sizes[known] = np.fromiter(map(recent.sizes.__getitem__, table_rows[known].tolist()), dtype=np.int64,
                                       count=int(known.sum()))
        history = recent.rows[np.where(known, table_rows, 0)][:, ::-1] if len(recent.rows) else \
            np.zeros((len(user_ids), self.window), dtype=np.int64)
        held = np.arange(self.window) < sizes[:, None]
        return history, held

    def _rows_from_sums(self, user_ids: list[str], k: int, at_user: np.ndarray, at_item: np.ndarray
                        ) -> tuple[np.ndarray, np.ndarray]:
        """All users' neighbourhood sums as one sparse product, then each user's top ``k``
        among them and the most popular items."""
        n, n_users = len(self._items), len(user_ids)
        history, held = self._history_table(user_ids)
        by_popularity = self._trending.raw_scores() * self._popularity_factor()
        by_popularity[self._items.free] = -np.inf  # freed rows never rank
        excluded_per_user = np.bincount(at_user, minlength=n_users) if len(at_user) else np.zeros(n_users, np.int64)
        depth = k + int(excluded_per_user.max(initial=0))
        cand = self._trending.candidate_rows(depth)
        popular = top_rows(by_popularity, depth) if cand is None else top_rows(by_popularity[cand], depth, cand)

        # W: users x their distinct recent items, most recent first; C: those items' rows of
        # the co-occurrence matrix (dense path) or their strongest neighbours (sparse path)
        users_of, ages = np.nonzero(held)
        items = history[users_of, ages]
        distinct, column = np.unique(items, return_inverse=True)
        column = column.reshape(-1)
        if self._dense is not None:  # float32, as recommend: decay**age / sqrt(n_j) in float32
            c = self._dense_rows(distinct, n)
            factors = self._decay_powers(self.window)[ages] * self._inv_norm[items]
        else:  # float64: (decay * decay * ...) / sqrt(n_j), as recommend
            c = self._neighbour_rows(distinct, n)
            decay = np.cumprod(np.concatenate([[1.0], np.full(self.window - 1, self.recency_decay)]))
            factors = decay[ages] / np.sqrt(self._counts[items])
        sums = _csr_in_order(users_of, column, factors, n_users, len(distinct)) @ c
        entry_user = np.repeat(np.arange(n_users), np.diff(sums.indptr))
        entry_rows = sums.indices.astype(np.int64)
        entry_scores = by_popularity[entry_rows] + sums.data * self._inv_norm[entry_rows]

        if len(at_user):  # excluded entries never rank
            entry_scores[np.isin(entry_user * n + entry_rows, at_user * n + at_item)] = -np.inf
        return _merge_popular(entry_user, entry_rows, entry_scores, popular, by_popularity[popular],
                              at_user, at_item, n, n_users, k)

    def _dense_rows(self, rows: np.ndarray, n: int) -> csr_matrix:
        """The dense matrix's ``rows`` as a CSR matrix, their cells found by the links kept
        beside it (not by a scan of the rows)."""
        links = self._links_of_dense()
        links.ensure(n)  # rows without links yet
        lengths = links.length[rows]
        cols = links.cols[spans(links.start[rows], lengths)]
        indptr = np.concatenate([[0], np.cumsum(lengths)])
        return csr_matrix((self._dense[np.repeat(rows, lengths), cols], cols, indptr), shape=(len(rows), n))

    def _neighbour_rows(self, rows: np.ndarray, n: int) -> csr_matrix:
        """The (strongest, see ``max_neighbours``) neighbours of ``rows`` as a CSR matrix:
        one gather from the table; only the capped rows' strongest positions one by one."""
        table, m = self._neighbours, self.max_neighbours
        starts, lengths = table.start[rows], table.length[rows].copy()
        capped = np.flatnonzero(lengths > m) if m is not None else np.zeros(0, dtype=np.int64)
        m = m or 0  # (no row is capped without a cap)
        tops = [table.strongest(row, m) for row in rows[capped].tolist()]
        lengths[capped] = m
        at = spans(starts, lengths)
        if len(capped):  # a capped row's entries are its strongest positions, not its first ones
            ends = np.cumsum(lengths)
            at[spans(ends[capped] - m, lengths[capped])] = np.concatenate(tops) + np.repeat(starts[capped], m)
        indptr = np.concatenate([[0], np.cumsum(lengths)])
        return csr_matrix((table.weights[at], table.cols[at], indptr), shape=(len(rows), n))

    def _sparse_rankings(
        self, user_ids: list[str], k: int, exclude: list[Collection[str] | None] | None
    ) -> dict[str, Ranking]:
        """Rankings from the sparse neighbour rows (``exclude``: one collection per user, or ``None``).

        Each user's candidates are the items of their neighbourhood and the ``k + e`` most
        popular items, ``e`` being the most excluded items of any user: an item outside both
        ranks below at least ``k`` of those popular ones that the user has not excluded.
        """
        n = len(self._items)
        if n == 0 or k <= 0:
            return {u: [] for u in user_ids}
        excluded = [None] * len(user_ids)
        if exclude is not None:
            excluded = [self._items.rows_of(e) if e else None for e in exclude]
        by_popularity = self._raw_popularity() * self._popularity_factor()
        by_popularity[self._items.free] = -np.inf  # freed rows never rank
        depth = k + max((len(rows) for rows in excluded if rows is not None), default=0)
        cand = self._trending.candidate_rows(depth) if self._pop_link is None else None
        popular = top_rows(by_popularity, depth) if cand is None else top_rows(by_popularity[cand], depth, cand)
        step = max(1, _SCRATCH_SLOTS // n)
        scratch = np.empty(min(len(user_ids), step) * n, dtype=np.int32)
        hoods: dict[int, tuple[np.ndarray, np.ndarray, float, int] | None] = {}  # per recent item, see _strongest_neighbours
        rankings: dict[str, Ranking] = {}
        for start in range(0, len(user_ids), step):
            chunk = slice(start, start + step)
            rankings.update(
                self._rank_chunk(user_ids[chunk], excluded[chunk], k, by_popularity, popular,
                                 scratch, hoods)
            )
        return rankings

    def _rank_chunk(
        self, users: list[str], excluded: list[np.ndarray | None], k: int, by_popularity: np.ndarray,
        popular: np.ndarray, scratch: np.ndarray, hoods: dict[int, tuple[np.ndarray, np.ndarray, float, int] | None],
    ) -> dict[str, Ranking]:
        """Top-``k`` of a chunk of users: their neighbour rows and the popular rows in one
        array, summed per (user, item), then ranked segment by segment."""
        n = len(self._items)
        # each user's segment: the neighbour rows of the recent items, most recent first,
        # weighted decay**age * cooc / sqrt(n_j); then the popular rows, with weight 0
        all_rows, all_weights, factors, lengths, segment = [], [], [], [], []
        popular_rows, no_weight = popular.astype(np.int64), np.zeros(len(popular))
        decay, recent_of = self.recency_decay, self._recent
        for user_id in users:
            size, factor = len(popular), 1.0
            recent = recent_of.get(user_id)
            for row in recent[0][::-1].tolist() if recent is not None else ():
                hood = hoods.get(row, False)
                if hood is False:
                    hood = hoods[row] = self._strongest_neighbours(row)
                if hood is not None:
                    all_rows.append(hood[0])
                    all_weights.append(hood[1])
                    factors.append(factor / hood[2])
                    lengths.append(hood[3])
                    size += hood[3]
                factor *= decay
            all_rows.append(popular_rows)
            all_weights.append(no_weight)
            factors.append(0.0)
            lengths.append(len(popular))
            segment.append(size)
        rows = np.concatenate(all_rows).astype(np.int32)  # rows < n: int32 halves the traffic
        weights = np.concatenate(all_weights) * np.repeat(factors, lengths)
        keys = np.repeat(np.arange(0, len(users) * n, n, dtype=np.int32), segment)
        keys += rows  # (user, item) slot: user * n + row

        # sum repeated keys in O(entries), in entry order: each entry points at its key's last
        # entry (the scratch is never cleared: only the slots just written are read back)
        entries = np.arange(len(keys), dtype=np.int32)
        scratch[keys] = entries
        owner = scratch[keys]
        sums = np.bincount(owner, weights, minlength=len(keys))
        keep = owner == entries
        marked = [rows_j + j * n for j, rows_j in enumerate(excluded) if rows_j is not None and len(rows_j)]
        if marked:  # drop the excluded keys that are candidates
            ex_keys = np.concatenate(marked)
            at = scratch[ex_keys]
            valid = (at >= 0) & (at < len(keys))
            at = at[valid]
            keep[at[keys[at] == ex_keys[valid]]] = False
        if self._items.free:
            keep &= by_popularity[rows] > -np.inf
        per_user = np.add.reduceat(keep, np.cumsum(segment) - segment, dtype=np.int64)
        kept = np.flatnonzero(keep)
        rows = rows[kept]
        scores = by_popularity[rows] + sums[kept] * self._inv_norm[rows]

        # each user's k-th best score; only the rows at or above it are sorted
        user_of = np.repeat(np.arange(len(users)), per_user)
        crowded = np.flatnonzero(per_user > k).tolist()
        if crowded:
            cut = np.full(len(users), -np.inf)
            ends = np.cumsum(per_user).tolist()
            for j, size in zip(crowded, per_user[crowded].tolist()):
                segment_scores = scores[ends[j] - size : ends[j]].copy()
                segment_scores.partition(size - k)
                cut[j] = segment_scores[size - k]
            top = np.flatnonzero(scores >= cut[user_of])
            rows, scores, user_of = rows[top], scores[top], user_of[top]
        order = np.lexsort((rows, -scores, user_of))
        per_user = np.bincount(user_of, minlength=len(users)).tolist()
        ranked = list(zip(map(self._items.ids.__getitem__, rows[order].tolist()), scores[order].tolist()))
        rankings, start = {}, 0
        for user_id, size in zip(users, per_user):
            rankings[user_id] = ranked[start : start + min(size, k)]
            start += size
        return rankings

    def _strongest_neighbours(self, row: int) -> tuple[np.ndarray, np.ndarray, float, int] | None:
        """An item's neighbour rows and weights (only its ``max_neighbours`` heaviest),
        ``sqrt(n_j)`` and how many; ``None`` without neighbours."""
        cols, weights = self._neighbours.row(row)
        if not len(cols):
            return None
        if self.max_neighbours is not None and len(cols) > self.max_neighbours:
            top = self._neighbours.strongest(row, self.max_neighbours)
            cols, weights = cols[top], weights[top]
        return cols, weights, math.sqrt(self._counts[row]), len(cols)

    def _neighbour_arrays(self, row: int) -> tuple[np.ndarray, np.ndarray]:
        """The item's neighbour rows and weights (views of the tables: not to be modified)."""
        if self._dense is not None:  # the nonzero cells in column order, as a scan of the row finds them
            links = self._dense_links  # dropped by learn_one: one row's scan, not the whole matrix's
            cols = np.flatnonzero(self._dense[row]) if links is None else np.sort(links.row(row)[0])
            return cols, self._dense[row, cols].astype(np.float64)
        return self._neighbours.row(row)


def _csr_in_order(rows: np.ndarray, cols: np.ndarray, values: np.ndarray, n_rows: int, n_cols: int) -> csr_matrix:
    """A CSR matrix of entries given row by row (``rows`` ascending), keeping their order
    within each row and any repeated columns: scipy's products then add them in that order."""
    indptr = np.zeros(n_rows + 1, dtype=np.int64)
    np.cumsum(np.bincount(rows, minlength=n_rows), out=indptr[1:])
    return csr_matrix((values, cols.astype(np.int64), indptr), shape=(n_rows, n_cols))


def _merge_popular(users: np.ndarray, rows: np.ndarray, scores: np.ndarray, popular: np.ndarray,
                   popular_scores: np.ndarray, at_user: np.ndarray, at_item: np.ndarray, n: int, n_users: int,
                   k: int) -> tuple[np.ndarray, np.ndarray]:
    """Each user's ``k`` best of their own entries ``(users, rows, scores)`` (distinct rows
    per user) and of the ``popular`` rows they neither have among them nor exclude
    (``at_user``, ``at_item``), as ``_top_k_of_entries`` of them all would rank them.

    The popular rows are one list in rank order shared by every user, so only the users'
    own entries are ranked (``_top_k_of_entries``); the two ranked lists are then merged on
    arrays: an entry's place is its rank among the user's entries plus the popular rows
    still open to the user that rank before it (one ``searchsorted``), and a popular row's
    is the number of open popular rows before it plus the user's entries before it. Only
    the users with entries or exclusions are merged: the others' lists are the popular rows.
    """
    merged = np.zeros(n_users, dtype=bool)
    merged[users] = True
    merged[at_user] = True
    if merged.all():
        return _merge_popular_of(users, rows, scores, popular, popular_scores, at_user, at_item, n, n_users, k)
    none = np.zeros(0, dtype=np.int64)
    alone = _merge_popular_of(none, none, np.zeros(0), popular, popular_scores, none, none, n, 1, k)
    out_rows, out_scores = (np.repeat(a, n_users, axis=0) for a in alone)
    members = np.flatnonzero(merged)
    if len(members):
        place = np.cumsum(merged) - 1  # each merged user's place among them
        out_rows[members], out_scores[members] = _merge_popular_of(
            place[users], rows, scores, popular, popular_scores, place[at_user], at_item, n, len(members), k)
    return out_rows, out_scores


def _merge_popular_of(users: np.ndarray, rows: np.ndarray, scores: np.ndarray, popular: np.ndarray,
                      popular_scores: np.ndarray, at_user: np.ndarray, at_item: np.ndarray, n: int, n_users: int,
                      k: int) -> tuple[np.ndarray, np.ndarray]:
    """``_merge_popular`` of all ``n_users`` users."""
    order = np.lexsort((popular, -popular_scores))  # score descending, ties to the lower row
    q_rows, q_scores = popular[order], popular_scores[order]
    finite = q_scores > -np.inf
    q_rows, q_scores = q_rows[finite], q_scores[finite]
    depth = len(q_rows)
    # open[u, j]: the j-th popular row is a candidate of its own for user u
    q_at = np.full(n, -1, dtype=np.int64)
    q_at[q_rows] = np.arange(depth)
    taken = np.zeros((n_users, depth), dtype=bool)
    for user_of, row_of in ((users, rows), (at_user, at_item)):
        hit = q_at[row_of]
        taken[user_of[hit >= 0], hit[hit >= 0]] = True
    open_before = np.zeros((n_users, depth + 1), dtype=np.int64)
    np.cumsum(~taken, axis=1, out=open_before[:, 1:])
    top_rows_, top_scores = _top_k_of_entries(users, rows, scores, n_users, k)
    held = top_rows_ >= 0
    user_of, rank = np.nonzero(held)
    entry_rows, entry_scores = top_rows_[held], top_scores[held]
    # how many popular rows rank before each entry: those scoring more, and those scoring
    # the same with a lower row (a group of equal scores is ascending by row)
    group = np.zeros(depth, dtype=np.int64)
    if depth:
        group[1:] = np.cumsum(q_scores[1:] != q_scores[:-1])
    before = np.searchsorted(-q_scores, -entry_scores, side="left")
    tied = np.flatnonzero(before < np.searchsorted(-q_scores, -entry_scores, side="right"))
    if len(tied):
        keys = group * (n + 1) + q_rows
        before[tied] = np.searchsorted(keys, group[before[tied]] * (n + 1) + entry_rows[tied])
    place = rank + open_before[user_of, before]
    # each open popular row's place: open ones before it plus the user's entries before it
    entries_before = np.bincount(user_of * (depth + 1) + before, minlength=n_users * (depth + 1))
    entries_before = np.cumsum(entries_before.reshape(n_users, depth + 1), axis=1)
    q_place = open_before[:, :depth] + entries_before[:, :depth]
    q_user, q_slot = np.nonzero(~taken & (q_place < k))
    out_rows = np.full((n_users, k), -1, dtype=np.int64)
    out_scores = np.full((n_users, k), -np.inf)
    fits = place < k
    out_rows[user_of[fits], place[fits]] = entry_rows[fits]
    out_scores[user_of[fits], place[fits]] = entry_scores[fits]
    spot = q_place[q_user, q_slot]
    out_rows[q_user, spot] = q_rows[q_slot]
    out_scores[q_user, spot] = q_scores[q_slot]
    return out_rows, out_scores


def _top_k_of_entries(users: np.ndarray, rows: np.ndarray, scores: np.ndarray, n_users: int, k: int
                      ) -> tuple[np.ndarray, np.ndarray]:
    """Each user's ``k`` best ``(row, score)`` entries (distinct rows per user; ``-inf``
    never ranks), score descending, ties to the lower row, as ``(n_users, k)`` arrays.

    Each user's ``k``-th best score comes from one partition of a padded chunk of users
    with about as many entries; only the entries at or above it are sorted.
    """
    out_rows = np.full((n_users, k), -1, dtype=np.int64)
    out_scores = np.full((n_users, k), -np.inf)
    ranked = scores > -np.inf
    if not ranked.all():
        users, rows, scores = users[ranked], rows[ranked], scores[ranked]
    if not len(users):
        return out_rows, out_scores
    if (users[1:] < users[:-1]).any():  # (the sums' entries come grouped by user already)
        order = np.argsort(users, kind="stable")
        users, rows, scores = users[order], rows[order], scores[order]
    counts = np.bincount(users, minlength=n_users)
    starts = np.cumsum(counts) - counts
    cut = np.full(n_users, -np.inf)
    crowded = np.flatnonzero(counts > k)
    if len(crowded):
        # the crowded users' scores padded to their longest, in buckets of users whose
        # counts are within a factor of two (so the padding stays under the entries' number)
        # and chunks of at most _CHUNK_CELLS cells; one partition per chunk
        bucket = np.log2(counts[crowded]).astype(np.int64)
        for b in np.unique(bucket).tolist():
            members = crowded[bucket == b]
            width = int(counts[members].max())
            step = max(1, _CHUNK_CELLS // width)
            for start in range(0, len(members), step):
                part = members[start : start + step]
                sizes = counts[part]
                slot = np.repeat(np.arange(len(part)), sizes)
                at = spans(starts[part], sizes)  # the users' entries
                padded = np.full((len(part), width), -np.inf)
                padded[slot, at - np.repeat(starts[part], sizes)] = scores[at]  # each at its place among its user's
                cut[part] = np.partition(padded, width - k, axis=1)[:, width - k]
    top = scores >= cut[users]
    users, rows, scores = users[top], rows[top], scores[top]
    order = order_by_user_score_row(users, scores, rows)
    users, rows, scores = users[order], rows[order], scores[order]
    counts = np.bincount(users, minlength=n_users)
    place = np.arange(len(users)) - (np.cumsum(counts) - counts)[users]
    fits = place < k
    out_rows[users[fits], place[fits]] = rows[fits]
    out_scores[users[fits], place[fits]] = scores[fits]
    return out_rows, out_scores

