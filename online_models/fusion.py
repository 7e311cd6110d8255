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
    widths = [rows.shape[1] for rows, *_ in used]
    width = sum(widths)
    rows = np.empty((n_users, width), dtype=np.int64)
    scaled = np.empty((n_users, width))
    start = 0
    for (part_rows, scores, weight, power, _), part_width in zip(used, widths):
        rows[:, start : start + part_width] = part_rows
        scale_into(scaled[:, start : start + part_width], part_rows, scores, weight, power, rank_offset)
        start += part_width
    pos_of_col = np.concatenate([np.arange(w) for w in widths])
    part_of_col = np.repeat([at for *_, at in used], widths)
    # Each entry's key is its item, then its column: sorted (a plain sort of integers, no
    # argsort), each user's entries of one item come together in column (part) order. An
    # unlisted slot is an item of its own, after every listed one.
    unlisted = int(rows.max(initial=0)) + 1
    shift = max(width - 1, 1).bit_length()
    # int32 keys where they fit: half the memory to sort and to split
    key_type = np.int32 if (unlisted + width) << shift < 2**31 else np.int64
    cols = np.arange(width, dtype=key_type)
    key = np.where(rows >= 0, rows.astype(key_type), unlisted + cols)
    key <<= shift
    key |= cols
    key.sort(axis=1)
    item = key >> shift
    col = key & ((1 << shift) - 1)
    base = (np.arange(n_users) * width)[:, None]
    entry = np.take(scaled, col + base)
    # runs[r - 1]: the entry's item is the one r entries on (the same row); items sorted, so
    # it is when each of the r pairs between is
    same = np.zeros((n_users, width), dtype=bool)
    np.equal(item[:, 1:], item[:, :-1], out=same[:, :-1])
    runs = []
    run = same
    while run.any():
        runs.append(run)
        r = len(runs) + 1
        run = np.zeros_like(same)
        np.logical_and(runs[-1][:, : width - r], same[:, r - 1 : width - 1], out=run[:, : width - r])
    # an item's entries r apart (r = 1, 2, ...): the later one's score added to the first
    # one's total, in column order, as one would by hand
    total = entry + 0.0
    for r, run in enumerate(runs, 1):
        total[:, :-r] += np.where(run[:, :-r], entry[:, r:], 0.0)
    first = item < unlisted
    first[:, 1:] &= ~same[:, :-1]  # an item's first entry holds its total
    fused = np.where(first, total, -np.inf)
    np.fmax(fused, -np.inf, out=fused)  # a NaN sum (an infinite score scaled) is no candidate
    cells = _cells_that_can_rank(fused, k)
    at = np.minimum(cells, width - 1) + base  # flat positions of those cells
    last = n_users * width - 1
    item_at, first_col = np.take(item, at), np.take(col, at)  # where each item was first listed
    best_pos = pos_of_col[first_col]
    for r, run in enumerate(runs, 1):  # the item's better position in any list
        further = np.minimum(at + r, last)
        more = np.take(run, at)  # False past the row's end
        np.minimum(best_pos, np.where(more, pos_of_col[np.take(col, further)], width), out=best_pos)
    values = np.where(cells < width, np.take(fused, at), -np.inf)
    order = _rank_cells(values, best_pos, first_col, k)
    got_scores = np.take_along_axis(values, order, 1)
    valid = got_scores > -np.inf
    m = order.shape[1]
    out_rows[:, :m] = np.where(valid, np.take_along_axis(item_at, order, 1), -1)
    out_scores[:, :m] = np.where(valid, got_scores, -np.inf)
    if not with_sources:
        return out_rows, out_scores
    # per fused item, the part whose scaled score added most, the first such part on a tie
    chosen = np.take_along_axis(at, order, 1)
    source = part_of_col[np.take(col, chosen)]
    largest = np.take(entry, chosen)
    for r, run in enumerate(runs, 1):
        further = np.minimum(chosen + r, last)
        value = np.take(entry, further)
        gains = np.take(run, chosen) & (value > largest)
        largest = np.where(gains, value, largest)
        source = np.where(gains, part_of_col[np.take(col, further)], source)
    out_sources[:, :m] = np.where(valid, source, -1)
    return out_rows, out_scores, out_sources


