"""Incremental PyTorch embeddings: user and item tables that grow with the stream."""

from __future__ import annotations

import functools
from collections import deque
from collections.abc import Collection, Iterable, Mapping, Sequence
from itertools import chain, repeat
from typing import Any

import numpy as np
import torch

from online_models import tables
from online_models._arrays import IdIndex, grow, per_row, top_k
from online_models.base import Interaction, Ranking
from online_models.embeddings_ranking import EmbeddingsRanking
from online_models.sampled_softmax import (TIE_BREAK, NegativeSampler, QueuedItemLearner, adagrad_rows,
                                           initial_item_vectors, row_groups, rowwise_adagrad, summed_by_row)
from online_models.trending import POPULAR_NOW, POPULAR_STRATEGY

_EXPLAIN_CELLS = 1 << 21  # (recent item, listed item) pairs compared at once: bounds explain_rows' memory
# float32 vectors with entries below this (and fewer than 10**8 factors) have finite cosines:
# no product, sum of products or norm can overflow
_BOUNDED = 1e15


def set_torch_threads(n: int) -> None:
    """Torch's threads in this process. Online steps are small ops: more threads cost more
    than they give, and on a busy host they wait for each other (seen: multi-second stalls)."""
    torch.set_num_threads(n)


def _capacity(capacity: int, needs: Iterable[int], least: int) -> int:
    """The rows a table of ``capacity`` rows has after growing (doubling, at least ``least``,
    as ``grow`` and ``grow_tensor`` do) to hold ``needs[0]``, then ``needs[1]``, ... rows."""
    for need in np.asarray(needs).tolist():
        if need > capacity:
            capacity = max(need, 2 * capacity, least)
    return capacity


@functools.lru_cache(maxsize=16)
def _history_weights(recency_decay: float, window: int) -> tuple[np.ndarray, ...]:
    """Weights of a history of each length (index), most recent first, summing to 1."""
    powers = (recency_decay ** np.arange(window)).astype(np.float32)
    return (np.zeros(0, dtype=np.float32),) + tuple(powers[:n] / powers[:n].sum() for n in range(1, window + 1))



