"""What the two neural models (``embeddings`` and ``sasrec``) share: item tables that grow
with the stream, a queue of events stepped in micro-batches with a replay buffer, a sampled
softmax's negatives, row-wise Adagrad, and users that move with their recent items and
queued events.

:class:`QueuedItemLearner` is their base; the free functions are its building blocks.
"""

from __future__ import annotations

import abc
import hashlib
import itertools
from collections import deque
from collections.abc import Collection, Mapping, Sequence
from typing import Any, ClassVar

import numpy as np
import torch

from online_models import tables
from online_models._arrays import splitmix64
from online_models.base import Interaction, Ranking, Recommender

TIE_BREAK = 1e-6  # weight of log-popularity in scores: orders items before any training step

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


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
    salt = int(splitmix64(np.array([seed & (2**64 - 1)], dtype=np.uint64))[0])
    keys = np.array([int.from_bytes(hashlib.blake2b(i.encode(), digest_size=8).digest(), "little") ^ salt
                     for i in item_ids], dtype=np.uint64).reshape(-1, 1)
    counters = np.arange(1, 2 * n_factors + 1, dtype=np.uint64) * _GOLDEN  # one per uniform draw
    bits = splitmix64(keys + splitmix64(counters))
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
    return _draw(np.cumsum(counts**alpha), counts, n, alpha, rng)  # cdf unnormalised: two passes over the catalogue


def _draw(cdf: np.ndarray, counts: np.ndarray, n: int, alpha: float, rng: np.random.Generator
          ) -> tuple[np.ndarray, np.ndarray]:
    """``sample_negatives``' draws from the cumulative sums ``cdf`` of ``counts ** alpha``."""
    total = cdf[-1]
    rows = np.minimum(np.searchsorted(cdf, rng.random(n) * total, side="right"), len(counts) - 1)
    return rows, counts[rows] ** alpha / total


