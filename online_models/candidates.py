"""An approximate candidate stage for large catalogues: an inverted-file index (faiss) over
item vectors that follows their updates, for maximum inner product search."""

from __future__ import annotations

import numpy as np


class ItemCandidates:
    """Finds each user's likely best items by ``<user, item> + bias`` without scoring every item.

    Items are indexed as ``[vector, bias]`` and users queried as ``[vector, 1]``, so the
    inner product is the model's score. The index is an inverted file (faiss
    ``IndexIVFFlat``, inner product): items are grouped around ``n_lists`` centroids
    (k-means on a sample), and a query scans only the items of its ``n_probe`` best groups.
    The caller re-scores the candidates exactly, so an item whose indexed vector is a
    little stale still ranks by its current score.

    Following updates: each ``search`` first re-indexes the items that are new, freed, or
    whose ``[vector, bias]`` moved by more than ``drift`` (relative to its norm) since it was
    indexed; the centroids are trained again once the catalogue doubled.

    Parameters
    ----------
    n_lists
        Groups of the inverted file (``None``: about ``4 * sqrt(n_items)``).
    n_probe
        Groups scanned per query.
    drift
        Relative change of an item's indexed vector that re-indexes it.
    seed
        Seeds the training sample.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> items = rng.normal(size=(5000, 9)).astype(np.float32)
    >>> index = ItemCandidates(n_lists=16, n_probe=16)
    >>> users = rng.normal(size=(3, 9)).astype(np.float32)
    >>> rows = index.search(items, users, 10)
    >>> exact = np.argsort(-(users @ items.T), axis=1)[:, :10]
    >>> all(set(e) <= set(r) for e, r in zip(exact.tolist(), rows.tolist()))  # all groups probed: exact
    True
    """

    def __init__(self, n_lists: int | None = None, n_probe: int = 32, drift: float = 0.05, seed: int = 0):
        self.n_lists = n_lists
        self.n_probe = n_probe
        self.drift = drift
        self.seed = seed
        self._index = None
        self._indexed = np.zeros((0, 0), dtype=np.float32)  # what the index holds, per row
        self._trained_for = 0

    def _train(self, vectors: np.ndarray) -> None:
        import faiss

        faiss.omp_set_num_threads(1)  # the worker's cores are shared; see set_torch_threads
        n, d = vectors.shape
        n_lists = self.n_lists or max(16, int(4 * np.sqrt(n)))
        quantizer = faiss.IndexFlatIP(d)
        index = faiss.IndexIVFFlat(quantizer, d, n_lists, faiss.METRIC_INNER_PRODUCT)
        sample = np.random.default_rng(self.seed).choice(n, min(n, 40 * n_lists), replace=False)
        index.train(np.ascontiguousarray(vectors[np.sort(sample)]))
        index.set_direct_map_type(faiss.DirectMap.Hashtable)  # remove_ids by id
        self._quantizer = quantizer  # the index refers to it
        self._index = index
        self._indexed = np.zeros((0, d), dtype=np.float32)
        self._trained_for = n

    def sync(self, vectors: np.ndarray, live: np.ndarray | None = None) -> int:
        """Bring the index up to date with ``vectors`` (``(n_items, d)``, rows as the
        model's); ``live``: which rows hold an item (default: all). Returns how many rows
        were (re-)indexed."""
        n = len(vectors)
        if self._index is None or n >= 2 * self._trained_for or vectors.shape[1] != self._indexed.shape[1]:
            self._train(vectors)
        old = len(self._indexed)
        held = self._indexed
        if n > old:
            held = np.concatenate([held, np.zeros((n - old, vectors.shape[1]), dtype=np.float32)])
        moved = np.zeros(n, dtype=bool)
        moved[old:] = True
        if old:
            now, was = vectors[:old], held[:old]
            change = np.einsum("ij,ij->i", now - was, now - was)
            moved[:old] = change > (self.drift**2) * np.maximum(np.einsum("ij,ij->i", was, was), 1e-12)
        rows = np.flatnonzero(moved)
        if len(rows):
            if old:
                stale = rows[rows < old]
                if len(stale):
                    self._index.remove_ids(stale.astype(np.int64))
            keep = rows if live is None else rows[live[rows]]
            if len(keep):
                self._index.add_with_ids(np.ascontiguousarray(vectors[keep]), keep.astype(np.int64))
            held[rows] = vectors[rows]
        self._indexed = held
        return len(rows)

    def search(self, vectors: np.ndarray, queries: np.ndarray, n_candidates: int,
               live: np.ndarray | None = None) -> np.ndarray:
        """Each query's ``n_candidates`` best rows by inner product in the index (after
        ``sync``), as a ``(len(queries), n_candidates)`` int64 array, ``-1`` where fewer."""
        self.sync(vectors, live)
        self._index.nprobe = min(self.n_probe, self._index.nlist)
        _, rows = self._index.search(np.ascontiguousarray(queries, dtype=np.float32), n_candidates)
        return rows