class TorchEmbeddings(EmbeddingsRanking, QueuedItemLearner):
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
    ``learn_many`` learns exactly what ``learn_one`` in a loop learns (the same numbers, bit
    for bit), with the new users and items of all its events entered at once and the counts
    of the events up to each step added at once.

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
    _ITEM_TENSORS = (("_item_in", "in"), ("_item_out", "out"), ("_item_bias", "bias"))

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
        self._tie = np.zeros(0, dtype=np.float32)  # TIE_BREAK * log1p(counts), per item
        self._negatives = NegativeSampler(pop_alpha)  # told of every change of _counts
        self._init_queue(np.int64)
        self._powers = (recency_decay ** np.arange(window)).astype(np.float32)
        self._shadow: dict[str, np.ndarray] | None = None  # item state as of the last delta; see item_delta

    # -- growth ------------------------------------------------------------------------
    def _add_user(self, user_id: str) -> int:
        """The user's row; a new user (a new row, or one a forgotten user freed) gets a random vector."""
        row = self._users.rows.get(user_id)
        if row is None:
            row = self._users.add(user_id)
            self._user_vecs = self._new_rows(self._user_vecs, "user", row + 1)
            self._draw_user_vectors(np.array([row]))
        return row

    def _draw_user_vectors(self, rows: np.ndarray) -> None:
        """New users' random vectors, in order: one draw of (users, factors) takes the
        generator's numbers in the order one draw per user would."""
        self._user_vecs.numpy()[rows] = self._rng.normal(0.0, self.init_std, (len(rows), self.n_factors)
                                                         ).astype(np.float32)

    def _start_item(self, row: int, item_id: str) -> None:
        self._start_items(np.array([row]), [item_id])

    def _start_items(self, rows: np.ndarray, item_ids: Sequence[str]) -> None:
        vec_in, vec_out = initial_item_vectors(item_ids, self.seed, self.n_factors, self.init_std)
        self._item_in.numpy()[rows] = vec_in
        self._item_out.numpy()[rows] = vec_out
        self._counts = grow(self._counts, int(rows.max()) + 1)

    # -- learning ----------------------------------------------------------------------
    def learn_many(self, interactions: Iterable[Interaction]) -> None:
        """``learn_one`` in a loop, done a stretch at a time: the events up to the next
        gradient step have their counts added at once, then the step.

        The users and items of all the events are entered first, as the stretches one by one
        would enter them (the same rows, starting vectors and table capacities); only the new
        users' random vectors are drawn stretch by stretch, in between the steps' draws from
        the same generator, and each step's negatives are drawn from the items entered up to
        its stretch, as then. While freed item rows wait for new items, items are entered
        stretch by stretch."""
        events = list(interactions)
        if not events:
            return
        user_ids = [event.user_id for event in events]
        weights = self.weights_of(events)
        ends = self._stretch_ends(len(events))
        users, first_new, new_users = self._enter_users(user_ids, ends)
        item_ids = [event.item_id for event in events]
        # A freed item row keeps its -inf bias and zero vectors until its new item comes (the
        # replayed events of the forgotten item still touch it, under l2): with freed rows,
        # items are entered stretch by stretch.
        at_once = not self._items.free
        if at_once:
            items_before = len(self._items)
            items = self._enter_items(item_ids, ends)
            # the item rows entered up to each event: len(self._items) then
            items_up_to = np.maximum(np.maximum.accumulate(items) + 1, items_before).tolist()
        weight_array = np.array(weights)
        recent_of, pending, window = self._recent, self._pending, self.window
        start = drawn = 0
        for end in ends:
            stretch = self._add_items(item_ids[start:end]) if not at_once else items[start:end]
            if first_new is not None:  # the stretch's new users get their vectors, in order of arrival
                upto = int(np.searchsorted(first_new, end))
                if upto > drawn:
                    self._draw_user_vectors(new_users[drawn:upto])
                    drawn = upto
            self._count(stretch, weight_array[start:end])
            for user_id, user, item, weight in zip(user_ids[start:end], users[start:end], stretch.tolist(),
                                                   weights[start:end]):
                recent = recent_of.get(user_id)
                if recent is None:  # a new user: no history before the event
                    recent_of[user_id] = deque((item,), window)
                    pending.append((user, item, (), weight))
                else:
                    pending.append((user, item, tuple(reversed(recent)), weight))  # the history before the event
                    recent.append(item)
            if len(pending) >= self.batch_size:
                self._step(items_up_to[end - 1] if at_once else None)
                pending = self._pending  # the step took the queue and left a new one
            start = end

    def _stretch_ends(self, n: int) -> list[int]:
        """Where each stretch of ``n`` events ends: the first fills the queue to ``batch_size``
        (at least one event), each next one is ``batch_size`` events."""
        first = max(self.batch_size - len(self._pending), 1)
        return list(range(min(first, n), n, max(self.batch_size, 1))) + [n] if first < n else [n]

    def _enter_users(self, user_ids: Sequence[str], ends: Sequence[int]
                     ) -> tuple[list[int], np.ndarray | None, np.ndarray]:
        """The users' rows, new users entered (their vectors not drawn yet), and the table
        grown as the stretches ending at ``ends`` would grow it; also where each new user
        first comes (event positions, ascending; ``None``: no new user) and their rows."""
        get = self._users.rows.get
        rows = list(map(get, user_ids))
        if None not in rows:
            return rows, None, np.zeros(0, dtype=np.int64)
        was_new = np.fromiter((row is None for row in rows), dtype=bool, count=len(rows))
        self._users.add_new(list(dict.fromkeys(u for u, row in zip(user_ids, rows) if row is None)))
        rows = list(map(get, user_ids))
        row_array = np.array(rows, dtype=np.int64)
        at_new = np.flatnonzero(was_new)
        first_new = np.sort(at_new[np.unique(row_array[at_new], return_index=True)[1]])
        self._user_vecs = self._new_rows(self._user_vecs, "user", _capacity(
            self._user_vecs.shape[0], np.maximum.accumulate(row_array)[np.array(ends) - 1] + 1, 64))
        return rows, first_new, row_array[first_new]

    def _enter_items(self, item_ids: Sequence[str], ends: Sequence[int]) -> np.ndarray:
        """``_add_items`` of all the stretches' items at once, the tables grown as the
        stretches ending at ``ends`` one by one would grow them."""
        get = self._items.rows.get
        rows = list(map(get, item_ids))
        if None not in rows:
            return np.array(rows, dtype=np.int64)
        new_ids = list(dict.fromkeys(str(item_id) for item_id, row in zip(item_ids, rows) if row is None))
        new_rows = np.array(self._items.add_new(new_ids), dtype=np.int64)
        rows = np.array(list(map(get, item_ids)), dtype=np.int64)
        needs = np.maximum.accumulate(rows)[np.array(ends) - 1] + 1
        capacity = _capacity(self._item_in.shape[0], needs, 64)
        for name, acc in self._ITEM_TENSORS:
            setattr(self, name, self._new_rows(getattr(self, name), acc, capacity))
        self._counts = grow(self._counts, _capacity(len(self._counts), needs, 16))
        self._start_new_items(new_rows, new_ids)
        return rows

    def _learned(self, interaction: Interaction, item: int, weight: float) -> None:
        self._counts[item] += weight
        self._counted(item)

    def _count(self, items: np.ndarray, weights: np.ndarray) -> None:
        """Add the events' weights to their items' counts, in order."""
        np.add.at(self._counts, items, weights)  # unbuffered: a repeated item adds up in event order
        self._counted(items)

    def _counted(self, items: int | np.ndarray) -> None:
        """After the items' counts changed: refresh their popularity tie-breaks (kept per item:
        ranking reads them every call; a repeated item is written twice, with one value) and
        tell the negative sampler."""
        tie = self.__dict__.get("_tie")
        if tie is None or len(tie) < len(self._counts):  # grown, or state saved before it was kept
            self._refresh_tie()
        else:
            tie[items] = TIE_BREAK * np.log1p(self._counts[items]).astype(np.float32)
        self._negative_sampler().touch(items)

    def _negative_sampler(self) -> NegativeSampler:
        sampler = self.__dict__.get("_negatives")
        if sampler is None or sampler.alpha != self.pop_alpha:  # saved before it was kept, or alpha set since
            sampler = self._negatives = NegativeSampler(self.pop_alpha)
        return sampler

    def _sample_negatives(self, n_items: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``sample_negatives`` over the counts of the first ``n_items`` item rows (``None``:
        all), its sums kept (``NegativeSampler``)."""
        n = len(self._items) if n_items is None else n_items
        return self._negative_sampler().draw(self._counts[:n], self.n_negatives, self._rng)

    def _step(self, n_items: int | None = None) -> None:
        """A gradient step; ``n_items``: the item rows entered as of its last event (``None``:
        all), those negatives are drawn from."""
        users, items, hists, weights = self._take_batch()
        negatives, neg_probs = self._sample_negatives(n_items)
        self._gradient_step(users, items, hists, weights, negatives, neg_probs)

    def _gradient_step(self, users, items, hists, weights, negatives, neg_probs) -> None:
        """One Adagrad step on the rows the events touch, gradients written out by hand.

        The loss is the weighted mean over events of the sampled softmax (or BPR) loss, plus
        ``l2`` times the squared norm of the touched rows over the number of events.
        Autograd would spend most of a step on bookkeeping for these small tensors.
        """
        b = len(items)
        mask = hists >= 0
        hist_w = self._powers * mask
        hist_w /= np.maximum(hist_w.sum(1, keepdims=True), 1e-12)
        user_t, in_t = self._user_vecs.numpy(), self._item_in.numpy()
        out_t, bias_t = self._item_out.numpy(), self._item_bias.numpy()
        owner, at = mask.nonzero()  # the history entries in use, row by row: their event and place
        in_rows, in_w = hists[owner, at], hist_w[owner, at]
        # ``take`` where indexing would do: the same rows, with less overhead on these small arrays
        hist_vecs = in_t.take(np.maximum(hists, 0), 0)  # padding (-1) reads row 0 with weight 0
        reps = user_t.take(users, 0)
        reps += np.matmul(hist_w[:, None, :], hist_vecs)[:, 0]
        item_rows = np.concatenate([items, negatives])
        out_vecs, bias = out_t.take(item_rows, 0), bias_t.reshape(-1).take(item_rows)
        pos = np.einsum("ij,ij->i", reps, out_vecs[:b])
        pos += bias[:b]
        neg = reps @ out_vecs[b:].T
        neg += bias[b:]
        hit = np.equal.outer(items, negatives)
        scale = weights / max(float(weights.sum()), 1e-12)  # each event's share of the loss
        if self.loss == "softmax":
            logits = neg
            logits -= np.log(neg_probs * len(negatives)).astype(np.float32)  # logQ correction
            logits[hit] = -np.inf
            top = np.maximum(logits.max(1), pos)
            e_pos = pos - top
            np.exp(e_pos, out=e_pos)
            e_neg = logits - top[:, None]
            np.exp(e_neg, out=e_neg)
            norm = e_neg.sum(1)
            norm += e_pos  # e_pos + the sum: the same float (addition commutes)
            d_pos = e_pos / norm
            d_pos -= 1.0
            d_pos *= scale  # d loss / d positive score
            d_neg = e_neg
            d_neg *= (scale / norm)[:, None]  # d loss / d negative scores
        else:
            with np.errstate(over="ignore"):
                d_neg = 1.0 / (1.0 + np.exp(pos[:, None] - neg))  # sigmoid(neg - pos)
            d_neg[hit] = 0.0
            d_neg *= (scale / np.maximum((~hit).sum(1), 1))[:, None]
            d_pos = -d_neg.sum(1)
        d_reps = d_pos[:, None] * out_vecs[:b]
        d_reps += d_neg @ out_vecs[b:]
        self._adagrad("user", user_t, users, d_reps, b)
        in_groups = row_groups(in_rows)
        in_order = in_groups[0]  # each history entry's gradient, made in the order the rows are summed in
        in_grads = d_reps.take(owner.take(in_order), 0)
        in_grads *= in_w.take(in_order)[:, None]
        self._adagrad("in", in_t, in_rows, in_grads, b, in_groups, ordered=True)
        # the output vectors and biases share their rows: their gradients side by side, summed at once
        d = reps.shape[1]
        item_grads = np.empty((len(item_rows), d + 1), dtype=np.float32)
        np.multiply(d_pos[:, None], reps, out=item_grads[:b, :d])
        item_grads[b:, :d] = d_neg.T @ reps
        item_grads[:b, d] = d_pos
        item_grads[b:, d] = d_neg.sum(0)
        item_groups = row_groups(item_rows)
        summed = summed_by_row(item_grads, item_groups)
        l2 = 2.0 * self.l2 / b
        adagrad_rows(out_t, self._acc["out"].numpy(), item_groups[2], summed[:, :d], self.lr, l2)
        adagrad_rows(bias_t, self._acc["bias"].numpy(), item_groups[2], summed[:, d:], self.lr, l2)

    def _adagrad(self, name: str, table: np.ndarray, rows: np.ndarray, grads: np.ndarray, b: int,
                 groups: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None, ordered: bool = False) -> None:
        """Row-wise Adagrad on ``table`` (in place), gradients of repeated rows summed.

        numpy only: torch would run these small ops on its thread pool, which stalls
        while another process holds the other core.
        """
        rowwise_adagrad(table, self._acc[name].numpy(), rows, grads, self.lr, 2.0 * self.l2 / b, groups, ordered)

    # -- forgetting ----------------------------------------------------------------------
    def _forget_user_row(self, row: int) -> None:
        self._user_vecs[row] = 0.0
        self._acc["user"][row] = 0.0

    def _forget_item_rows(self, item_ids: Collection[str], rows: np.ndarray) -> None:
        self._counts[rows] = 0.0
        self._refresh_tie()
        self._negative_sampler().touch(rows)

    # -- scale-out (online_models.tables and QueuedItemLearner) ------------------------
    def _user_get(self, name: str, user_id: str) -> Any:
        if name == "recent":
            return super()._user_get(name, user_id)
        row = self._users.rows[user_id]
        return (self._user_vecs if name == "vectors" else self._acc["user"]).numpy()[row]

    def _user_put(self, name: str, user_id: str, value: Any) -> None:
        if name == "recent":
            super()._user_put(name, user_id, value)
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

    def _merged(self, rows: np.ndarray, item_tables: dict[str, np.ndarray]) -> None:
        self._refresh_tie()
        self._negative_sampler().touch(rows)

    def _refresh_tie(self) -> None:
        self._tie = TIE_BREAK * np.log1p(self._counts).astype(np.float32)

    def _imported(self) -> None:
        self._refresh_tie()

    # -- ranking (the batch paths: EmbeddingsRanking) -----------------------------------
    def _representations(self, user_ids: Sequence[str]) -> np.ndarray:
        """Each user's vector plus the recency-weighted sum of the input vectors of the
        user's recent items (zeros for a user the model does not know).

        The users with histories of one length are summed by one stacked product: numpy
        runs the same vector-matrix product per user as one user's ``weights @ vectors``
        (the same floats as one at a time)."""
        reps = np.zeros((len(user_ids), self.n_factors), dtype=np.float32)
        user_vecs, item_in = self._user_vecs.numpy(), self._item_in.numpy()
        rows = np.fromiter(map(self._users.rows.get, user_ids, repeat(-1)), dtype=np.int64, count=len(user_ids))
        known = rows >= 0
        reps[known] = user_vecs[rows[known]]
        recent = list(map(self._recent.get, user_ids, repeat(())))
        lengths = np.fromiter(map(len, recent), dtype=np.int64, count=len(recent))
        if not lengths.any():
            return reps
        weights = _history_weights(self.recency_decay, self.window)
        # the histories, most recent first, each user's packed to the front of a row
        history = np.zeros((len(user_ids), int(lengths.max())), dtype=np.int64)
        history[np.arange(history.shape[1]) < lengths[:, None]] = np.fromiter(
            chain.from_iterable(map(reversed, recent)), dtype=np.int64, count=int(lengths.sum()))
        for length in np.unique(lengths[lengths > 0]).tolist():
            users = np.flatnonzero(lengths == length)
            reps[users] += np.matmul(weights[length], item_in[history[users, :length]])
        return reps

    def _bias(self) -> np.ndarray:
        n = len(self._items)
        if "_tie" not in self.__dict__:  # state saved before the tie-break was kept
            self._refresh_tie()
        return self._item_bias.numpy()[:n, 0] + self._tie[:n]

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

    def explain_rows(self, user_ids: Sequence[str], rows: np.ndarray, index: IdIndex
                     ) -> list[list[tuple[str, str | None]]]:
        """``explain_items`` for every user's listed items at once (``rows``: item rows of
        ``index``, ``-1`` where none), with the same words: the cosines of each user's
        recent items with the listed items in one batched product per chunk of users, on
        the listed items this model knows only (each user's packed to the front of a row)."""
        user_ids = list(user_ids)
        listed = rows >= 0
        own = self._items.rows_from(index, rows)  # -1: a hole or an item this model does not know
        # the output vectors' norms by row, np.linalg.norm row by row as explain_items takes them
        out_norms = np.linalg.norm(self._item_out.numpy()[: len(self._items)], axis=1)
        # each user's distinct recent items, most recent first (explain_items' order: ties to the newer)
        # (a history of one item, most users' where most are new, is its own distinct items)
        recent = [items if len(items) < 2 else dict.fromkeys(reversed(items))
                  for items in map(self._recent.get, user_ids, repeat(()))]
        sizes = np.fromiter(map(len, recent), dtype=np.int64, count=len(recent))
        width = int(sizes.max(initial=0))
        mine = np.full((len(user_ids), width), -1, dtype=np.int64)
        mine[np.arange(width) < sizes[:, None]] = np.fromiter(
            chain.from_iterable(recent), dtype=np.int64, count=int(sizes.sum()))
        best = np.full(rows.shape, -1, dtype=np.int64)  # the explaining recent item's row, -1: none
        asked = (own >= 0) & (sizes > 0)[:, None]
        if asked.any():
            place = np.cumsum(asked, axis=1) - 1  # each asked cell's column once packed
            counts = place[:, -1] + 1
            has_asked = counts > 0
            users = np.flatnonzero(has_asked)
            packed = np.full((len(users), int(counts.max())), -1, dtype=np.int64)
            cells = (np.nonzero(asked)[0], place[asked])
            rank_of_user = np.cumsum(has_asked) - 1
            packed[rank_of_user[cells[0]], cells[1]] = own[asked]
            packed_best = self._closest_recent(mine[users], packed, out_norms)
            best[asked] = packed_best[rank_of_user[cells[0]], cells[1]]
        # what each listed cell says, as a code: -2 popular now, -1 no reason, else the row of
        # the recent item it is close to; each distinct reason is written once
        codes = np.where((sizes == 0)[:, None], np.where(own >= 0, -2, -1), best)[listed]
        seen = np.zeros(len(self._items.ids) + 2, dtype=bool)
        seen[codes + 2] = True
        distinct = np.flatnonzero(seen)
        at = np.empty(len(seen), dtype=np.int64)
        at[distinct] = np.arange(len(distinct))
        ids, name = self._items.ids, self.name
        reasons = np.empty(len(distinct), dtype=object)
        for n, c in enumerate((distinct - 2).tolist()):  # one by one: numpy would read tuples as rows
            reasons[n] = ((POPULAR_STRATEGY, POPULAR_NOW) if c == -2 else (name, None) if c == -1
                          else (name, f"close to {ids[c]}, which you viewed recently"))
        return per_row(reasons[at[codes + 2]].tolist(), listed)

    def _closest_recent(self, mine: np.ndarray, targets: np.ndarray, out_norms: np.ndarray) -> np.ndarray:
        """Per cell of ``targets`` (item rows, ``-1``: none), the row of the user's recent
        item in ``mine`` (``-1`` padded) with the largest cosine, the item itself left out
        and ties to the first; ``-1`` where none is finite.

        A user with one recent item (most, where most users are new) needs no cosine: every
        cosine of vectors whose entries are finite and below ``_BOUNDED`` is finite, so that
        item is the closest to every cell but itself."""
        best = np.full(targets.shape, -1, dtype=np.int64)
        if mine.shape[1] == 0:
            return best
        single = mine[:, 1] < 0 if mine.shape[1] > 1 else np.ones(len(mine), dtype=bool)
        first, wanted = mine[single, :1], targets[single]
        if single.any() and self._bounded_vectors(first, wanted[wanted >= 0]):
            best[single] = np.where((wanted >= 0) & (wanted != first), first, -1)
            if single.all():
                return best
            rest = ~single
            best[rest] = self._closest_recent_by_cosine(mine[rest], targets[rest], out_norms)
            return best
        return self._closest_recent_by_cosine(mine, targets, out_norms)

    def _bounded_vectors(self, in_rows: np.ndarray, out_rows: np.ndarray) -> bool:
        """Whether every entry of these rows' input and output vectors (those a cosine of
        them reads) is finite and below ``_BOUNDED``."""
        return all(float(np.abs(table.numpy()[rows.ravel()]).max(initial=0.0)) < _BOUNDED
                   for table, rows in ((self._item_in, in_rows), (self._item_out, out_rows)))

    def _closest_recent_by_cosine(self, mine: np.ndarray, targets: np.ndarray, out_norms: np.ndarray
                                  ) -> np.ndarray:
        """``_closest_recent`` by the cosines of every recent item with every target."""
        best = np.full(targets.shape, -1, dtype=np.int64)
        item_in, item_out = self._item_in.numpy(), self._item_out.numpy()
        chunk = max(1, _EXPLAIN_CELLS // max(mine.shape[1] * targets.shape[1], 1))
        for start in range(0, len(mine), chunk):
            part, wanted = mine[start : start + chunk], targets[start : start + chunk]
            vecs, outs = item_in[np.maximum(part, 0)], item_out[np.maximum(wanted, 0)]
            norms = np.linalg.norm(vecs, axis=2)[:, :, None] * out_norms[np.maximum(wanted, 0)][:, None, :] + 1e-12
            sims = np.matmul(vecs, outs.transpose(0, 2, 1)) / norms
            sims[(part[:, :, None] < 0) | (part[:, :, None] == wanted[:, None, :])] = -np.inf
            at = np.argmax(sims, axis=1)
            found = np.isfinite(np.take_along_axis(sims, at[:, None, :], axis=1)[:, 0, :]) & (wanted >= 0)
            best[start : start + chunk] = np.where(found, np.take_along_axis(part, at, axis=1), -1)
        return best

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
