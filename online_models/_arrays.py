"""Small building blocks shared by the models: id-to-row maps, growable arrays, top-k."""

from __future__ import annotations

from collections.abc import Collection

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

    def rows_of(self, keys: Collection[str]) -> np.ndarray:
        """Rows of the known ``keys`` (unknown ones are skipped)."""
        get = self.rows.get
        return np.fromiter((r for r in map(get, keys) if r is not None), dtype=np.int64)

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
    if k < n:
        candidates = np.argpartition(-scores, k - 1)[:k]
    else:
        candidates = np.arange(n)
    # stable order: score descending, then row ascending
    order = np.lexsort((candidates, -scores[candidates]))
    rows = candidates[order]
    vals = scores[rows]
    keep = np.isfinite(vals)
    return rows[keep], vals[keep]
