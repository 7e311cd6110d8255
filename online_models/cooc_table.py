"""``Cooc``'s sparse co-occurrence rows in flat arrays, so that a micro-batch's pair
updates are a few numpy calls instead of two dict updates per pair."""

from __future__ import annotations

from itertools import repeat

import numpy as np

from online_models._arrays import grow, spans

_KEY = 1 << 32  # a (row, neighbour) pair's key is row * _KEY + neighbour
_FEW = 48  # fewer increments than this are added one by one (numpy's calls cost more)


class NeighbourTable:
    """Each item row's neighbour rows and weights, in insertion order, as segments of two
    flat arrays (an ``arena``); a dict maps each ``(row, neighbour)`` pair to its position.

    A row's segment has room to grow; when it is full the segment moves to the arena's end
    with twice the room (the arena is compacted once more than half of it is left behind).
    ``add_many`` applies ordered weight increments exactly as one ``add`` after the other
    would: new neighbours are appended in the order they first appear, and each weight sums
    its increments in their order (``np.add.at``). ``strongest`` keeps the positions of a
    row's heaviest neighbours, refreshed after the row changed by a tenth (``stale``).

    >>> table = NeighbourTable()
    >>> table.add_many(np.array([3, 1, 3]), np.array([1, 3, 2]), np.array([0.5, 0.5, 2.0]))
    >>> table.add_many(np.array([3]), np.array([1]), np.array([1.0]))
    >>> [a.tolist() for a in table.row(3)], table.row(0)[0].tolist()
    ([[1, 2], [1.5, 2.0]], [])
    >>> table.discard(3, 1); [a.tolist() for a in table.row(3)]
    [[2], [2.0]]
    """

    def __init__(self) -> None:
        self.start = np.zeros(0, dtype=np.int64)  # per row: where its segment begins in the arena
        self.length = np.zeros(0, dtype=np.int64)  # neighbours held
        self.room = np.zeros(0, dtype=np.int64)  # the segment's capacity
        self.stale = np.zeros(0, dtype=np.int64)  # updates since ``strongest`` last looked
        self.cols = np.zeros(0, dtype=np.int64)  # the arena: neighbour rows
        self.weights = np.zeros(0, dtype=np.float64)  # the arena: weights
        self.used = 0  # the arena's end
        self.live_room = 0  # room held by the rows' current segments
        # row * _KEY + neighbour -> position in the row's segment; None: not kept (``append``
        # is then told which links are new, and a removal searches the row)
        self.slot: dict[int, int] | None = {}
        self.top: dict[int, np.ndarray] = {}  # row -> positions of its heaviest neighbours
        self.n = 0  # rows (the per-row arrays have spare room)

    def __len__(self) -> int:
        return self.n

    def ensure(self, n: int) -> None:
        """Room for rows ``0 .. n-1`` (new rows empty)."""
        self.start, self.length, self.room, self.stale = (
            grow(a, n) for a in (self.start, self.length, self.room, self.stale))
        self.n = max(self.n, n)

    def row(self, x: int) -> tuple[np.ndarray, np.ndarray]:
        """Views of row ``x``'s neighbour rows and weights (valid until the next change)."""
        s, m = (int(self.start[x]), int(self.length[x])) if x < self.n else (0, 0)
        return self.cols[s : s + m], self.weights[s : s + m]

    def links(self, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Every link of rows ``0 .. n-1`` as ``(row, neighbour, weight)``, row by row, each
        row's in insertion order."""
        lengths = self.length[:n]
        at = spans(self.start[:n], lengths)
        return np.repeat(np.arange(n), lengths), self.cols[at], self.weights[at]

    def add_many(self, rows: np.ndarray, cols: np.ndarray, weights: np.ndarray) -> None:
        """Add ``weights[i]`` to the link ``rows[i] -> cols[i]``, one increment after the other."""
        if not len(rows):
            return
        self.ensure(int(rows.max()) + 1)
        if len(rows) < _FEW:
            self._add_few(rows.tolist(), cols.tolist(), weights.tolist())
            return
        keys = rows * _KEY + cols
        at = np.fromiter(map(self.slot.get, keys.tolist(), repeat(-1)), dtype=np.int64, count=len(keys))
        new = at < 0
        if new.any():
            at[new] = self._append(keys[new])
        np.add.at(self.weights, self.start[rows] + at, weights)
        self.stale += np.bincount(rows, minlength=len(self.stale))

    def _add_few(self, rows: list[int], cols: list[int], weights: list[float]) -> None:
        """``add_many`` one increment after the other, in Python."""
        slot, start, length = self.slot, self.start, self.length
        for x, col, weight in zip(rows, cols, weights):
            key = x * _KEY + col
            i = slot.get(key)
            if i is None:
                i = slot[key] = int(length[x])
                if i == self.room[x]:
                    self._make_room(np.array([x]), np.array([i + 1]))
                self.cols[start[x] + i] = col
                self.weights[start[x] + i] = weight
                length[x] = i + 1
            else:
                self.weights[start[x] + i] += weight
            self.stale[x] += 1

    def append(self, rows: np.ndarray, cols: np.ndarray) -> None:
        """Add the links ``rows[i] -> cols[i]``, none of them held yet (repeats allowed), with
        weight 0, in their first order."""
        if len(rows):
            self.ensure(int(rows.max()) + 1)
            self._append(rows * _KEY + cols)

    def _append(self, keys: np.ndarray) -> np.ndarray:
        """Append the new links ``keys`` (repeats allowed) in their first order; their positions."""
        distinct, first, back = np.unique(keys, return_index=True, return_inverse=True)
        order = np.argsort(first, kind="stable")
        fresh = distinct[order]  # first order
        rows, cols = np.divmod(fresh, _KEY)
        by_row = np.argsort(rows, kind="stable")
        counts = np.bincount(rows, minlength=len(self.length))
        grouped = rows[by_row]
        rank = np.arange(len(fresh)) - (np.cumsum(counts) - counts)[grouped]
        positions = np.empty(len(fresh), dtype=np.int64)
        positions[by_row] = self.length[grouped] + rank
        touched = np.flatnonzero(counts)
        self._make_room(touched, self.length[touched] + counts[touched])
        self.cols[self.start[rows] + positions] = cols
        self.weights[self.start[rows] + positions] = 0.0
        self.length[touched] += counts[touched]
        if self.slot is not None:
            self.slot.update(zip(fresh.tolist(), positions.tolist()))
        at_fresh = np.empty(len(fresh), dtype=np.int64)
        at_fresh[order] = positions
        return at_fresh[back.reshape(-1)]

    def _make_room(self, rows: np.ndarray, needed: np.ndarray) -> None:
        """Move the segments of ``rows`` that cannot hold ``needed`` to the arena's end, with
        twice the room (at least ``needed``)."""
        short = needed > self.room[rows]
        if not short.any():
            return
        rows, needed = rows[short], needed[short]
        room = np.maximum(np.maximum(needed, 2 * self.room[rows]), 4)
        if self.used + int(room.sum()) > len(self.cols):
            garbage = self.used - self.live_room
            if garbage > self.live_room:
                self._compact()
            if self.used + int(room.sum()) > len(self.cols):
                need = max(self.used + int(room.sum()), 1024)  # grow doubles past it where that is more
                self.cols, self.weights = grow(self.cols, need), grow(self.weights, need)
        starts = self.used + np.cumsum(room) - room
        held = self.length[rows]
        src = spans(self.start[rows], held)
        dst = spans(starts, held)
        self.cols[dst] = self.cols[src]
        self.weights[dst] = self.weights[src]
        self.live_room += int(room.sum() - self.room[rows].sum())
        self.start[rows], self.room[rows] = starts, room
        self.used += int(room.sum())

    def _compact(self) -> None:
        """Segments packed one after the other, each keeping its room."""
        rows = np.flatnonzero(self.room)
        starts = np.cumsum(self.room[rows]) - self.room[rows]
        src, dst = spans(self.start[rows], self.length[rows]), spans(starts, self.length[rows])
        cols, weights = np.zeros_like(self.cols), np.zeros_like(self.weights)
        cols[dst], weights[dst] = self.cols[src], self.weights[src]
        self.cols, self.weights, self.start[rows] = cols, weights, starts
        self.used = self.live_room = int(self.room.sum())

    def discard(self, x: int, col: int) -> None:
        """Remove the link ``x -> col``: the row's last link takes its place (as ``WeightedRow``)."""
        if self.slot is not None:
            i = self.slot.pop(x * _KEY + col, None)
        else:
            found = np.flatnonzero(self.row(x)[0] == col)
            i = int(found[0]) if len(found) else None
        if i is None:
            return
        s, last = int(self.start[x]), int(self.length[x]) - 1
        if i < last:
            moved = int(self.cols[s + last])
            self.cols[s + i], self.weights[s + i] = moved, self.weights[s + last]
            if self.slot is not None:
                self.slot[x * _KEY + moved] = i
        self.length[x] = last
        self.top.pop(x, None)

    def clear(self, x: int) -> None:
        """Row ``x`` without links (its segment's room stays)."""
        if x >= self.n:
            return
        for col in self.row(x)[0].tolist() if self.slot is not None else ():
            del self.slot[x * _KEY + col]
        self.length[x] = self.stale[x] = 0
        self.top.pop(x, None)

    def strongest(self, x: int, m: int) -> np.ndarray:
        """Positions (ascending) of (about) the ``m`` heaviest links of row ``x``, which holds
        more than ``m``; recomputed once the row changed by a tenth since."""
        top = self.top.get(x)
        length = int(self.length[x])
        if top is None or len(top) != m or self.stale[x] > max(length // 10, 16):
            weights = self.row(x)[1]
            top = self.top[x] = np.sort(np.argpartition(weights, length - m)[length - m :])
            self.stale[x] = 0
        return top

    @classmethod
    def of_segments(cls, lengths: np.ndarray, cols: np.ndarray, weights: np.ndarray,
                    stale: np.ndarray | None = None, top: dict[int, np.ndarray] | None = None,
                    keyed: bool = True) -> NeighbourTable:
        """A table of the rows' links one row after the other: row ``x`` holds ``lengths[x]``
        of ``cols`` and ``weights``, in that order (``keyed``: with the pair dict)."""
        table, n = cls(), len(lengths)
        table.ensure(n)
        table.length[:n] = table.room[:n] = lengths
        table.start[:n] = np.cumsum(lengths) - lengths
        if stale is not None:
            table.stale[:n] = stale
        table.used = table.live_room = int(np.sum(lengths))
        table.cols, table.weights = cols.astype(np.int64), weights.astype(np.float64)
        table.top = top or {}
        if keyed:
            table._index()
        else:
            table.slot = None
        return table

    @classmethod
    def of_dense(cls, dense: np.ndarray, keyed: bool = True) -> NeighbourTable:
        """A table of a square matrix's nonzero cells, each row's in column order."""
        rows, cols = np.nonzero(dense)
        return cls.of_segments(np.bincount(rows, minlength=len(dense)), cols, dense[rows, cols], keyed=keyed)

    def _index(self) -> None:
        """The pair -> position dict, derived from the segments."""
        rows = np.flatnonzero(self.length[: self.n])
        at = spans(self.start[rows], self.length[rows])
        owner = np.repeat(rows, self.length[rows])
        positions = at - np.repeat(self.start[rows], self.length[rows])
        self.slot = dict(zip((owner * _KEY + self.cols[at]).tolist(), positions.tolist()))

    def __getstate__(self):
        n = self.n
        at = spans(self.start[:n], self.length[:n])
        return {"length": self.length[:n].copy(), "stale": self.stale[:n].copy(),
                "cols": self.cols[at].astype(np.int32), "weights": self.weights[at], "top": self.top,
                "keyed": self.slot is not None}

    def __setstate__(self, state):
        table = NeighbourTable.of_segments(state["length"], state["cols"], state["weights"], state["stale"],
                                           state["top"], state.get("keyed", True))
        self.__dict__.update(table.__dict__)

