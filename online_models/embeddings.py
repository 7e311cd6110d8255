"""Incremental PyTorch embeddings: user and item tables that grow with the stream."""

from __future__ import annotations

from collections import deque
from collections.abc import Collection, Mapping, Sequence

import numpy as np
import torch

from online_models._arrays import IdIndex, grow, top_k
from online_models.base import Interaction, Ranking, Recommender

_TIE_BREAK = 1e-6  # weight of log-popularity in scores: orders items before any training step
_CHUNK_CELLS = 1 << 21  # users x items scored at once: small enough to stay in cache


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
        Seeds initialisation, negative sampling and replay.
    event_weights
        Weight per event type (scales each event's loss); defaults to ``EVENT_WEIGHTS``.

    Examples
    --------
    >>> from stream.schema import Event
    >>> model = TorchEmbeddings(n_factors=8, batch_size=4, seed=1)
    >>> log = [("a", "x"), ("a", "y"), ("b", "x"), ("b", "y")] * 30 + [("c", "x")]
    >>> for t, (user, item) in enumerate(log):
    ...     model.learn_one(Event(user_id=user, item_id=item, type="view", ts=t))
    >>> model.recommend("c", k=1, exclude={"x"})[0][0]
    'y'
    """

    name = "embeddings"

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
        self._recent: dict[str, deque[int]] = {}
        self._pending: list[tuple[int, int, np.ndarray, float]] = []
        self._buf_user = np.zeros(0, dtype=np.int64)
        self._buf_item = np.zeros(0, dtype=np.int64)
        self._buf_hist = np.zeros((0, window), dtype=np.int64)
        self._buf_weight = np.zeros(0, dtype=np.float32)
        self._buf_len = 0
        self._buf_pos = 0
        self._powers = (recency_decay ** np.arange(window)).astype(np.float32)

    # -- growth ------------------------------------------------------------------------
    def _new_rows(self, table: torch.Tensor, acc_name: str, rows: int) -> torch.Tensor:
        old = len(table)
        table = _grow_tensor(table, rows)
        if len(table) > old:
            self._acc[acc_name] = _grow_tensor(self._acc[acc_name], len(table))
        return table

    def _init_row(self, table: torch.Tensor, row: int) -> None:
        table[row] = torch.from_numpy(self._rng.normal(0.0, self.init_std, self.n_factors).astype(np.float32))

    def _add_user(self, user_id: str) -> int:
        n = len(self._users)
        row = self._users.add(user_id)
        if row == n:
            self._user_vecs = self._new_rows(self._user_vecs, "user", row + 1)
            self._init_row(self._user_vecs, row)
        return row

    def _add_item(self, item_id: str) -> int:
        n = len(self._items)
        row = self._items.add(item_id)
        if row == n:
            self._item_in = self._new_rows(self._item_in, "in", row + 1)
            self._item_out = self._new_rows(self._item_out, "out", row + 1)
            self._item_bias = self._new_rows(self._item_bias, "bias", row + 1)
            self._init_row(self._item_in, row)
            self._init_row(self._item_out, row)
            self._counts = grow(self._counts, row + 1)
        return row

    # -- learning ----------------------------------------------------------------------
    def _history(self, user_id: str) -> np.ndarray:
        """The user's recent item rows, most recent first, padded with -1 to ``window``."""
        hist = np.full(self.window, -1, dtype=np.int64)
        recent = self._recent.get(user_id)
        if recent:
            items = list(recent)[::-1]
            hist[: len(items)] = items
        return hist

    def learn_one(self, interaction: Interaction) -> None:
        user = self._add_user(interaction.user_id)
        item = self._add_item(interaction.item_id)
        weight = self.weight(interaction)
        self._counts[item] += weight
        self._pending.append((user, item, self._history(interaction.user_id), weight))
        recent = self._recent.get(interaction.user_id)
        if recent is None:
            recent = self._recent[interaction.user_id] = deque(maxlen=self.window)
        recent.append(item)
        if len(self._pending) >= self.batch_size:
            self._step()

    def _remember(self, users, items, hists, weights) -> None:
        if len(self._buf_user) < self.buffer_size:
            size = min(self.buffer_size, max(2 * len(self._buf_user), 1024))
            self._buf_user = np.resize(self._buf_user, size)
            self._buf_item = np.resize(self._buf_item, size)
            self._buf_hist = np.resize(self._buf_hist, (size, self.window))
            self._buf_weight = np.resize(self._buf_weight, size)
        cap = len(self._buf_user)
        for u, i, h, w in zip(users, items, hists, weights):
            if self._buf_len < cap:
                pos = self._buf_len
                self._buf_len += 1
            else:
                pos = self._buf_pos
                self._buf_pos = (self._buf_pos + 1) % cap
            self._buf_user[pos], self._buf_item[pos], self._buf_hist[pos], self._buf_weight[pos] = u, i, h, w

    def _sample_negatives(self) -> tuple[np.ndarray, np.ndarray]:
        n = len(self._items)
        probs = self._counts[:n] ** self.pop_alpha
        probs /= probs.sum()
        cdf = np.cumsum(probs)
        rows = np.minimum(np.searchsorted(cdf, self._rng.random(self.n_negatives) * cdf[-1], side="right"), n - 1)
        return rows, probs[rows]

    def _step(self) -> None:
        users, items, hists, weights = zip(*self._pending)
        self._pending = []
        users, items = np.array(users), np.array(items)
        hists, weights = np.stack(hists), np.array(weights, dtype=np.float32)
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
        mask = hists >= 0
        hist_w = self._powers[None, :] * mask
        hist_w /= np.maximum(hist_w.sum(1, keepdims=True), 1e-12)
        hists = np.where(mask, hists, 0)
        item_rows = np.concatenate([items, negatives])
        leaves = {}

        def gather(name, table, rows):
            uniq, inverse = np.unique(rows, return_inverse=True)
            leaf = table[torch.from_numpy(uniq)].clone().requires_grad_()
            leaves[name] = (table, uniq, leaf)
            return leaf[torch.from_numpy(inverse.reshape(rows.shape))]

        user_vecs = gather("user", self._user_vecs, users)
        hist_vecs = gather("in", self._item_in, hists)
        out_vecs = gather("out", self._item_out, item_rows)
        bias = gather("bias", self._item_bias, item_rows)[:, 0]
        reps = user_vecs + (torch.from_numpy(hist_w)[:, :, None] * hist_vecs).sum(1)
        b = len(items)
        pos = (reps * out_vecs[:b]).sum(1) + bias[:b]
        neg = reps @ out_vecs[b:].T + bias[b:][None, :]
        hit = torch.from_numpy(items[:, None] == negatives[None, :])
        w = torch.from_numpy(weights)
        if self.loss == "softmax":
            log_q = torch.from_numpy(np.log(neg_probs * len(negatives)).astype(np.float32))
            logits = torch.cat([pos[:, None], (neg - log_q[None, :]).masked_fill(hit, -torch.inf)], 1)
            losses = torch.logsumexp(logits, 1) - logits[:, 0]
        else:
            diff = torch.nn.functional.logsigmoid(pos[:, None] - neg).masked_fill(hit, 0.0)
            losses = -diff.sum(1) / (~hit).sum(1).clamp(min=1)
        loss = (losses * w).sum() / w.sum().clamp(min=1e-12)
        if self.l2:
            loss = loss + self.l2 * sum((leaf**2).sum() for _, _, leaf in leaves.values()) / b
        loss.backward()
        with torch.no_grad():
            for name, (table, uniq, leaf) in leaves.items():
                rows = torch.from_numpy(uniq)
                grad = leaf.grad
                acc = self._acc[name]
                acc[rows] += (grad**2).mean(1)
                table[rows] = leaf - self.lr * grad / (acc[rows].sqrt() + 1e-8)[:, None]

    def forget_user(self, user_id: str) -> None:
        """Drop the user's vector, recent items and queued or replayable events.

        The row stays reserved for the id (zeroed); item vectors keep what they learned.
        """
        self._recent.pop(user_id, None)
        row = self._users.get(user_id)
        if row is None:
            return
        self._user_vecs[row] = 0.0
        self._acc["user"][row] = 0.0
        self._pending = [p for p in self._pending if p[0] != row]
        self._buf_weight[: self._buf_len][self._buf_user[: self._buf_len] == row] = 0.0

    # -- ranking -----------------------------------------------------------------------
    def _representations(self, user_ids: Sequence[str]) -> np.ndarray:
        d = self.n_factors
        reps = np.zeros((len(user_ids), d), dtype=np.float32)
        user_vecs, item_in = self._user_vecs.numpy(), self._item_in.numpy()
        for j, user_id in enumerate(user_ids):
            row = self._users.get(user_id)
            if row is not None:
                reps[j] = user_vecs[row]
            recent = self._recent.get(user_id)
            if recent:
                rows = list(recent)[::-1]
                w = self._powers[: len(rows)]
                reps[j] += (w / w.sum()) @ item_in[rows]
        return reps

    def _bias(self) -> np.ndarray:
        n = len(self._items)
        return self._item_bias.numpy()[:n, 0] + _TIE_BREAK * np.log1p(self._counts[:n]).astype(np.float32)

    def recommend(self, user_id: str, k: int = 10, exclude: Collection[str] | None = None) -> Ranking:
        return self.recommend_many([user_id], k, {user_id: exclude} if exclude else None)[user_id]

    def recommend_many(
        self, user_ids: Sequence[str], k: int = 10, exclude: Mapping[str, Collection[str]] | None = None
    ) -> dict[str, Ranking]:
        """Users scored by one float32 matrix product per chunk (as many as fit in cache)."""
        n = len(self._items)
        exclude = exclude or {}
        user_ids = list(user_ids)
        if n == 0:
            return {u: [] for u in user_ids}
        out_t = self._item_out[:n]
        bias = torch.from_numpy(self._bias())
        result: dict[str, Ranking] = {}
        step = max(1, _CHUNK_CELLS // n)
        for start in range(0, len(user_ids), step):
            chunk = user_ids[start : start + step]
            scores = torch.addmm(bias[None, :], torch.from_numpy(self._representations(chunk)), out_t.T).numpy()
            for j, user_id in enumerate(chunk):
                seen = exclude.get(user_id)
                rows, vals = top_k(scores[j], k, self._items.rows_of(seen) if seen else None)
                result[user_id] = self._items.ranking(rows, vals)
        return result

    def similar_items(self, item_id: str, k: int = 10) -> Ranking:
        """Items whose output vectors are closest (cosine) to this item's input vector."""
        row = self._items.get(item_id)
        if row is None:
            return []
        n = len(self._items)
        out = self._item_out.numpy()[:n]
        query = self._item_in.numpy()[row]
        sims = out @ query / (np.linalg.norm(out, axis=1) * np.linalg.norm(query) + 1e-12)
        rows, vals = top_k(sims, k + 1, np.array([row]))
        return self._items.ranking(rows[:k], vals[:k])