def row_groups(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """How ``rowwise_adagrad`` sums the gradients of repeated rows: the stable order that
    sorts ``rows`` (repeats stay in event order), where each distinct row's run starts in
    that order, and the distinct rows. Tables updated on the same rows can share it.

    >>> order, starts, uniq = row_groups(np.array([2, 0, 2]))
    >>> order.tolist(), starts.tolist(), uniq.tolist()
    ([1, 0, 2], [0, 1], [0, 2])
    """
    order = rows.argsort(kind="stable")  # methods, not np.argsort and the like: their wrappers cost more here
    ordered = rows.take(order)
    first = np.empty(len(ordered), dtype=bool)
    first[:1] = True
    np.not_equal(ordered[1:], ordered[:-1], out=first[1:])
    starts = first.nonzero()[0]
    return order, starts, ordered.take(starts)


def _run_sums(grads: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """``np.add.reduceat(grads, starts, axis=0)``, the same numbers, for runs that start at
    ``starts``: a run of one row is that row; ``reduceat`` (one inner loop per run and
    column) sums only the longer runs."""
    if len(starts) == len(grads):
        return grads
    sizes = np.empty_like(starts)
    np.subtract(starts[1:], starts[:-1], out=sizes[:-1])
    sizes[-1] = len(grads) - starts[-1]
    longer = sizes > 1
    sums = grads[starts]
    longer_sizes = sizes[longer]
    sums[longer] = np.add.reduceat(grads[longer.repeat(sizes)], longer_sizes.cumsum() - longer_sizes, axis=0)
    return sums


class NegativeSampler:
    """``sample_negatives`` with its cumulative sums kept between draws: the same rows and
    probabilities, bit for bit, for the same counts and generator.

    The caller ``touch``-es every row whose count changed since the last ``draw`` (rows
    past the last draw's length count as changed). A draw recomputes ``counts ** alpha``
    of the touched rows and the cumulative sums from the lowest touched row on, continuing
    from the kept sum before it. The sums are those of ``np.cumsum``, a sequential sum:
    any faster tree or blocked sum rounds differently, and the total (which every
    probability divides by) would differ in its last bits. So a draw costs the rows from
    the lowest touched one to the end: a handful when new items come last (a catalogue
    growing), the whole catalogue when an old item is touched, still without the
    powers and the two fresh arrays of ``sample_negatives``.

    The kept sums are derived state: they are not pickled (the first draw after a
    restore computes them again).

    Parameters
    ----------
    alpha
        Exponent on the counts (``pop_alpha``).

    Examples
    --------
    >>> counts = np.array([0.0, 4.0, 1.0, 9.0])
    >>> sampler = NegativeSampler(0.5)
    >>> rows, probs = sampler.draw(counts, 5, np.random.default_rng(0))
    >>> counts[2] += 3.0
    >>> sampler.touch(2)
    >>> again, _ = sampler.draw(counts, 5, np.random.default_rng(1))
    >>> again.tolist() == sample_negatives(counts, 5, 0.5, np.random.default_rng(1))[0].tolist()
    True
    """

    def __init__(self, alpha: float):
        self.alpha = alpha
        self._weights = np.zeros(0, dtype=np.float64)  # counts ** alpha, per row
        self._cdf = np.zeros(0, dtype=np.float64)  # np.cumsum(_weights), over the first _valid rows
        self._valid = 0  # rows whose weights and sums are current
        self._touched: list[int] = []  # rows whose count changed since the last draw

    def touch(self, rows: int | np.ndarray) -> None:
        """Note that the count of ``rows`` (one or many) changed."""
        if isinstance(rows, (int, np.integer)):
            self._touched.append(int(rows))
        else:
            self._touched.extend(np.asarray(rows, dtype=np.int64).reshape(-1).tolist())

    def reset(self) -> None:
        """Forget the kept sums (any or every count may have changed)."""
        self._valid = 0
        self._touched = []

    def draw(self, counts: np.ndarray, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """``sample_negatives(counts, n, alpha, rng)``."""
        return _draw(self._sums(counts), counts, n, self.alpha, rng)

    def _sums(self, counts: np.ndarray) -> np.ndarray:
        """The cumulative sums of ``counts ** alpha`` (a view of the kept array)."""
        size = len(counts)
        if len(self._cdf) < size:  # room doubles, as the model's tables
            capacity = max(size, 2 * len(self._cdf), 64)
            self._weights = np.resize(self._weights, capacity)
            self._cdf = np.resize(self._cdf, capacity)
        kept = min(self._valid, size)  # rows whose weights are current, but for the touched ones
        self._weights[kept:size] = counts[kept:size] ** self.alpha
        first = kept  # the first row whose sum changes
        touched = [r for r in self._touched if r < kept]
        if touched:
            at = np.array(touched, dtype=np.int64)
            self._weights[at] = counts[at] ** self.alpha  # element-wise: the same as over all counts
            first = int(at.min())
        if first == 0:
            np.cumsum(self._weights[:size], out=self._cdf[:size])
        elif first < size:  # the sequential sum goes on from the kept one before the first change
            part = self._cdf[first:size]
            part[0] = self._cdf[first - 1] + self._weights[first]
            part[1:] = self._weights[first + 1 : size]
            np.cumsum(part, out=part)
        self._valid, self._touched = size, []
        return self._cdf[:size]

    def __getstate__(self) -> dict[str, Any]:
        return {"alpha": self.alpha}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["alpha"])


def rowwise_adagrad(table: np.ndarray, acc: np.ndarray, rows: np.ndarray, grads: np.ndarray, lr: float,
                    l2: float = 0.0, groups: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
                    ordered: bool = False) -> None:
    """Row-wise Adagrad on ``table`` (in place): one squared-gradient sum per row (``acc``,
    the mean over the row's columns), gradients of repeated rows summed first.

    numpy only: torch would run these small ops on its thread pool, which stalls while
    another process holds the other core. ``l2`` adds ``l2 * row`` to each row's gradient.
    ``groups``: ``row_groups(rows)``, when the caller has it; ``ordered``: ``grads`` come
    in its order already (``grads[order]``: built that way, they are gathered once).

    >>> table, acc = np.ones((3, 2), dtype=np.float32), np.zeros(3, dtype=np.float32)
    >>> rowwise_adagrad(table, acc, np.array([2, 0, 2]), np.full((3, 2), 0.5, dtype=np.float32), lr=0.1)
    >>> [round(x, 3) for x in table[:, 0].tolist()], acc.tolist()
    ([0.9, 1.0, 0.9], [0.25, 0.0, 1.0])
    """
    if len(rows) == 0:
        return
    groups = row_groups(rows) if groups is None else groups
    grad = (_run_sums(grads.astype(np.float32, copy=False), groups[1]) if ordered
            else summed_by_row(grads, groups))
    adagrad_rows(table, acc, groups[2], grad, lr, l2)


def summed_by_row(grads: np.ndarray, groups: tuple[np.ndarray, np.ndarray, np.ndarray]) -> np.ndarray:
    """The gradients of each distinct row of ``groups`` (``row_groups(rows)``) summed, as
    ``rowwise_adagrad`` sums them: each column on its own, so tables that share their rows
    can have their gradients side by side in one array and summed at once."""
    # ``take`` where indexing would do: the same rows, with less overhead on these small arrays
    return _run_sums(grads.take(groups[0], 0).astype(np.float32, copy=False), groups[1])


def adagrad_rows(table: np.ndarray, acc: np.ndarray, uniq: np.ndarray, grad: np.ndarray, lr: float,
                 l2: float = 0.0) -> None:
    """``rowwise_adagrad``'s step on the distinct rows ``uniq`` with their summed gradients
    ``grad`` (float32, one row each; it may be changed)."""
    leaf = table.take(uniq, 0)
    if l2:  # a freed item row's bias is -inf (it must never rank): it takes no decay
        grad += l2 * np.where(np.isfinite(leaf), leaf, np.float32(0.0))
    # the mean of squares as np.mean takes it (a sum, then a division by the count), without its wrapper
    mean_square = np.add.reduce(np.square(grad), axis=1)
    np.true_divide(mean_square, np.intp(grad.shape[1]), out=mean_square, casting="unsafe")
    summed = acc.take(uniq)
    summed += mean_square
    acc[uniq] = summed
    # leaf - lr * grad / (sqrt(summed) + 1e-8), the same operations in place on fresh arrays
    root = np.sqrt(summed)
    root += 1e-8
    change = np.multiply(grad, lr)
    change /= root[:, None]
    leaf -= change
    table[uniq] = leaf


def ring_slots(capacity: int, length: int, position: int, m: int) -> tuple[np.ndarray | slice, slice, int, int]:
    """Where ``m`` new entries go in a ring buffer of ``capacity`` slots holding ``length``
    entries, ``position`` being the oldest once it is full: free slots first, then the
    oldest entries.

    Returns the slots (a slice where they are one run: the next free ones, or the oldest
    without wrapping round), the slice of the new entries that get them (the last ones,
    when there are more entries than slots), and the new length and position.

    >>> slots, kept, length, position = ring_slots(4, 3, 0, 3)
    >>> slots.tolist(), kept, length, position
    ([3, 0, 1], slice(0, 3, None), 4, 2)
    >>> ring_slots(4, 1, 0, 2), ring_slots(4, 4, 1, 2)
    ((slice(1, 3, None), slice(0, 2, None), 3, 0), (slice(1, 3, None), slice(0, 2, None), 4, 3))
    """
    fill = min(capacity - length, m)
    last = slice(max(m - capacity, 0), m)  # more events than slots: the last ones win
    after = length + fill, (position + m - fill) % capacity
    if fill == m:
        return slice(length, length + m), last, *after
    if not fill and position + m <= capacity:
        return slice(position, position + m), last, *after
    wrap = (position + np.arange(m - fill)) % capacity
    slots = np.concatenate([np.arange(length, length + fill), wrap])
    return slots[last], last, *after


def grow_tensor(table: torch.Tensor, rows: int) -> torch.Tensor:
    """``table`` with room for at least ``rows`` rows (capacity doubles; new rows are 0).

    The new memory comes from numpy (zeroed by the system as it is first touched, where
    ``torch.zeros`` writes it all at once): growth is most of a new id's cost otherwise.
    """
    old = table.shape[0]
    if old >= rows:
        return table
    new = np.zeros((max(rows, 2 * old, 64),) + tuple(table.shape[1:]), dtype=table.numpy().dtype)
    new[:old] = table.numpy()
    return torch.from_numpy(new)


class QueuedItemLearner(Recommender):
    """Base of models whose item vectors learn from a queue of events (embeddings, sasrec).

    ``learn_one`` appends the item to the user's recent items at once (the next ranking
    follows it) and queues the event with the history before it; every ``batch_size``
    queued events make one step (``_step``) over them plus ``replay`` times as many drawn
    from a ring buffer of the last ``buffer_size`` events (``_take_batch``). Item tables
    are torch tensors with row-wise Adagrad sums in ``_acc``, grown as new items arrive,
    each item starting from ``initial_item_vectors``; a forgotten item's row is zeroed
    and its bias set to ``-inf`` until a new item takes it. Users move with their recent
    items and their queued events (``export_users``); the user table ``"recent"`` and
    the item tables follow ``online_models.tables``.

    A subclass sets ``_ITEM_TENSORS`` and, in ``__init__``, ``_users``, ``_items``,
    ``_rng``, the tensors and ``_acc``, and ``_init_queue(hist_dtype)``; it implements
    ``_start_item``, ``_learned``, ``_step`` and ``_forget_item_rows``, and may hook
    ``_forget_user_row``, ``_drop_from_buffer`` and ``_imported``.
    """

    USER_TABLES: ClassVar[dict[str, str]] = {"recent": "items"}
    _ITEM_TENSORS: ClassVar[tuple[tuple[str, str], ...]]
    """Each item tensor's attribute and the name of its Adagrad sums in ``_acc``."""

    def __getstate__(self) -> dict[str, Any]:
        """The state to pickle, each user's recent items as a list: pickle reduces each deque
        through ``copyreg`` (about 15 times the time of a list, a checkpoint's largest part
        for a model that has met many users); ``__setstate__`` makes them deques again."""
        state = self.__dict__.copy()
        recent = state.pop("_recent", None)
        if recent is not None:
            state["_recent_lists"] = dict(zip(recent, map(list, recent.values())))
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        state = dict(state)
        lists = state.pop("_recent_lists", None)
        self.__dict__.update(state)
        if lists is not None:  # (a state pickled before keeps its deques as they are)
            window = self.window
            self._recent = {user_id: deque(items, window) for user_id, items in lists.items()}

    def _init_queue(self, hist_dtype: type) -> None:
        self._recent: dict[str, deque[int]] = {}
        self._pending: list[tuple[int, int, tuple[int, ...], float]] = []  # user, item, history, weight
        self._buf_user = np.zeros(0, dtype=np.int64)
        self._buf_item = np.zeros(0, dtype=np.int64)
        self._buf_hist = np.zeros((0, self.window), dtype=hist_dtype)
        self._buf_weight = np.zeros(0, dtype=np.float32)
        self._buf_len = 0
        self._buf_pos = 0

    # -- growth ------------------------------------------------------------------------
    def _new_rows(self, table: torch.Tensor, acc_name: str, rows: int) -> torch.Tensor:
        old = table.shape[0]
        table = grow_tensor(table, rows)
        if table.shape[0] > old:
            self._acc[acc_name] = grow_tensor(self._acc[acc_name], table.shape[0])
        return table

    def _add_user(self, user_id: str) -> int:
        return self._users.add(user_id)

    def _add_item(self, item_id: str) -> int:
        row = self._items.get(item_id)
        if row is None:
            row = self._items.add(item_id)
            self._start_new_items(np.array([row]), [item_id])
        return row

    def _add_items(self, ids: Sequence[str]) -> np.ndarray:
        """The items' rows, in order; the new ones are started together, as ``_add_item``
        one by one would start them (the same rows, the same starting state)."""
        get = self._items.rows.get
        rows = list(map(get, ids))
        if None in rows:
            new_ids = list(dict.fromkeys(str(item_id) for item_id, row in zip(ids, rows) if row is None))
            self._start_new_items(np.array(self._items.add_new(new_ids), dtype=np.int64), new_ids)
            rows = list(map(get, ids))
        return np.array(rows, dtype=np.int64)

    def _start_new_items(self, rows: np.ndarray, item_ids: Sequence[str]) -> None:
        """Set up the rows just given to new items (new rows, or ones forgotten items freed):
        the tables grow once, a freed row's bias of ``-inf`` goes back to 0, then ``_start_items``."""
        top = int(rows.max()) + 1
        for name, acc in self._ITEM_TENSORS:
            setattr(self, name, self._new_rows(getattr(self, name), acc, top))
        self._item_bias.numpy()[rows] = 0.0  # a freed row's bias is -inf: it must never rank
        self._start_items(rows, item_ids)
        tables.rebase(self, rows)  # the items' tallies start from their init

    def _start_items(self, rows: np.ndarray, item_ids: Sequence[str]) -> None:
        """Give new items' rows their starting vectors (``_start_item`` for each, unless a
        subclass does them at once)."""
        for row, item_id in zip(rows.tolist(), item_ids):
            self._start_item(row, item_id)

    @abc.abstractmethod
    def _start_item(self, row: int, item_id: str) -> None:
        """Give a new item's row its starting vectors (and whatever else it keeps per item)."""

    # -- learning ----------------------------------------------------------------------
    def learn_one(self, interaction: Interaction) -> None:
        user_id = interaction.user_id
        user = self._add_user(user_id)
        item = self._add_item(interaction.item_id)
        weight = self.weight(interaction)
        self._learned(interaction, item, weight)
        recent = self._recent.get(user_id)
        if recent is None:
            recent = self._recent[user_id] = deque(maxlen=self.window)
        self._pending.append((user, item, tuple(reversed(recent)), weight))  # the history before the event
        recent.append(item)
        if len(self._pending) >= self.batch_size:
            self._step()

    @abc.abstractmethod
    def _learned(self, interaction: Interaction, item: int, weight: float) -> None:
        """Count the event for its item's popularity (``item`` is its row)."""

    @abc.abstractmethod
    def _step(self) -> None:
        """One gradient step over ``_take_batch()``."""

    def _remember(self, users: np.ndarray, items: np.ndarray, hists: np.ndarray, weights: np.ndarray) -> None:
        if len(self._buf_user) < self.buffer_size:
            size = min(self.buffer_size, max(2 * len(self._buf_user), 1024))
            self._buf_user = np.resize(self._buf_user, size)
            self._buf_item = np.resize(self._buf_item, size)
            self._buf_hist = np.resize(self._buf_hist, (size, self.window))
            self._buf_weight = np.resize(self._buf_weight, size)
        capacity, m = len(self._buf_user), len(users)
        if capacity == 0:
            return
        slots, last, self._buf_len, self._buf_pos = ring_slots(capacity, self._buf_len, self._buf_pos, m)
        self._buf_user[slots], self._buf_item[slots] = users[last], items[last]
        self._buf_hist[slots], self._buf_weight[slots] = hists[last], weights[last]

    def _take_batch(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """The queued events, then ``replay`` times as many drawn from the replay buffer, as
        arrays: users, items, histories (rows, most recent first, ``-1`` after the last) and
        weights. The queue empties into the buffer."""
        pending, self._pending = self._pending, []
        users, items, hist_of, weights = zip(*pending) if pending else ((), (), (), ())
        users, items = np.array(users, dtype=np.int64), np.array(items, dtype=np.int64)
        weights = np.array(weights, dtype=np.float32)
        lengths = np.fromiter(map(len, hist_of), dtype=np.int64, count=len(hist_of))
        hists = np.full((len(pending), self.window), -1, dtype=self._buf_hist.dtype)
        # each history fills its row from the left: the cells before its length, in row-major order
        hists[np.arange(self.window) < lengths[:, None]] = np.fromiter(
            itertools.chain.from_iterable(hist_of), dtype=hists.dtype, count=int(lengths.sum()))
        n_replay = min(self._buf_len, self.replay * len(users))
        if n_replay:
            pick = self._rng.integers(0, self._buf_len, n_replay)
            replayed = self._buf_user[pick], self._buf_item[pick], self._buf_hist[pick], self._buf_weight[pick]
        self._remember(users, items, hists, weights)
        if n_replay:
            users, items, hists, weights = (np.concatenate(both) for both in zip((users, items, hists, weights),
                                                                                 replayed))
        return users, items, hists, weights

    # -- forgetting ----------------------------------------------------------------------
    def forget_user(self, user_id: str) -> None:
        """Drop the user's recent items and queued or replayable events, and free the user's
        row for a new user; the item vectors keep what they learned."""
        self._recent.pop(user_id, None)
        row = self._users.get(user_id)
        if row is None:
            return
        self._users.remove([user_id])
        self._forget_user_row(row)
        self._pending = [p for p in self._pending if p[0] != row]
        held = slice(0, self._buf_len)
        self._buf_weight[held][self._buf_user[held] == row] = 0.0

    def _forget_user_row(self, row: int) -> None:
        """Reset what the model keeps in a freed user row."""

    def forget_items(self, item_ids: Collection[str]) -> None:
        """Drop the items' vectors, popularity and events (queued, replayable, in users' recent
        items) and free their rows; a freed row's bias is ``-inf`` until a new item takes it."""
        rows = self._items.remove(item_ids)
        if not len(rows):
            return
        for name, acc in self._ITEM_TENSORS:
            getattr(self, name)[rows] = 0.0
            self._acc[acc][rows] = 0.0
        self._item_bias[rows] = -torch.inf
        self._forget_item_rows(item_ids, rows)
        tables.rebase(self, rows)  # a freed row has nothing to report
        gone = set(rows.tolist())
        self._pending = [(u, i, tuple(h for h in hist if h not in gone), w)
                         for u, i, hist, w in self._pending if i not in gone]
        held = slice(0, self._buf_len)
        self._buf_weight[held][np.isin(self._buf_item[held], rows)] = 0.0
        self._drop_from_buffer(rows)
        for user_id, recent in self._recent.items():
            if not gone.isdisjoint(recent):
                self._recent[user_id] = deque((r for r in recent if r not in gone), maxlen=self.window)

    @abc.abstractmethod
    def _forget_item_rows(self, item_ids: Collection[str], rows: np.ndarray) -> None:
        """Drop the popularity of the freed ``rows`` (items ``item_ids``)."""

    def _drop_from_buffer(self, rows: np.ndarray) -> None:
        """Take the freed ``rows`` out of the buffered histories (left as gaps, ``-1``)."""
        held = slice(0, self._buf_len)
        self._buf_hist[held][np.isin(self._buf_hist[held], rows)] = -1

    def state_sizes(self) -> dict[str, int]:
        return {"users": self._users.live(), "items": self._items.live()}

    # -- scale-out (online_models.tables) ---------------------------------------------
    def export_users(self, user_ids: Collection[str]) -> dict[str, Any]:
        """The users' tables and queued events, as flat arrays; items are named by id.

        Queued events go with their user so that the new owner takes their gradient step;
        the user's events in the replay buffer stay behind (``forget_user`` silences them
        here; the new owner replays the user's new events).

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
        self._imported()

    def _imported(self) -> None:
        """Called after ``import_users`` created items."""

    def _has_user(self, user_id: str) -> bool:
        return user_id in self._users

    def _user_get(self, name: str, user_id: str) -> Any:
        return np.array(self._recent.get(user_id, ()), dtype=np.int64), None  # "recent": oldest first

    def _user_put(self, name: str, user_id: str, value: Any) -> None:
        self._add_user(user_id)
        self._recent[user_id] = deque(value[0].tolist(), maxlen=self.window)

    # -- ranking -----------------------------------------------------------------------
    def recommend(self, user_id: str, k: int = 10, exclude: Collection[str] | None = None) -> Ranking:
        return self.recommend_many([user_id], k, {user_id: exclude} if exclude else None)[user_id]
