"""Incremental PyTorch embeddings: user and item tables that grow with the stream."""

from __future__ import annotations

import functools
import hashlib
import weakref
from collections import deque
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from online_models import tables
from online_models._arrays import (IdIndex, RankedRows, excluded_cells, grow, rows_to_lists, top_k,
                                  top_k_arrays)
from online_models.base import Interaction, Ranking, Recommender
from online_models.trending import POPULAR_NOW, POPULAR_STRATEGY

_TIE_BREAK = 1e-6  # weight of log-popularity in scores: orders items before any training step
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
        ``None``: every item is scored. ``recommend`` (one user) always scores every item.
    """
    _SCORING["device"] = None if device == "cpu" else torch.device(device)
    _SCORING["candidates_from"] = candidates_from


def set_torch_threads(n: int) -> None:
    """Torch's threads in this process. Online steps are small ops: more threads cost more
    than they give, and on a busy host they wait for each other (seen: multi-second stalls)."""
    torch.set_num_threads(n)


def top_k_by_product(
    items: torch.Tensor,
    bias: torch.Tensor,
    representations: Callable[[list[str]], np.ndarray],
    index: IdIndex,
    user_ids: list[str],
    k: int,
    exclude: Mapping[str, Collection[str]],
) -> list[tuple[list[int], list[float]]]:
    """Each user's ``k`` best items by ``<representation, item vector> + bias``, as lists
    (``top_k_rows_by_product``'s arrays, each user's cut to its length)."""
    return rows_to_lists(*top_k_rows_by_product(items, bias, representations, index, user_ids, k, exclude))


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


def _top_k_rows_on_device(items, bias, representations, index, user_ids, k, exclude, device):
    """``top_k_rows_by_product`` with the product and a first top-``k + slack`` on ``device``;
    the few survivors are ordered on the CPU (score descending, ties to the lower row). A
    user whose ties reach past the slack gets the exact CPU path."""
    n = len(items)
    items_t = torch.cat([items.T, bias[None, :]]).to(device)
    take = min(k + _DEVICE_SLACK, n)
    width = max(min(k, n), 0)
    step = max(1, (1 << 26) // max(n, 1))  # 256 MB of float32 scores per chunk
    rows_out, vals_out = [], []
    for start in range(0, len(user_ids), step):
        chunk = user_ids[start : start + step]
        reps = representations(chunk)
        reps = torch.from_numpy(np.hstack([reps, np.ones((len(reps), 1), dtype=np.float32)])).to(device)
        scores = reps @ items_t
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


@functools.lru_cache(maxsize=16)
def _history_weights(recency_decay: float, window: int) -> tuple[np.ndarray, ...]:
    """Weights of a history of each length (index), most recent first, summing to 1."""
    powers = (recency_decay ** np.arange(window)).astype(np.float32)
    return (np.zeros(0, dtype=np.float32),) + tuple(powers[:n] / powers[:n].sum() for n in range(1, window + 1))


_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _splitmix64(z: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser, element-wise on ``uint64`` (wrapping arithmetic): well-mixed
    bits from consecutive counters."""
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def initial_item_vectors(
    item_ids: Sequence[str], seed: int, n_factors: int, std: float
) -> tuple[np.ndarray, np.ndarray]:
    """The starting input and output vectors of items: normal draws that depend only on
    ``(seed, item id)``.

    Replicas that meet an item on their own then start it from the same vectors, so the
    steps they share (``item_delta``) add up to one model's; no random state is consumed.

    Parameters
    ----------
    item_ids
        The items.
    seed, n_factors, std
        The model's ``seed``, ``n_factors`` and ``init_std``.

    Returns
    -------
    (input vectors, output vectors)
        Two ``(len(item_ids), n_factors)`` float32 arrays.

    Examples
    --------
    >>> a_in, a_out = initial_item_vectors(["x", "y"], seed=1, n_factors=4, std=0.1)
    >>> b_in, _ = initial_item_vectors(["y"], seed=1, n_factors=4, std=0.1)
    >>> bool((a_in[1] == b_in[0]).all()), bool((a_in[0] == a_in[1]).any()), a_out.shape
    (True, False, (2, 4))
    """
    salt = int(_splitmix64(np.array([seed & (2**64 - 1)], dtype=np.uint64))[0])
    keys = np.array([int.from_bytes(hashlib.blake2b(i.encode(), digest_size=8).digest(), "little") ^ salt
                     for i in item_ids], dtype=np.uint64).reshape(-1, 1)
    counters = np.arange(1, 2 * n_factors + 1, dtype=np.uint64) * _GOLDEN  # one per uniform draw
    bits = _splitmix64(keys + _splitmix64(counters))
    uniform = (bits >> np.uint64(11)).astype(np.float64) * 2.0**-53  # 53 bits, in [0, 1)
    # Box-Muller: each pair of uniforms gives two independent normals (one in, one out)
    radius = std * np.sqrt(-2.0 * np.log1p(-uniform[:, :n_factors]))
    angle = 2.0 * np.pi * uniform[:, n_factors:]
    return (radius * np.cos(angle)).astype(np.float32), (radius * np.sin(angle)).astype(np.float32)


