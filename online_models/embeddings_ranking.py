"""How ``TorchEmbeddings`` ranks a batch of users, and the exact top-k by a product of user
and item vectors that the other vector models (``sasrec``, ``river-mf``) rank with too.

Each chunk of users is one float32 matrix product with the item table plus a bias per
item, and one top-k per user (``top_k_rows_by_product``); on a GPU the product and a first
top-k run there (``set_scoring``). From a configured catalogue size on, users' candidates
come from an approximate index (``online_models.candidates``) and only they are scored.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from online_models._arrays import IdIndex, RankedRows, excluded_cells, rows_to_lists, top_k, top_k_arrays
from online_models.base import Ranking

_CHUNK_CELLS = 1 << 22  # users x items scored at once: 16 MB of float32 scores
_COPY_FROM = 64  # users per call from which a transposed copy of the item table pays for itself


_SCORING = {"device": None, "candidates_from": None}  # see set_scoring
_CANDIDATES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> ItemCandidates (derived state)


def set_scoring(device: str = "cpu", candidates_from: int | None = None) -> None:
    """How ``recommend_many`` scores large batches in this process.

    Parameters
    ----------
    device
        ``"cpu"``, or a torch device (``"cuda"``) for the exact matrix product and top-k.
    candidates_from
        From this many items on, users' candidates come from an approximate index
        (``online_models.candidates.ItemCandidates``) and only those are scored exactly;
        ``None``: every item is scored. ``recommend`` (one user) always scores every item,
        and so does a batch on a GPU (``device`` not ``"cpu"``).
    """
    _SCORING["device"] = None if device == "cpu" else torch.device(device)
    _SCORING["candidates_from"] = candidates_from


def top_k_by_product(*args: Any, **kwargs: Any) -> list[tuple[list[int], list[float]]]:
    """``top_k_rows_by_product`` (the same arguments) as lists, each user's cut to its length."""
    return rows_to_lists(*top_k_rows_by_product(*args, **kwargs))


