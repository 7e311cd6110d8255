"""Fusing several models' ranked rows into one list per user on arrays (what ``Blend`` does
for a batch): the parts' rows moved into one shared row space (``RowMap``), their scores
scaled and weighted, one top-k per user (``fuse_top_k``)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from online_models._arrays import IdIndex


class RowMap:
    """Rows of other ``IdIndex``es as rows of one shared index, for fusing the lists of
    several models whose indexes number the same items differently.

    The map of each index is extended as the index grows and rebuilt when rows change
    hands (freed, or a freed row reused). Ids of the shared index are never freed.

    >>> shared, a = IdIndex(), IdIndex()
    >>> _ = shared.add("y"), a.add("x"), a.add("y")
    >>> RowMap(shared)(a).tolist(), shared.ids
    ([1, 0], ['y', 'x'])
    """

    def __init__(self, shared: IdIndex) -> None:
        self.shared = shared
        self._maps: dict[int, tuple[IdIndex, tuple[int, int, int], np.ndarray]] = {}

    def __call__(self, index: IdIndex) -> np.ndarray:
        """``map[row]``: the shared row of ``index``'s row (``-1`` for a freed row)."""
        key = (len(index.ids), index.generation, len(index.free))
        held = self._maps.get(id(index))
        if held is not None and held[0] is index and held[1] == key:
            return held[2]
        start = 0
        if held is not None and held[0] is index and held[1][1:] == key[1:]:
            start = len(held[2])  # only new rows since: extend
        add = self.shared.add
        new = np.fromiter((-1 if i is None else add(i) for i in index.ids[start:]), dtype=np.int64,
                          count=len(index.ids) - start)
        mapping = np.concatenate([held[2], new]) if start else new
        self._maps[id(index)] = (index, key, mapping)
        return mapping