def sample_negatives(counts: np.ndarray, n: int, alpha: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``n`` item rows drawn with replacement, in proportion to ``counts ** alpha``, and the
    probability of each draw (for the logQ correction of a sampled softmax).

    Rows with a count of 0 (freed rows) are never drawn.

    >>> rows, probs = sample_negatives(np.array([0.0, 4.0, 1.0]), 5, 0.5, np.random.default_rng(0))
    >>> 0 in rows.tolist(), sorted(set(np.round(probs, 3).tolist()))
    (False, [0.333, 0.667])
    """
    cdf = np.cumsum(counts**alpha)  # unnormalised: two passes over the catalogue
    total = cdf[-1]
    rows = np.minimum(np.searchsorted(cdf, rng.random(n) * total, side="right"), len(counts) - 1)
    return rows, counts[rows] ** alpha / total


def rowwise_adagrad(table: np.ndarray, acc: np.ndarray, rows: np.ndarray, grads: np.ndarray, lr: float,
                    l2: float = 0.0) -> None:
    """Row-wise Adagrad on ``table`` (in place): one squared-gradient sum per row (``acc``,
    the mean over the row's columns), gradients of repeated rows summed first.

    numpy only: torch would run these small ops on its thread pool, which stalls while
    another process holds the other core. ``l2`` adds ``l2 * row`` to each row's gradient.

    >>> table, acc = np.ones((3, 2), dtype=np.float32), np.zeros(3, dtype=np.float32)
    >>> rowwise_adagrad(table, acc, np.array([2, 0, 2]), np.full((3, 2), 0.5, dtype=np.float32), lr=0.1)
    >>> [round(x, 3) for x in table[:, 0].tolist()], acc.tolist()
    ([0.9, 1.0, 0.9], [0.25, 0.0, 1.0])
    """
    if len(rows) == 0:
        return
    order = np.argsort(rows, kind="stable")  # stable: repeats are summed in event order
    rows = rows[order]
    starts = np.flatnonzero(np.concatenate([[True], rows[1:] != rows[:-1]]))
    uniq = rows[starts]
    grad = np.add.reduceat(grads[order].astype(np.float32, copy=False), starts, axis=0)
    leaf = table[uniq]
    if l2:
        grad += l2 * leaf
    acc[uniq] += (grad**2).mean(1)
    table[uniq] = leaf - lr * grad / (np.sqrt(acc[uniq]) + 1e-8)[:, None]


def ring_slots(capacity: int, length: int, position: int, m: int) -> tuple[np.ndarray, slice, int, int]:
    """Where ``m`` new entries go in a ring buffer of ``capacity`` slots holding ``length``
    entries, ``position`` being the oldest once it is full: free slots first, then the
    oldest entries.

    Returns the slots, the slice of the new entries that get them (the last ones, when
    there are more entries than slots), and the new length and position.

    >>> slots, kept, length, position = ring_slots(4, 3, 0, 3)
    >>> slots.tolist(), kept, length, position
    ([3, 0, 1], slice(0, 3, None), 4, 2)
    """
    fill = min(capacity - length, m)
    wrap = (position + np.arange(m - fill)) % capacity
    slots = np.concatenate([np.arange(length, length + fill), wrap])
    last = slice(max(m - capacity, 0), m)  # more events than slots: the last ones win
    return slots[last], last, length + fill, (position + m - fill) % capacity


def take_item_changes(current: Mapping[str, np.ndarray], shadow: dict[str, np.ndarray],
                      ids: Sequence[str | None]) -> dict[str, Any]:
    """An ``item_delta``: the live rows (``ids`` not ``None``) where any table of ``current``
    differs from ``shadow``, and by how much; the shadow takes their values.

    ``current`` and ``shadow`` map the same names to arrays with one row per item (``shadow``
    at least ``len(ids)`` rows long).

    >>> shadow = {"x": np.zeros(3)}
    >>> delta = take_item_changes({"x": np.array([0.0, 2.0, 5.0])}, shadow, ["a", "b", None])
    >>> delta["ids"].tolist(), delta["x"].tolist(), shadow["x"].tolist()
    (['b'], [2.0], [0.0, 2.0, 0.0])
    """
    n = len(ids)
    changed = np.zeros(n, dtype=bool)
    for key, now in current.items():
        was = shadow[key][:n]
        changed |= (now != was).any(1) if now.ndim == 2 else now != was
    changed &= np.array([i is not None for i in ids], dtype=bool)
    rows = np.flatnonzero(changed)
    delta: dict[str, Any] = {"ids": np.array([ids[r] for r in rows], dtype=str)}
    for key, now in current.items():
        delta[key] = now[rows] - shadow[key][rows]
        shadow[key][rows] = now[rows]
    return delta


def add_item_changes(current: Mapping[str, np.ndarray], shadow: Mapping[str, np.ndarray], rows: np.ndarray,
                     delta: Mapping[str, Any]) -> None:
    """Add a peer's ``take_item_changes`` (its ids already mapped to ``rows``) to the tables
    and to the shadow, so that it is not reported back."""
    for key, now in current.items():
        change = np.asarray(delta[key], dtype=now.dtype)
        now[rows] += change
        shadow[key][rows] += change


def _grow_tensor(table: torch.Tensor, rows: int) -> torch.Tensor:
    if len(table) >= rows:
        return table
    new = torch.zeros((max(rows, 2 * len(table), 64),) + tuple(table.shape[1:]), dtype=table.dtype)
    new[: len(table)] = table
    return new


class TorchEmbeddings(Recommender):
    """User and item embeddings learned online with sampled softmax (or BPR) and Adagrad.

    A user is represented by a learned user vector plus a recency-weighted mean of the
    input vectors of the user's last ``window`` items, so the model follows sessions and
    sequences; an item is scored by ``<user representation, item output vector> + bias``.
    All items are scored with one float32 matrix product (batched in ``recommend_many``).

    Tables are plain tensors with an id-to-row map; they double in capacity as new users
    and items arrive (no hashing, no fixed vocabulary). Only the rows a micro-batch touches
    are updated, with a row-wise Adagrad step.

    ``learn_one`` updates the user's recent items at once (so the next recommendation
    already reflects the event) and queues the event; every ``batch_size`` queued events
    make one gradient step over those events plus ``replay`` times as many drawn from a
    replay buffer of the last ``buffer_size`` events, so each event is seen more than once.
    ``learn_many`` is exactly ``learn_one`` in a loop: the batching is the same.

    Negatives are shared by the micro-batch, drawn from item counts raised to ``pop_alpha``
    (popularity-aware; 0 is uniform); the softmax loss subtracts their log-probability
    (logQ correction), so the item bias learns popularity rather than being pushed from it.

    Scale-out: an item starts from vectors drawn from ``(seed, item id)`` alone
    (``initial_item_vectors``), so replicas that meet it apart start alike and exchange
    only their own steps (``item_delta``, diffed against a shadow copy of the item state
    that the first call builds; learning never touches it). Users move with their vector,
    Adagrad sum, recent items and queued events (``export_users``).

    Parameters
    ----------
    n_factors
        Embedding size.
    window
        How many recent items of each user form the sequence part of the representation.
    recency_decay
        Weight factor per step back in the user's history.
    loss
        ``"softmax"`` (sampled softmax over the positive and the shared negatives) or ``"bpr"``.
    n_negatives
        Negatives sampled per gradient step (shared by the batch).
    pop_alpha
        Exponent on item counts for negative sampling.
    lr
        Adagrad learning rate.
    l2
        L2 penalty on touched rows.
    batch_size
        Queued events per gradient step.
    replay
        Replayed events per new event in a step.
    buffer_size
        Capacity of the replay buffer.
    init_std
        Standard deviation of new rows.
    seed
        Seeds initialisation (an item's from this seed and its id), negative sampling and replay.
    event_weights
        Weight per event type (scales each event's loss); defaults to ``EVENT_WEIGHTS``.

    Examples
    --------
    >>> from core.schema import Event
    >>> model = TorchEmbeddings(n_factors=8, batch_size=4, seed=1)
    >>> log = [("a", "x"), ("a", "y"), ("b", "x"), ("b", "y")] * 30 + [("c", "x")]
    >>> for t, (user, item) in enumerate(log):
    ...     model.learn_one(Event(user_id=user, item_id=item, type="view", ts=t))
    >>> model.recommend("c", k=1, exclude={"x"})[0][0]
    'y'
    """

    name = "embeddings"
    ITEM_TABLES = {"in": "step", "out": "step", "bias": "sum", "acc_in": "sum", "acc_out": "sum", "acc_bias": "sum",
                   "counts": "sum"}
    USER_TABLES = {"vectors": "vector", "acc": "vector", "recent": "items"}

    def __init__(
        self,
        n_factors: int = 32,
        window: int = 20,
        recency_decay: float = 0.8,
        loss: str = "softmax",
        n_negatives: int = 128,
        pop_alpha: float = 0.5,
        lr: float = 0.1,
        l2: float = 0.0,
        batch_size: int = 32,
        replay: int = 1,
        buffer_size: int = 20_000,
        init_std: float = 0.1,
        seed: int = 42,
        event_weights: Mapping[str, float] | None = None,
    ):
        self.n_factors = n_factors
        self.window = window
        self.recency_decay = recency_decay
        self.loss = loss
        self.n_negatives = n_negatives
        self.pop_alpha = pop_alpha
        self.lr = lr
        self.l2 = l2
        self.batch_size = batch_size
        self.replay = replay
        self.buffer_size = buffer_size
        self.init_std = init_std
        self.seed = seed
        self.event_weights = event_weights
        if loss not in ("softmax", "bpr"):
            raise ValueError(f"loss must be 'softmax' or 'bpr', got {loss!r}")
        self._users = IdIndex()
        self._items = IdIndex()
        self._rng = np.random.default_rng(seed)
        d = n_factors
        self._user_vecs = torch.zeros((0, d))
        self._item_in = torch.zeros((0, d))  # items as part of a user's history
        self._item_out = torch.zeros((0, d))  # items as candidates
        self._item_bias = torch.zeros((0, 1))
        self._acc = {name: torch.zeros(0) for name in ("user", "in", "out", "bias")}  # Adagrad sums
        self._counts = np.zeros(0, dtype=np.float64)
        self._tie = np.zeros(0, dtype=np.float32)  # _TIE_BREAK * log1p(counts), per item
        self._recent: dict[str, deque[int]] = {}
        self._pending: list[tuple[int, int, tuple[int, ...], float]] = []  # user, item, history, weight
        self._buf_user = np.zeros(0, dtype=np.int64)
        self._buf_item = np.zeros(0, dtype=np.int64)
        self._buf_hist = np.zeros((0, window), dtype=np.int64)
        self._buf_weight = np.zeros(0, dtype=np.float32)
        self._buf_len = 0
        self._buf_pos = 0
        self._powers = (recency_decay ** np.arange(window)).astype(np.float32)
        self._shadow: dict[str, np.ndarray] | None = None  # item state as of the last delta; see item_delta

    # -- growth ------------------------------------------------------------------------
    def _new_rows(self, table: torch.Tensor, acc_name: str, rows: int) -> torch.Tensor:
        old = len(table)
        table = _grow_tensor(table, rows)
        if len(table) > old:
            self._acc[acc_name] = _grow_tensor(self._acc[acc_name], len(table))
        return table

    def _add_user(self, user_id: str) -> int:
        row = self._users.get(user_id)
        if row is None:  # a new row, or one a forgotten user freed (reset then)
            row = self._users.add(user_id)
            self._user_vecs = self._new_rows(self._user_vecs, "user", row + 1)
            self._user_vecs[row] = torch.from_numpy(
                self._rng.normal(0.0, self.init_std, self.n_factors).astype(np.float32))
        return row

    def _add_item(self, item_id: str) -> int:
        row = self._items.get(item_id)
        if row is None:  # a new row, or one a forgotten item freed (reset then)
            row = self._items.add(item_id)
            self._item_in = self._new_rows(self._item_in, "in", row + 1)
            self._item_out = self._new_rows(self._item_out, "out", row + 1)
            self._item_bias = self._new_rows(self._item_bias, "bias", row + 1)
            vec_in, vec_out = initial_item_vectors([item_id], self.seed, self.n_factors, self.init_std)
            self._item_in[row] = torch.from_numpy(vec_in[0])
            self._item_out[row] = torch.from_numpy(vec_out[0])
            self._item_bias[row] = 0.0  # a freed row's bias is -inf: it must never rank
            self._counts = grow(self._counts, row + 1)
            tables.rebase(self, np.array([row]))  # the item's tally starts from its init
        return row

    # -- learning ----------------------------------------------------------------------
    def learn_one(self, interaction: Interaction) -> None:
        user_id = interaction.user_id
        user = self._add_user(user_id)
        item = self._add_item(interaction.item_id)
        weight = self.weight(interaction)
        self._counts[item] += weight
        self._note_count(item)
        recent = self._recent.get(user_id)
        if recent is None:
            recent = self._recent[user_id] = deque(maxlen=self.window)
        self._pending.append((user, item, tuple(reversed(recent)), weight))  # history before the event
        recent.append(item)
        if len(self._pending) >= self.batch_size:
            self._step()

    def _note_count(self, row: int) -> None:
        """Refresh the item's popularity tie-break (kept per item: ranking reads it every call)."""
        tie = self.__dict__.get("_tie")
        if tie is None or len(tie) < len(self._counts):  # grown, or state saved before it was kept
            self._tie = _TIE_BREAK * np.log1p(self._counts).astype(np.float32)
        else:
            tie[row : row + 1] = _TIE_BREAK * np.log1p(self._counts[row : row + 1]).astype(np.float32)

    def _remember(self, users, items, hists, weights) -> None:
        if len(self._buf_user) < self.buffer_size:
            size = min(self.buffer_size, max(2 * len(self._buf_user), 1024))
            self._buf_user = np.resize(self._buf_user, size)
            self._buf_item = np.resize(self._buf_item, size)
            self._buf_hist = np.resize(self._buf_hist, (size, self.window))
            self._buf_weight = np.resize(self._buf_weight, size)
        if len(self._buf_user) == 0:
            return
        pos, last, self._buf_len, self._buf_pos = ring_slots(len(self._buf_user), self._buf_len, self._buf_pos, len(users))
        self._buf_user[pos], self._buf_item[pos] = users[last], items[last]
        self._buf_hist[pos], self._buf_weight[pos] = hists[last], weights[last]

    def _sample_negatives(self) -> tuple[np.ndarray, np.ndarray]:
        return sample_negatives(self._counts[: len(self._items)], self.n_negatives, self.pop_alpha, self._rng)

    def _step(self) -> None:
        pending, self._pending = self._pending, []
        users = np.array([p[0] for p in pending])
        items = np.array([p[1] for p in pending])
        weights = np.array([p[3] for p in pending], dtype=np.float32)
        hists = np.full((len(pending), self.window), -1, dtype=np.int64)
        for j, (_, _, hist, _) in enumerate(pending):
            if len(hist):
                hists[j, : len(hist)] = hist
        n_replay = min(self._buf_len, self.replay * len(users))
        if n_replay:
            pick = self._rng.integers(0, self._buf_len, n_replay)
            b_users, b_items = self._buf_user[pick], self._buf_item[pick]
            b_hists, b_weights = self._buf_hist[pick], self._buf_weight[pick]
        self._remember(users, items, hists, weights)
        if n_replay:
            users, items = np.concatenate([users, b_users]), np.concatenate([items, b_items])
            hists, weights = np.concatenate([hists, b_hists]), np.concatenate([weights, b_weights])
        negatives, neg_probs = self._sample_negatives()
        self._gradient_step(users, items, hists, weights, negatives, neg_probs)

    def _gradient_step(self, users, items, hists, weights, negatives, neg_probs) -> None:
        """One Adagrad step on the rows the events touch, gradients written out by hand.

        The loss is the weighted mean over events of the sampled softmax (or BPR) loss, plus
        ``l2`` times the squared norm of the touched rows over the number of events.
        Autograd would spend most of a step on bookkeeping for these small tensors.
        """
        b = len(items)
        mask = hists >= 0
        hist_w = self._powers[None, :] * mask
        hist_w /= np.maximum(hist_w.sum(1, keepdims=True), 1e-12)
        user_t, in_t = self._user_vecs.numpy(), self._item_in.numpy()
        out_t, bias_t = self._item_out.numpy(), self._item_bias.numpy()
        owner, slot = np.nonzero(mask)  # the history entries in use
        in_rows, in_w = hists[owner, slot], hist_w[owner, slot]
        hist_vecs = in_t[np.where(mask, hists, 0)]  # padding reads row 0 with weight 0
        reps = user_t[users] + np.matmul(hist_w[:, None, :], hist_vecs)[:, 0]
        item_rows = np.concatenate([items, negatives])
        out_vecs, bias = out_t[item_rows], bias_t[item_rows, 0]
        pos = np.einsum("ij,ij->i", reps, out_vecs[:b]) + bias[:b]
        neg = reps @ out_vecs[b:].T + bias[b:]
        hit = items[:, None] == negatives[None, :]
        scale = weights / max(float(weights.sum()), 1e-12)  # each event's share of the loss
        if self.loss == "softmax":
            logits = neg - np.log(neg_probs * len(negatives)).astype(np.float32)  # logQ correction
            logits[hit] = -np.inf
            top = np.maximum(logits.max(1), pos)
            e_pos, e_neg = np.exp(pos - top), np.exp(logits - top[:, None])
            norm = e_pos + e_neg.sum(1)
            d_pos = scale * (e_pos / norm - 1.0)  # d loss / d positive score
            d_neg = (scale / norm)[:, None] * e_neg  # d loss / d negative scores
        else:
            with np.errstate(over="ignore"):
                d_neg = 1.0 / (1.0 + np.exp(pos[:, None] - neg))  # sigmoid(neg - pos)
            d_neg[hit] = 0.0
            d_neg *= (scale / np.maximum((~hit).sum(1), 1))[:, None]
            d_pos = -d_neg.sum(1)
        d_reps = d_pos[:, None] * out_vecs[:b] + d_neg @ out_vecs[b:]
        self._adagrad("user", user_t, users, d_reps, b)
        self._adagrad("in", in_t, in_rows, in_w[:, None] * d_reps[owner], b)
        self._adagrad("out", out_t, item_rows, np.concatenate([d_pos[:, None] * reps, d_neg.T @ reps]), b)
        self._adagrad("bias", bias_t, item_rows, np.concatenate([d_pos, d_neg.sum(0)])[:, None], b)

    def _adagrad(self, name: str, table: np.ndarray, rows: np.ndarray, grads: np.ndarray, b: int) -> None:
        """Row-wise Adagrad on ``table`` (in place), gradients of repeated rows summed.

        numpy only: torch would run these small ops on its thread pool, which stalls
        while another process holds the other core.
        """
        rowwise_adagrad(table, self._acc[name].numpy(), rows, grads, self.lr, 2.0 * self.l2 / b)

    def forget_user(self, user_id: str) -> None:
        """Drop the user's vector, recent items and queued or replayable events, and free
        the user's row for a new user; item vectors keep what they learned."""
        self._recent.pop(user_id, None)
        row = self._users.get(user_id)
        if row is None:
            return
        self._users.remove([user_id])
        self._user_vecs[row] = 0.0
        self._acc["user"][row] = 0.0
        self._pending = [p for p in self._pending if p[0] != row]
        self._buf_weight[: self._buf_len][self._buf_user[: self._buf_len] == row] = 0.0

    def forget_items(self, item_ids: Collection[str]) -> None:
        """Drop the items' vectors, counts and events (queued, replayable, in users' recent
        items) and free their rows; a freed row's bias is ``-inf`` until a new item takes it."""
        rows = self._items.remove(item_ids)
        if not len(rows):
            return
        for table, acc in ((self._item_in, "in"), (self._item_out, "out"), (self._item_bias, "bias")):
            table[rows] = 0.0
            self._acc[acc][rows] = 0.0
        self._item_bias[rows] = -torch.inf
        self._counts[rows] = 0.0
        self._tie = _TIE_BREAK * np.log1p(self._counts).astype(np.float32)
        tables.rebase(self, rows)  # a freed row has nothing to report
        gone = set(rows.tolist())
        self._pending = [(u, i, tuple(h for h in hist if h not in gone), w)
                         for u, i, hist, w in self._pending if i not in gone]
        held = slice(0, self._buf_len)
        self._buf_weight[held][np.isin(self._buf_item[held], rows)] = 0.0
        self._buf_hist[held][np.isin(self._buf_hist[held], rows)] = -1
        for user_id, recent in self._recent.items():
            if not gone.isdisjoint(recent):
                self._recent[user_id] = deque((r for r in recent if r not in gone), maxlen=self.window)

    def state_sizes(self) -> dict[str, int]:
        return {"users": self._users.live(), "items": self._items.live()}

    # -- scale-out (online_models.tables) ---------------------------------------------
    def export_users(self, user_ids: Collection[str]) -> dict[str, Any]:
        """The users' vectors, Adagrad sums, recent items and queued events, as flat arrays.

        Items are named by id. Queued events go with their user so that the new owner
        takes their gradient step; the user's events in the replay buffer stay behind
        (``forget_user`` silences them here; the new owner replays the user's new events).

        Returns
        -------
        dict
            The user tables (``online_models.tables.export_users``); per queued event
            ``pending_user`` (position in ``users``), ``pending_item``, ``pending_weight``,
            and its history (most recent first) in ``pending_hist`` cut by ``pending_hist_len``.
        """
        state = tables.export_users(self, user_ids)
        ids = self._items.ids
        position = {self._users.rows[u]: j for j, u in enumerate(state["users"].tolist())}
        pending = [(position[p[0]], p) for p in self._pending if p[0] in position]
        return {
            **state,
            "pending_user": np.array([j for j, _ in pending], dtype=np.int64),
            "pending_item": np.array([ids[p[1]] for _, p in pending], dtype=str),
            "pending_weight": np.array([p[3] for _, p in pending], dtype=np.float32),
            "pending_hist": np.array([ids[r] for _, p in pending for r in p[2]], dtype=str),
            "pending_hist_len": np.array([len(p[2]) for _, p in pending], dtype=np.int64),
        }

    def import_users(self, state: Mapping[str, Any]) -> None:
        """Adopt users from ``export_users``: what this model knew of them is forgotten
        first; their queued events join this model's queue (stepped with its next batch)."""
        for user_id in np.asarray(state.get("users", ())).tolist():
            self.forget_user(user_id)
        users = tables.import_users(self, state)
        if not users:
            return
        rows = [self._users.rows[u] for u in users]
        hists = iter(self._add_items(np.asarray(state["pending_hist"]).tolist()).tolist())
        for j, item, weight, n in zip(np.asarray(state["pending_user"]).tolist(), state["pending_item"],
                                      np.asarray(state["pending_weight"]).tolist(),
                                      np.asarray(state["pending_hist_len"]).tolist()):
            hist = tuple(next(hists) for _ in range(n))
            self._pending.append((rows[j], self._add_item(str(item)), hist, weight))
        self._refresh_tie()

    def _has_user(self, user_id: str) -> bool:
        return user_id in self._users

    def _user_get(self, name: str, user_id: str) -> Any:
        if name == "recent":
            return np.array(self._recent.get(user_id, ()), dtype=np.int64), None
        row = self._users.rows[user_id]
        return (self._user_vecs if name == "vectors" else self._acc["user"]).numpy()[row]

    def _user_put(self, name: str, user_id: str, value: Any) -> None:
        if name == "recent":
            self._recent[user_id] = deque(value[0].tolist(), maxlen=self.window)
            return
        row = self._add_user(user_id)
        table = self._user_vecs if name == "vectors" else self._acc["user"]
        table.numpy()[row] = np.asarray(value, dtype=np.float32).reshape(table.shape[1:])

    def item_delta(self) -> dict[str, Any]:
        """The change of every item row this model's own learning touched since the last
        call: input and output vectors, biases, their Adagrad sums and the item counts.

        An item met since then reports its change from its starting vectors
        (``initial_item_vectors``), which a peer that has not met it starts from too.
        Counts include the events still queued; their gradient step is reported by the
        call after it is taken (see ``online_models.tables``).

        Returns
        -------
        dict
            ``items`` (str), ``in`` and ``out`` ``(n, n_factors)``, ``bias``, ``acc_in``,
            ``acc_out``, ``acc_bias`` (float32) and ``counts`` (float64), one entry per item.
        """
        return tables.item_delta(self)

    def merge_item_delta(self, delta: Mapping[str, Any]) -> None:
        """Add a peer's ``item_delta``; items not met yet start from their initial vectors."""
        tables.merge_item_delta(self, delta)

    def _item_tables(self) -> dict[str, np.ndarray]:
        """Writable views of the shared item tables' rows."""
        n = len(self._items)
        return {"in": self._item_in.numpy()[:n], "out": self._item_out.numpy()[:n],
                "bias": self._item_bias.numpy()[:n, 0], "acc_in": self._acc["in"].numpy()[:n],
                "acc_out": self._acc["out"].numpy()[:n], "acc_bias": self._acc["bias"].numpy()[:n],
                "counts": self._counts[:n]}

    def _initial_items(self, ids: Sequence[str]) -> dict[str, np.ndarray]:
        vec_in, vec_out = initial_item_vectors(ids, self.seed, self.n_factors, self.init_std)
        return {"in": vec_in, "out": vec_out}

    def _add_items(self, ids: Sequence[str]) -> np.ndarray:
        return np.array([self._add_item(str(i)) for i in ids], dtype=np.int64)

    def _merged(self, rows: np.ndarray, item_tables: dict[str, np.ndarray]) -> None:
        self._refresh_tie()

    def _refresh_tie(self) -> None:
        self._tie = _TIE_BREAK * np.log1p(self._counts).astype(np.float32)

    # -- ranking -----------------------------------------------------------------------
    def _representations(self, user_ids: Sequence[str]) -> np.ndarray:
        reps = np.zeros((len(user_ids), self.n_factors), dtype=np.float32)
        user_vecs, item_in = self._user_vecs.numpy(), self._item_in.numpy()
        user_rows, recent_of = self._users.rows, self._recent
        weights = _history_weights(self.recency_decay, self.window)
        for j, user_id in enumerate(user_ids):
            row = user_rows.get(user_id)
            if row is not None:
                reps[j] = user_vecs[row]
            recent = recent_of.get(user_id)
            if recent:
                reps[j] += weights[len(recent)] @ item_in[list(reversed(recent))]
        return reps

    def _bias(self) -> np.ndarray:
        n = len(self._items)
        if "_tie" not in self.__dict__:  # state saved before the tie-break was kept
            self._tie = _TIE_BREAK * np.log1p(self._counts).astype(np.float32)
        return self._item_bias.numpy()[:n, 0] + self._tie[:n]

    def recommend(self, user_id: str, k: int = 10, exclude: Collection[str] | None = None) -> Ranking:
        return self.recommend_many([user_id], k, {user_id: exclude} if exclude else None)[user_id]

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
        if candidates_from is not None and n >= candidates_from and len(user_ids) > 1:
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
        vectors = np.hstack([items, np.where(live, bias, 0.0)[:, None]]).astype(np.float32)
        reps = self._representations(user_ids)
        at_user, at_item = excluded_cells(self._items, user_ids, exclude)
        most_excluded = int(np.bincount(at_user).max()) if len(at_user) else 0
        n_candidates = min(n, 4 * k + most_excluded)
        found = index.search(vectors, np.hstack([reps, np.ones((len(reps), 1), dtype=np.float32)]),
                             n_candidates, live)
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

    def explain_items(self, user_id: str, item_ids: Sequence[str]) -> list[tuple[str, str | None]]:
        """Per item, the nearest of the user's recent items: the one whose input vector is
        closest (cosine) to the item's output vector, the vector the item is ranked by. A
        user without history was served the items with the largest biases: "popular now".

        >>> from core.schema import Event
        >>> model = TorchEmbeddings(n_factors=4, batch_size=1)
        >>> for item in "xy":
        ...     model.learn_one(Event(user_id="a", item_id=item, type="view", ts=0))
        >>> model.explain_items("a", ["x"]), model.explain_items("new", ["x"])
        ([('embeddings', 'close to y, which you viewed recently')], [('trending', 'popular now')])
        """
        rows = [self._items.get(item) for item in item_ids]
        recent = self._recent.get(user_id)
        if not recent:
            return [(POPULAR_STRATEGY, POPULAR_NOW) if row is not None else (self.name, None) for row in rows]
        mine = np.array(list(dict.fromkeys(reversed(recent))), dtype=np.int64)  # most recent first
        known = [n for n, row in enumerate(rows) if row is not None]
        explained: list[tuple[str, str | None]] = [(self.name, None)] * len(item_ids)
        if not known:
            return explained
        targets = np.array([rows[n] for n in known], dtype=np.int64)
        vecs, outs = self._item_in.numpy()[mine], self._item_out.numpy()[targets]
        sims = (vecs @ outs.T) / (np.linalg.norm(vecs, axis=1)[:, None] * np.linalg.norm(outs, axis=1) + 1e-12)
        sims[mine[:, None] == targets[None, :]] = -np.inf  # an item does not explain itself
        best = np.argmax(sims, axis=0)
        ids = self._items.ids
        for t, n in enumerate(known):
            if np.isfinite(sims[best[t], t]):
                explained[n] = (self.name, f"close to {ids[mine[best[t]]]}, which you viewed recently")
        return explained

    def similar_items(self, item_id: str, k: int = 10) -> Ranking:
        """Items whose output vectors are closest (cosine) to this item's input vector."""
        row = self._items.get(item_id)
        if row is None:
            return []
        n = len(self._items)
        out = self._item_out.numpy()[:n]
        query = self._item_in.numpy()[row]
        sims = out @ query / (np.linalg.norm(out, axis=1) * np.linalg.norm(query) + 1e-12)
        rows, vals = top_k(sims, k + 1, np.array([row, *self._items.free]))
        return self._items.ranking(rows[:k], vals[:k])