def top_k_rows_by_product(
    items: torch.Tensor,
    bias: torch.Tensor,
    representations: Callable[[list[str]], np.ndarray],
    index: IdIndex,
    user_ids: list[str],
    k: int,
    exclude: Mapping[str, Collection[str]],
    device: torch.device | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Each user's ``k`` best items by ``<representation, item vector> + bias``.

    Parameters
    ----------
    items
        ``(n_items, d)`` float32 item vectors, rows as in ``index``.
    bias
        ``(n_items,)`` float32 score added to every user's.
    representations
        Gives the ``(len(users), d)`` float32 vectors of a list of users.
    index
        The items' id-to-row map, for ``exclude``.
    user_ids, k, exclude
        As in ``Recommender.recommend_many`` (``exclude`` maps users to item ids).
    device
        A torch device for the product and a first top-k (``None``: numpy and torch on
        the CPU, as below).

    Returns
    -------
    (rows, values)
        As ``top_k_arrays``: ``(len(user_ids), min(k, n_items))``, ``-1`` / ``-inf`` padded.
        Each chunk of users is one matrix product, its excluded cells one scatter.
    """
    if not user_ids:
        width = max(min(k, len(items)), 0)
        return np.full((0, width), -1, dtype=np.int64), np.full((0, width), -np.inf)
    if len(user_ids) == 1:  # one user (a backtest asks for one at a time): numpy has less overhead
        seen = exclude.get(user_ids[0])
        scores = items.numpy() @ representations(user_ids)[0] + bias.numpy()
        rows, vals = top_k(scores, k, index.rows_of(seen) if seen else None)
        width = max(min(k, len(scores)), 0)
        out_rows, out_vals = np.full((1, width), -1, dtype=np.int64), np.full((1, width), -np.inf)
        out_rows[0, : len(rows)], out_vals[0, : len(vals)] = rows, vals
        return out_rows, out_vals
    if device is not None:
        return _top_k_rows_on_device(items, bias, representations, index, user_ids, k, exclude, device)
    step = max(1, _CHUNK_CELLS // max(len(items), 1))
    if len(user_ids) >= _COPY_FROM:
        # Many users: one transposed copy of the items with the bias as one more row (a
        # faster product, the bias added inside it) and one score buffer for all chunks
        # (a fresh 16 MB tensor per chunk costs page faults): each chunk is one product.
        items_t = torch.cat([items.T, bias[None, :]])
        buffer = torch.empty((min(step, len(user_ids)), len(items)))

        def product(reps: np.ndarray) -> torch.Tensor:
            reps = torch.from_numpy(np.hstack([reps, np.ones((len(reps), 1), dtype=np.float32)]))
            return torch.mm(reps, items_t, out=buffer[: len(reps)])

    else:

        def product(reps: np.ndarray) -> torch.Tensor:
            return torch.addmm(bias, torch.from_numpy(reps), items.T)

    rows_out, vals_out = [], []
    for start in range(0, len(user_ids), step):
        chunk = user_ids[start : start + step]
        view = product(representations(chunk)).numpy()
        at_user, at_item = excluded_cells(index, chunk, exclude)
        view[at_user, at_item] = -np.inf
        rows, vals = top_k_arrays(view, k)
        rows_out.append(rows)
        vals_out.append(vals)
    return np.concatenate(rows_out), np.concatenate(vals_out)


_DEVICE_SLACK = 32  # extra places of the device's top-k, to see ties at the cut
_DEVICE_CHUNK_CELLS = 1 << 28  # users x items scored at once on a device: 1 GiB of float32 scores


def _top_k_rows_on_device(items, bias, representations, index, user_ids, k, exclude, device):
    """``top_k_rows_by_product`` with the product and a first top-``k + slack`` on ``device``;
    the few survivors are ordered on the CPU (score descending, ties to the lower row). A
    user whose ties reach past the slack gets the exact CPU path."""
    n = len(items)
    # the table goes up as it is (no transposed copy on the CPU: at 1M items that copy
    # cost more than the whole product on a GPU); the bias is added there
    items_on, bias_on = items.to(device, non_blocking=True), bias.to(device, non_blocking=True)
    take = min(k + _DEVICE_SLACK, n)
    width = max(min(k, n), 0)
    step = max(1, _DEVICE_CHUNK_CELLS // max(n, 1))
    rows_out, vals_out = [], []
    for start in range(0, len(user_ids), step):
        chunk = user_ids[start : start + step]
        reps = torch.from_numpy(np.ascontiguousarray(representations(chunk), dtype=np.float32)).to(device)
        scores = torch.addmm(bias_on, reps, items_on.T)
        at_user, at_item = excluded_cells(index, chunk, exclude)
        if len(at_user):
            scores[torch.from_numpy(at_user).to(device), torch.from_numpy(at_item).to(device)] = -torch.inf
        vals, rows = torch.topk(scores, take, dim=1)
        vals, rows = vals.cpu().numpy().astype(np.float64), rows.cpu().numpy()
        order = np.lexsort((rows, -vals), axis=1)
        vals, rows = np.take_along_axis(vals, order, 1), np.take_along_axis(rows, order, 1)
        out_rows = np.where(vals[:, :width] > -np.inf, rows[:, :width], -1)
        out_vals = np.where(vals[:, :width] > -np.inf, vals[:, :width], -np.inf)
        if take > width and width:  # the last kept score ties with the last one seen: redo
            unsure = (vals[:, -1] == vals[:, width - 1]) & (vals[:, -1] > -np.inf)
            for j in np.flatnonzero(unsure).tolist():
                r, v = top_k_rows_by_product(items, bias, representations, index, [chunk[j]], k, exclude)
                out_rows[j], out_vals[j] = r[0], v[0]
        rows_out.append(out_rows)
        vals_out.append(out_vals)
    return np.concatenate(rows_out), np.concatenate(vals_out)


class EmbeddingsRanking:
    """``TorchEmbeddings``' batch ranking (a mixin: it reads the model's output vectors,
    ``_bias()`` and ``_representations``)."""

    def recommend_many(
        self, user_ids: Sequence[str], k: int = 10, exclude: Mapping[str, Collection[str]] | None = None
    ) -> dict[str, Ranking]:
        """Users scored by one float32 matrix product per chunk (as many as fit in cache),
        each user's best items picked by ``top_k_arrays``."""
        user_ids = list(user_ids)
        return self.recommend_rows(user_ids, k, exclude).rankings(user_ids)

    def recommend_rows(
        self, user_ids: Sequence[str], k: int = 10, exclude: Mapping[str, Collection[str]] | None = None
    ) -> RankedRows:
        """``recommend_many``'s lists as arrays of item rows and scores (see ``RankedRows``)."""
        n = len(self._items)
        user_ids = list(user_ids)
        if n == 0:
            empty = np.zeros((len(user_ids), 0))
            return RankedRows(empty.astype(np.int64), empty, self._items)
        candidates_from = _SCORING["candidates_from"]
        on_cpu = _SCORING["device"] is None  # a GPU scores every item exactly faster than the index finds candidates
        if on_cpu and candidates_from is not None and n >= candidates_from and len(user_ids) > 1:
            return self._rows_from_candidates(user_ids, k, exclude or {})
        rows, vals = top_k_rows_by_product(self._item_out[:n], torch.from_numpy(self._bias()), self._representations,
                                           self._items, user_ids, k, exclude or {}, _SCORING["device"])
        return RankedRows(rows, vals, self._items)

    def _rows_from_candidates(self, user_ids: list[str], k: int, exclude: Mapping[str, Collection[str]]
                              ) -> RankedRows:
        """Each user's candidates from the approximate index, scored exactly; their top ``k``."""
        from online_models.candidates import ItemCandidates

        n = len(self._items)
        index = _CANDIDATES.get(self)
        if index is None:
            index = _CANDIDATES[self] = ItemCandidates()
        items, bias = self._item_out.numpy()[:n], self._bias()
        live = bias > -np.inf  # a freed row's bias is -inf
        reps = self._representations(user_ids)
        at_user, at_item = excluded_cells(self._items, user_ids, exclude)
        most_excluded = int(np.bincount(at_user).max()) if len(at_user) else 0
        n_candidates = min(n, 4 * k + most_excluded)
        found = index.search(items, reps, n_candidates, np.where(live, bias, 0.0).astype(np.float32), live,
                             n_exact=k + most_excluded)  # the long rows are scored exactly
        found = np.sort(np.where(found >= 0, found, n), axis=1)  # row order: ties go to the lower row
        held = found < n
        safe = np.where(held, found, 0)
        scores = (np.einsum("ucd,ud->uc", items[safe], reps) + bias[safe]).astype(np.float64)
        scores[~held] = -np.inf
        if len(at_user):
            scores[np.isin(np.arange(len(user_ids))[:, None] * n + found, at_user * n + at_item)] = -np.inf
        cols, vals = top_k_arrays(scores, k)
        rows = np.where(cols >= 0, np.take_along_axis(found, np.maximum(cols, 0), 1), -1)
        return RankedRows(rows, vals, self._items)