def scale_into(out: np.ndarray, rows: np.ndarray, scores: np.ndarray, weight: float | np.ndarray,
               power: float | None, rank_offset: float | None) -> None:
    """A part's scaled and weighted scores (what each of its listed cells adds to the
    fusion) written into ``out``; what unlisted cells get is never read. ``weight``: one
    for all users, or one per user (``bench.blend_replay`` replays changing weights)."""
    n_users, width = rows.shape
    per_user = np.asarray(weight, dtype=np.float64)[..., None]  # (1,) or (n_users, 1)
    if power is not None:  # a calibrated part: its scores as they are, sharpened
        np.maximum(scores, 0.0, out=out)  # an unlisted cell's -inf becomes 0
        out **= power
        out *= per_user
    elif rank_offset is not None:
        top = rank_offset + 1
        out[:] = per_user * top / (top + np.arange(width, dtype=np.float64))
    else:
        lengths = (rows >= 0).sum(axis=1)
        high = scores[:, 0]
        low = scores[np.arange(n_users), np.maximum(lengths - 1, 0)]
        with np.errstate(invalid="ignore"):  # empty lists: -inf - -inf, never used
            span = high - low
            spread = span > 0
            scale = np.divide(weight, span, out=np.zeros_like(span), where=spread)
            np.subtract(scores, low[:, None], out=out)
            out *= scale[:, None]
        out[~spread] = np.broadcast_to(per_user, (n_users, 1))[~spread]  # a list whose scores are all equal


def _cells_that_can_rank(fused: np.ndarray, k: int) -> np.ndarray:
    """Per row, the columns (ascending) of the rankable cells (not ``-inf``) that score at
    least the row's ``k``-th best score, padded with ``width``: one partition per row, so
    that only these few are ordered."""
    n_users, width = fused.shape
    if k < width:
        kth = np.partition(fused, width - k, axis=1)[:, width - k : width - k + 1]
        can = (fused >= kth) & (fused > -np.inf)
    else:
        can = fused > -np.inf
    counts = can.sum(axis=1)
    flat = np.flatnonzero(can)
    users = flat // width
    place = np.arange(len(flat)) - np.repeat(np.cumsum(counts) - counts, counts)
    cells = np.full((n_users, int(counts.max(initial=0))), width, dtype=np.int64)
    cells[users, place] = flat - users * width
    return cells


def _rank_cells(values: np.ndarray, best_pos: np.ndarray, first_col: np.ndarray, k: int) -> np.ndarray:
    """Per row, the columns of the ``k`` best cells: score descending, then better
    position, then first listed (``first_col`` distinct among a row's rankable cells).
    Cells scoring ``-inf`` rank last (their order is the caller's to ignore).

    ``np.lexsort`` of the three keys, in two plain sorts: the scores, then one integer key
    of each cell's rank among the row's distinct scores, its position and its column.
    """
    by_score = np.argsort(-values, axis=1)
    ordered = np.take_along_axis(values, by_score, 1)
    differs = np.ones(ordered.shape, dtype=bool)
    differs[:, 1:] = ordered[:, 1:] != ordered[:, :-1]
    score_rank = np.cumsum(differs, axis=1, dtype=np.int64)
    span = int(first_col.max(initial=0)) + 1
    positions = int(best_pos.max(initial=0)) + 1
    key = (score_rank * positions + np.take_along_axis(best_pos, by_score, 1)) * span + np.take_along_axis(
        first_col, by_score, 1)
    return np.take_along_axis(by_score, np.argsort(key, axis=1)[:, :k], 1)