def fuse_top_k(
    parts: Sequence[tuple[np.ndarray, np.ndarray, float]], k: int, rank_offset: float | None = None,
    with_sources: bool = False,
) -> tuple[np.ndarray, np.ndarray] | tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Weighted fusion of several top lists per user, then each user's ``k`` best.

    Each part's list is scaled per user: min-max to ``[0, weight]`` (its last item scores
    0, like the items outside it; a list whose scores are all equal scores ``weight``), or
    with ``rank_offset`` ``c``, ``weight * (c + 1) / (c + 1 + rank)``. An item's score is
    the sum over the parts that list it, added in part order. Ties go to the item with
    the better position in any list, then to the one listed first (part by part, in
    list order); parts of weight 0 and empty lists take no part.

    Parameters
    ----------
    parts
        ``(rows, scores, weight)`` per part: ``(n_users, width)`` arrays in one shared row
        space, best first, ``-1`` / ``-inf`` after each list (an item listed twice counts
        twice). A fourth element ``power`` (not ``None``) marks a calibrated part: its
        scores are probabilities, fused as ``weight * score ** power``, not scaled.
    k
        How many items per user.
    rank_offset
        ``None``: min-max scaled scores; a number: reciprocal ranks.
    with_sources
        Also return, per fused item, the part whose scaled score added most to it (the
        first such part on a tie): what explains the item.

    Returns
    -------
    (rows, scores) or (rows, scores, sources)
        ``(n_users, k)`` int64 and float64, ``-1`` / ``-inf`` after a shorter list;
        ``sources``: int64 positions in ``parts``, ``-1`` after a shorter list.

    Examples
    --------
    >>> a = (np.array([[3, 1, 2]]), np.array([[0.9, 0.5, 0.1]]), 1.0)
    >>> b = (np.array([[1, 4, -1]]), np.array([[2.0, 1.0, -np.inf]]), 0.5)
    >>> rows, scores, sources = fuse_top_k([a, b], 3, with_sources=True)
    >>> rows.tolist(), scores.tolist(), sources.tolist()
    ([[3, 1, 4]], [[1.0, 1.0, 0.0]], [[0, 0, 1]])
    """
    used = [(p[0], p[1], float(p[2]), p[3] if len(p) > 3 else None, at) for at, p in enumerate(parts)
            if p[2] != 0 and p[0].shape[1]]
    n_users = parts[0][0].shape[0] if parts else 0
    out_rows = np.full((n_users, max(k, 0)), -1, dtype=np.int64)
    out_scores = np.full((n_users, max(k, 0)), -np.inf)
    out_sources = np.full((n_users, max(k, 0)), -1, dtype=np.int64)
    if not used or k <= 0 or n_users == 0:
        return (out_rows, out_scores, out_sources) if with_sources else (out_rows, out_scores)
    all_rows, all_scaled, all_pos, all_parts = [], [], [], []
    for rows, scores, weight, power, at in used:
        listed = rows >= 0
        width = rows.shape[1]
        pos = np.broadcast_to(np.arange(width), rows.shape)
        if power is not None:  # a calibrated part: its scores as they are, sharpened
            scaled = np.where(listed, weight * np.maximum(np.where(listed, scores, 0.0), 0.0) ** power, 0.0)
        elif rank_offset is not None:
            top = rank_offset + 1
            scaled = np.broadcast_to(weight * top / (top + np.arange(width, dtype=np.float64)), rows.shape)
        else:
            lengths = listed.sum(axis=1)
            high = scores[:, 0]
            low = scores[np.arange(n_users), np.maximum(lengths - 1, 0)]
            with np.errstate(invalid="ignore"):  # empty lists: -inf - -inf, never used
                span = high - low
                spread = span > 0
                scale = np.divide(weight, span, out=np.zeros_like(span), where=spread)
                scaled = np.where(spread[:, None], (scores - low[:, None]) * scale[:, None], weight)
        all_rows.append(rows)
        all_scaled.append(scaled)
        all_pos.append(pos)
        all_parts.append(np.full(width, at))
    rows = np.concatenate(all_rows, axis=1)
    scaled = np.concatenate(all_scaled, axis=1)
    pos = np.concatenate(all_pos, axis=1)
    width = rows.shape[1]
    unlisted = int(rows.max(initial=0)) + 1  # unlisted slots sort last
    rows = np.where(rows >= 0, rows, unlisted)
    # group each user's entries by item, an item's entries in column (part) order: the
    # keys (item, column) are distinct, so a plain sort orders them as a stable one would
    order = np.argsort(rows * width + np.arange(width), axis=1)
    rows = np.take_along_axis(rows, order, 1).ravel()
    scaled = np.take_along_axis(scaled, order, 1).ravel()
    pos = np.take_along_axis(pos, order, 1).ravel()
    first_col = order.ravel()  # where each entry was listed: the tie-break of last resort
    starts = np.ones(len(rows), dtype=bool)
    starts[1:] = rows[1:] != rows[:-1]
    starts[::width] = True
    leader = np.maximum.accumulate(np.where(starts, np.arange(len(rows)), 0))
    rank = np.arange(len(rows)) - leader  # 0 for an item's first part, 1 for its second...
    total = np.zeros(len(rows))
    best_pos = pos.copy()
    if with_sources:  # per item: the largest scaled score so far and its part, the first part on a tie
        source = np.take_along_axis(np.broadcast_to(np.concatenate(all_parts), order.shape), order, 1).ravel()
        largest = scaled.copy()
    total[starts] += scaled[starts]
    later = np.flatnonzero(~starts)  # an item's second part's entry, its third...
    for r in range(1, int(rank.max()) + 1):  # summed in part order, as one would by hand
        at = later[rank[later] == r]
        lead = leader[at]  # distinct: one entry of each item per rank
        total[lead] += scaled[at]
        best_pos[lead] = np.minimum(best_pos[lead], pos[at])
        if with_sources:
            gains = scaled[at] > largest[lead]
            largest[lead[gains]] = scaled[at[gains]]
            source[lead[gains]] = source[at[gains]]
    keep = starts & (rows != unlisted)
    fused = np.where(keep, total, -np.inf).reshape(n_users, width)
    ranked = _rank_fused(fused, best_pos.reshape(n_users, width), np.where(keep, first_col, width).reshape(n_users, width),
                         k)
    got_scores = np.take_along_axis(fused, ranked, 1)
    got_rows = np.take_along_axis(rows.reshape(n_users, width), ranked, 1)
    valid = got_scores > -np.inf
    m = ranked.shape[1]
    out_rows[:, :m] = np.where(valid, got_rows, -1)
    out_scores[:, :m] = np.where(valid, got_scores, -np.inf)
    if with_sources:
        out_sources[:, :m] = np.where(valid, np.take_along_axis(source.reshape(n_users, width), ranked, 1), -1)
        return out_rows, out_scores, out_sources
    return out_rows, out_scores


def _rank_fused(fused: np.ndarray, best_pos: np.ndarray, first_col: np.ndarray, k: int) -> np.ndarray:
    """Per row, the columns of the ``k`` best cells: score descending, then better
    position, then first listed (``first_col`` distinct among a row's rankable cells).

    ``np.lexsort`` of the three keys, in two plain sorts: the scores, then, within the
    scores' order and down to each row's ``k``-th score, one integer key of each cell's
    rank among the distinct scores, its position and its column. Cells scoring ``-inf``
    never rank (their order is the caller's to ignore).
    """
    by_score = np.argsort(-fused, axis=1)
    ordered = np.take_along_axis(fused, by_score, 1)
    if 0 < k < ordered.shape[1]:  # only the cells down to each row's k-th score (and ties with it) can rank
        kth = ordered[:, k - 1 : k]
        depth = max(k, int(((ordered >= kth) & (ordered > -np.inf)).sum(axis=1).max(initial=0)))
        by_score, ordered = by_score[:, :depth], ordered[:, :depth]
    differs = np.ones(ordered.shape, dtype=bool)
    differs[:, 1:] = ordered[:, 1:] != ordered[:, :-1]
    score_rank = np.cumsum(differs, axis=1, dtype=np.int64)
    span = int(first_col.max(initial=0)) + 1
    positions = int(best_pos.max(initial=0)) + 1
    key = (score_rank * positions + np.take_along_axis(best_pos, by_score, 1)) * span + np.take_along_axis(
        first_col, by_score, 1)
    return np.take_along_axis(by_score, np.argsort(key, axis=1)[:, :k], 1)
