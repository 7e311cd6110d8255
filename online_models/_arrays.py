"""Small building blocks shared by the models: id-to-row maps, growable arrays, top-k."""

from __future__ import annotations

import math

from collections.abc import Collection
from itertools import repeat

import numpy as np


class IdIndex:
    """Maps ids to dense rows, growing as new ids arrive (no fixed vocabulary, no hashing).

    >>> index = IdIndex()
    >>> index.add("a"), index.add("b"), index.add("a")
    (0, 1, 0)
    >>> index.get("c") is None, len(index), index.ids
    (True, 2, ['a', 'b'])
    """

    __slots__ = ("rows", "ids")

    def __init__(self) -> None:
        self.rows: dict[str, int] = {}
        self.ids: list[str] = []

    def __len__(self) -> int:
        return len(self.ids)

    def __contains__(self, key: str) -> bool:
        return key in self.rows

    def get(self, key: str) -> int | None:
        return self.rows.get(key)

    def add(self, key: str) -> int:
        row = self.rows.get(key)
        if row is None:
            row = self.rows[key] = len(self.ids)
            self.ids.append(key)
        return row

    def ranking(self, rows: np.ndarray, scores: np.ndarray) -> list[tuple[str, float]]:
        """``(id, score)`` pairs for parallel arrays of rows and scores.

        >>> index = IdIndex(); _ = index.add("a"), index.add("b")
        >>> index.ranking(np.array([1, 0]), np.array([0.5, 0.25]))
        [('b', 0.5), ('a', 0.25)]
        """
        ids = self.ids
        return [(ids[r], s) for r, s in zip(rows.tolist(), scores.tolist())]

    def rows_of(self, keys: Collection[str]) -> np.ndarray:
        """Rows of the known ``keys`` (unknown ones are skipped)."""
        rows = np.fromiter(map(self.rows.get, keys, repeat(-1)), dtype=np.int64, count=len(keys))
        return rows[rows >= 0] if len(rows) and rows.min() < 0 else rows

    def __getstate__(self):
        return self.ids

    def __setstate__(self, ids):
        self.ids = list(ids)
        self.rows = {key: row for row, key in enumerate(self.ids)}


def grow(array: np.ndarray, min_rows: int) -> np.ndarray:
    """``array`` with room for at least ``min_rows`` rows (capacity doubles; new rows are 0)."""
    if len(array) >= min_rows:
        return array
    new = np.zeros((max(min_rows, 2 * len(array), 16),) + array.shape[1:], dtype=array.dtype)
    new[: len(array)] = array
    return new


def top_k(scores: np.ndarray, k: int, exclude_rows: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Rows and scores of the ``k`` best finite scores, best first; ties go to the lower row.

    ``scores`` is modified in place where ``exclude_rows`` are masked out.

    >>> rows, vals = top_k(np.array([0.1, 0.9, 0.5, 0.7]), 2, exclude_rows=np.array([1]))
    >>> rows.tolist(), vals.tolist()
    ([3, 2], [0.7, 0.5])
    """
    if exclude_rows is not None and len(exclude_rows):
        scores[exclude_rows] = -np.inf
    n = len(scores)
    if n == 0 or k <= 0:
        return np.empty(0, dtype=np.int64), np.empty(0, dtype=scores.dtype)
    if k >= n:
        candidates = np.arange(n)
    elif n >= _PREFILTER_FROM and k <= n // 64:
        candidates = _prefiltered(scores, k)
    else:
        candidates = np.argpartition(scores, n - k)[n - k :]
    return _ordered(candidates, scores[candidates], scores.dtype)


_PREFILTER_FROM = 16_384


def _prefiltered(scores: np.ndarray, k: int) -> np.ndarray:
    """Rows of the ``k`` best scores of a long array, without partitioning all of it.

    The ``k``-th best of a strided sample bounds the ``k``-th best overall from below, so
    one comparison pass leaves a few candidates to partition exactly (about 3x faster).
    """
    n = len(scores)
    sample = scores[:: max(n // (32 * k), 1)]
    bound = sample[np.argpartition(sample, len(sample) - k)[len(sample) - k :]].min()
    if not bound > -math.inf:  # mostly excluded: no useful bound
        return np.argpartition(scores, n - k)[n - k :]
    rows = np.flatnonzero(scores >= bound)
    if len(rows) <= k:
        return rows
    return rows[np.argpartition(scores[rows], len(rows) - k)[len(rows) - k :]]


def _ordered(rows: np.ndarray, vals: np.ndarray, dtype) -> tuple[np.ndarray, np.ndarray]:
    """Finite ``(row, val)`` pairs, score descending then row ascending."""
    if len(rows) <= 64:  # the usual small k: a Python sort beats numpy's per-call overhead
        pairs = sorted((-v, r) for v, r in zip(vals.tolist(), rows.tolist()) if v > -math.inf and v == v)
        return np.array([r for _, r in pairs], dtype=np.int64), np.array([-v for v, _ in pairs], dtype=dtype)
    order = np.lexsort((rows, -vals))
    rows, vals = rows[order], vals[order]
    keep = np.isfinite(vals)
    return rows[keep], vals[keep]


def top_k_of(
    rows: np.ndarray, scores: np.ndarray, k: int, exclude_rows: np.ndarray | None = None, n_rows: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """``top_k`` over a candidate subset: ``scores[i]`` belongs to row ``rows[i]`` (distinct rows).

    Ties go to the lower row, as in ``top_k``; ``scores`` is modified in place where its
    row is one of ``exclude_rows`` (``n_rows`` bounds the row numbers, for the mask).

    >>> rows, vals = top_k_of(np.array([7, 2, 5]), np.array([0.5, 0.5, 0.9]), 2, np.array([5]))
    >>> rows.tolist(), vals.tolist()
    ([2, 7], [0.5, 0.5])
    """
    if exclude_rows is not None and len(exclude_rows) and len(rows):
        size = max(int(rows.max()), int(exclude_rows.max())) + 1 if n_rows is None else n_rows
        mask = np.zeros(size, dtype=bool)
        mask[exclude_rows] = True
        scores[mask[rows]] = -np.inf
    n = len(scores)
    if n == 0 or k <= 0:
        return np.empty(0, dtype=np.int64), np.empty(0, dtype=scores.dtype)
    candidates = np.argpartition(scores, n - k)[n - k :] if k < n else np.arange(n)
    return _ordered(rows[candidates], scores[candidates], scores.dtype)