class CandidateFusion:
    """One part's list as every user's candidates, the other parts only reordering them:
    the parts' scaled scores (``scale_into``) looked up for each candidate on dense
    ``(n_users, width)`` arrays, then fused and ordered as ``fuse_top_k`` orders (sums in
    part order; ties to the better position in any list, then to the first listed).

    The lead's weight is given per ``top`` call, so that fusions under several weights of
    the lead share every lookup (``Blend``'s ``weight_choices``).

    Parameters
    ----------
    parts
        ``(rows, scores, weight[, power])`` per part, as ``fuse_top_k`` takes them (an item a
        part lists twice counts once here, at its first place).
    lead
        The position in ``parts`` of the part whose listed items are the candidates.
    rank_offset
        ``None``: min-max scaled scores; a number: reciprocal ranks.

    Examples
    --------
    >>> cooc = (np.array([[7, 2, 1]]), np.array([[1.0, 0.9, 0.8]]), 1.0)
    >>> sequence = (np.array([[1, 2]]), np.array([[0.5, 0.4]]), 1.0, 2.0)  # calibrated: squared
    >>> fusion = CandidateFusion([cooc, sequence], lead=1)
    >>> rows, scores, sources = fusion.top(3, lead_weight=1.0)
    >>> rows.tolist(), np.round(scores, 2).tolist(), sources.tolist()  # 7 is no candidate
    ([[2, 1, -1]], [[0.66, 0.25, -inf]], [[0, 1, -1]])
    >>> fusion.top(2, lead_weight=10.0)[0].tolist()  # the lead weighs more: 1 (2.5) leads 2 (.5 + 1.6)
    [[1, 2]]
    """

    def __init__(self, parts: Sequence[tuple], lead: int, rank_offset: float | None = None) -> None:
        self.rank_offset = rank_offset
        lead_rows = parts[lead][0]
        n_users, width = lead_rows.shape
        self.rows = lead_rows
        self.listed = lead_rows >= 0
        self._lead = (lead, parts[lead][1], parts[lead][3] if len(parts[lead]) > 3 else None)
        # what each other part adds to each candidate (0 where it does not list it), and the
        # parts before the lead summed once, those after it too (in part order, as
        # fuse_top_k adds)
        self._before = np.zeros((n_users, width))
        self._after: list[np.ndarray] = []
        self._others: list[tuple[int, np.ndarray]] = []  # (part, what it adds; -inf: not listed)
        # the tie-breaks of each candidate: its better position in any list, and the first
        # listed (its column in all parts' lists; the lead's, unless a part before it lists it)
        self._best_pos = np.empty((n_users, width), dtype=np.uint32)
        self._best_pos[:] = np.arange(width, dtype=np.uint32)
        lead_offset = sum(p[0].shape[1] for p in parts[:lead])
        columns = sum(p[0].shape[1] for p in parts)
        self._first_col = np.empty((n_users, width), dtype=np.int16 if columns < 2**15 else np.int64)
        self._first_col[:] = np.arange(lead_offset, lead_offset + width)
        looked_up = [at for at, part in enumerate(parts) if at != lead and part[2] != 0 and part[0].shape[1] and n_users]
        places = dict(zip(looked_up, _positions_of(lead_rows, [parts[at][0] for at in looked_up]) if looked_up else []))
        offsets = np.cumsum([0] + [part[0].shape[1] for part in parts])
        for at in looked_up:
            rows, scores, weight = parts[at][0], parts[at][1], parts[at][2]
            power = parts[at][3] if len(parts[at]) > 3 else None
            other = rows.shape[1]
            scaled = np.empty((n_users, other + 1))  # column 0: what a candidate it does not list gets
            scale_into(scaled[:, 1:], rows, scores, weight, power, rank_offset)
            pos = places[at]
            cells = pos + (np.arange(n_users) * (other + 1) + 1)[:, None]  # flat: np.take
            scaled[:, 0] = -np.inf  # to be the part that adds most, a part must list the candidate
            listed_values = np.take(scaled, cells)
            scaled[:, 0] = 0.0  # to the sums, it adds nothing
            values = np.take(scaled, cells)
            if at < lead:
                self._before += values
            else:
                self._after.append(values)
            self._others.append((at, listed_values))
            # -1 (not there) as unsigned: past every place
            np.minimum(self._best_pos, pos.view(np.uint16) if pos.dtype == np.int16 else pos.astype(np.uint32),
                       out=self._best_pos)
        for at in reversed([at for at in looked_up if at < lead]):  # the last written: the first part listing it
            first = places[at] + self._first_col.dtype.type(offsets[at])
            np.copyto(self._first_col, first, where=places[at] >= 0)
        self._columns = int(offsets[-1])
        self._unlisted = ~self.listed
        # a calibrated lead's scores sharpened once: each weight only multiplies them
        self._sharpened: np.ndarray | None = None
        # each row's candidates in tie-break order and their ranks in it (made on the first
        # ``top``): every factor's ``top`` sorts by them
        self._tie_order: np.ndarray | None = None

    def _ties(self) -> tuple[np.ndarray, np.ndarray, int]:
        """Per row, the flat cells of its candidates by better position, then first listed
        (distinct among listed candidates; the unlisted, whose order does not matter, last),
        each cell's rank in that order, and the bits that rank takes (made once: every
        factor's ``top`` reads them)."""
        if self._tie_order is None:
            n_users, width = self.rows.shape
            bits = max(width - 1, 1).bit_length()
            key = self._best_pos.astype(np.int64)
            key *= self._columns + 1
            key += self._first_col
            key <<= bits
            key |= np.arange(width)
            key.sort(axis=1)  # a plain sort of integers, no argsort
            key &= (1 << bits) - 1  # each row's columns in tie-break order
            key += np.arange(n_users)[:, None] * width  # flat cells
            rank = np.empty((n_users, width), dtype=np.int64)
            np.put(rank, key, np.arange(width))  # the values repeat: each row's ranks
            self._tie_order, self._tie_rank, self._tie_bits = key, rank, bits
        return self._tie_order, self._tie_rank, self._tie_bits

    def _order(self, total: np.ndarray, k: int) -> np.ndarray:
        """The flat cells of each row's ``k`` best: score descending, ties to the better
        position, then to the first listed (as ``_rank_cells`` ranks).

        One plain sort of integer keys: a score's bits (ordered as the floats are for the
        scores that are not negative, then ``-inf``; a sum here is never ``-0.0``) with their
        lowest bits (a bucket of scores a hair apart) replaced by the cell's rank in
        tie-break order. Where scores that differ share a bucket they may come out of order,
        and negative scores do: a row is checked on its first ``k + 1`` cells, and on all of
        them where the ``k``-th and the next share a bucket (which then goes on past them);
        the rows out of order are sorted again exactly, stable in tie-break order."""
        n_users, width = total.shape
        if k <= 0 or not width:
            return np.zeros((n_users, 0), dtype=np.int64)
        tie_order, tie_rank, bits = self._ties()
        mask = (1 << bits) - 1
        key = np.invert(total.view(np.int64))  # ascending keys: scores descending, -inf last
        key &= ~mask
        key |= tie_rank
        key.sort(axis=1)
        m = min(k + 1, width)
        base = np.arange(n_users)[:, None] * width
        cells = np.take(tie_order, (key[:, :m] & mask) + base)
        ranked = np.take(total, cells)
        wrong = (ranked[:, 1:] > ranked[:, :-1]).any(axis=1)
        if m < width:  # the k-th's bucket goes on: its cells past the first m may score more
            goes_on = np.flatnonzero((key[:, m - 1] >> bits == key[:, m - 2] >> bits) & ~wrong)
            if len(goes_on):
                every = np.take(total, np.take(tie_order, (key[goes_on] & mask) + base[goes_on]))
                wrong[goes_on] = (every[:, 1:] > every[:, :-1]).any(axis=1)
        if wrong.any():
            descending = -np.take(total, tie_order[wrong])
            by_score = np.argsort(descending, axis=1, kind="stable")
            cells[wrong] = np.take_along_axis(tie_order[wrong], by_score[:, :m], 1)
        return cells[:, :k]

    def top(self, k: int, lead_weight: float, with_sources: bool = True):
        """Each user's ``k`` best candidates with ``lead_weight`` on the lead: ``(rows,
        scores, sources)`` as ``fuse_top_k`` returns them (``-1`` / ``-inf`` after a
        shorter list; ``sources``: the part that added most to each item, the first on a tie)."""
        n_users, width = self.rows.shape
        k = max(k, 0)
        lead, scores, power = self._lead
        if power is not None:  # scale_into's steps, the power taken once for every weight
            if self._sharpened is None:
                self._sharpened = np.maximum(scores, 0.0)
                self._sharpened **= power
            lead_adds = self._sharpened * np.asarray(lead_weight, dtype=np.float64)[..., None]
        else:
            lead_adds = np.empty(self.rows.shape)
            scale_into(lead_adds, self.rows, scores, lead_weight, power, self.rank_offset)
        total = self._before + lead_adds  # an unlisted cell's sum is never read: -inf below
        for values in self._after:
            total += values
        np.copyto(total, -np.inf, where=self._unlisted)
        np.fmax(total, -np.inf, out=total)  # NaN (an infinite score scaled) is no candidate, as in fuse_top_k
        at = self._order(total, k)
        fused = np.take(total, at)
        valid = fused > -np.inf
        m = at.shape[1]
        out_rows = np.full((n_users, k), -1, dtype=np.int64)
        out_scores = np.full((n_users, k), -np.inf)
        out_rows[:, :m] = np.where(valid, np.take(self.rows, at), -1)
        out_scores[:, :m] = np.where(valid, fused, -np.inf)
        if not with_sources:
            return out_rows, out_scores
        # the lead, or the other part that adds most (the first in part order on a tie); in
        # arithmetic rather than masked writes, which cost more on masks this mixed
        other = np.full(at.shape, -np.inf)
        other_at = np.full(at.shape, -1)
        for part, values in self._others:
            value = np.take(values, at)
            gains = value > other
            np.maximum(other, value, out=other)
            other_at += (part - other_at) * gains
        mine = np.take(lead_adds, at)
        leads = (other_at < 0) | (mine > other) | ((mine == other) & (other_at > lead))
        other_at += (lead - other_at) * leads
        other_at += 1
        other_at *= valid
        other_at -= 1
        out_sources = np.full((n_users, k), -1, dtype=np.int64)
        out_sources[:, :m] = other_at
        return out_rows, out_scores, out_sources


def _positions_of(wanted: np.ndarray, lists: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Per user, where each of ``wanted``'s listed rows stands in each of ``lists`` (its
    first place; ``-1`` where it is not there, and for ``wanted``'s unlisted slots): each
    list written in a table of places, or sorted with ``wanted`` per user where the
    catalogue is too large for the table.

    >>> [pos.tolist() for pos in _positions_of(np.array([[4, 9, -1]]), [np.array([[9, 4, 4, -1]]),
    ...                                                                 np.array([[7, 9]])])]
    [[[1, 0, -1]], [[-1, 1, -1]]]
    """
    n_items = int(max([wanted.max(initial=-1)] + [rows.max(initial=-1) for rows in lists])) + 1
    stride = n_items + 1
    if _TABLE_CELLS // stride < 64 or any(rows.shape[1] >= 2**15 for rows in lists):
        return [_positions_by_sorting(wanted, rows) for rows in lists]
    block = min(max(_TABLE_BLOCK_CELLS // stride, 64), len(wanted))
    table = np.full(block * stride, -1, dtype=np.int16)
    found, stamp = [], 0
    for rows in lists:
        pos, stamp = _positions_in(wanted, rows, table, n_items, stamp)
        found.append(pos)
    return found


# The most cells of the table ``_positions_in`` writes places in (int16: 8 MiB): a
# catalogue too large for 64 users' rows of it is looked up by sorting instead; and the
# cells it takes when the catalogue allows (int16: 1 MiB, so that its random writes and
# reads stay in cache).
_TABLE_CELLS = 1 << 22
_TABLE_BLOCK_CELLS = 1 << 19


def _positions_in(wanted: np.ndarray, rows: np.ndarray, table: np.ndarray, n_items: int, stamp: int = 0
                  ) -> tuple[np.ndarray, int]:
    """``_positions_of`` one list (shorter than ``2**15``): each place written in ``table``
    (flat; per user one slot for the unlisted then ``n_items`` (at least the items listed))
    a block of users at a time, and read back at the wanted items. Each block's places are
    written plus ``stamp`` (its first place), which grows from block to block, so that what
    earlier blocks wrote (less) reads as no place, without clearing it: the table is
    cleared only when the stamps would overflow. Returns the places and the next stamp."""
    n_users, width = wanted.shape
    other = rows.shape[1]
    stride = n_items + 1
    block = len(table) // stride
    places = np.arange(other, dtype=np.int16)[::-1]  # written last to first: an item's first place stays
    pos = np.empty((n_users, width), dtype=np.int16)
    for start in range(0, n_users, block):
        end = min(start + block, n_users)
        if stamp + other >= 2**15:
            table.fill(-1)
            stamp = 0
        base = np.arange(end - start)[:, None] * stride + 1  # an item's cell; -1: the user's unlisted slot
        table[rows[start:end, ::-1] + base] = places + np.int16(stamp)
        table[base - 1] = -1  # an unlisted slot of ``wanted`` is in no list
        read = table[wanted[start:end] + base]
        read -= np.int16(stamp)
        np.maximum(read, -1, out=pos[start:end])
        stamp += other
    return pos, stamp


def _positions_by_sorting(wanted: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """``_positions_in`` by one sort of each user's two lists.

    >>> _positions_by_sorting(np.array([[4, 9, -1]]), np.array([[9, 4, 4, -1]])).tolist()
    [[1, 0, -1]]
    """
    n_users, width = wanted.shape
    other = rows.shape[1]
    both = other + width
    shift = max(both - 1, 1).bit_length()
    unlisted = int(max(rows.max(initial=0), wanted.max(initial=0))) + 1  # then one item per unlisted slot
    key_type = np.int32 if (unlisted + both) << shift < 2**31 else np.int64
    # each key: the item, then its slot: ``rows``' places reversed (an item's first place
    # sorts last among them, just before the wanted slot of the same item), then ``wanted``'s
    slot = np.arange(both, dtype=key_type)
    slot[:other] = slot[:other][::-1]
    key = np.empty((n_users, both), dtype=key_type)
    key[:, :other] = np.where(rows >= 0, rows, unlisted + np.arange(other))
    key[:, other:] = np.where(wanted >= 0, wanted, unlisted + np.arange(other, both))
    key <<= shift
    key |= slot
    key.sort(axis=1)
    item, slot = key >> shift, key & ((1 << shift) - 1)
    user, at = np.nonzero((item[:, 1:] == item[:, :-1]) & (slot[:, 1:] >= other) & (slot[:, :-1] < other))
    column = slot[user, at + 1] - other
    pos = np.full((n_users, width), -1, dtype=np.int64)
    pos[user, column] = other - 1 - slot[user, at]
    return pos
