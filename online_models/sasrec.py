"""A sequential neural recommender: SASRec-style self-attention over each user's last items,
learned online on micro-batches."""

from __future__ import annotations

import copy
import math
from collections.abc import Collection, Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from online_models import tables
from online_models._arrays import IdIndex, top_k
from online_models.base import Interaction, Ranking
from online_models.embeddings_ranking import top_k_by_product
from online_models.sampled_softmax import (TIE_BREAK, QueuedItemLearner, initial_item_vectors, rowwise_adagrad,
                                           sample_negatives)
from online_models.trending import POPULAR_NOW, POPULAR_STRATEGY, PopularityLink, ReadsPopularity, Trending

_ADAM_BETAS = (0.9, 0.999)


def _dense_layout(n_factors: int, window: int, n_layers: int) -> list[tuple[str, tuple[int, ...]]]:
    """Name and shape of each dense (not per-item) parameter, in their order in the flat vector."""
    d = n_factors
    layout: list[tuple[str, tuple[int, ...]]] = [("pos", (window, d))]
    for layer in range(n_layers):
        layout += [(f"ln1_w{layer}", (d,)), (f"ln1_b{layer}", (d,)), (f"wq{layer}", (d, d)), (f"wk{layer}", (d, d)),
                   (f"wv{layer}", (d, d)), (f"wo{layer}", (d, d)), (f"ln2_w{layer}", (d,)), (f"ln2_b{layer}", (d,)),
                   (f"w1{layer}", (d, d)), (f"b1{layer}", (d,)), (f"w2{layer}", (d, d)), (f"b2{layer}", (d,))]
    return layout + [("ln_w", (d,)), ("ln_b", (d,))]


def initial_dense(n_factors: int, window: int, n_layers: int, seed: int, init_std: float) -> torch.Tensor:
    """The dense weights drawn from ``seed`` alone (every replica starts from the same), flat."""
    generator = torch.Generator().manual_seed(seed)
    parts = []
    for name, shape in _dense_layout(n_factors, window, n_layers):
        if name.startswith(("ln1_w", "ln2_w", "ln_w")):
            parts.append(torch.ones(shape))
        elif name == "pos":
            parts.append(torch.randn(shape, generator=generator) * init_std)
        elif len(shape) == 2:
            parts.append(torch.randn(shape, generator=generator) / math.sqrt(shape[0]))
        else:
            parts.append(torch.zeros(shape))
    return torch.cat([p.reshape(-1) for p in parts])


def unflatten(flat: torch.Tensor, n_factors: int, window: int, n_layers: int) -> dict[str, torch.Tensor]:
    """Each dense weight as a view of the flat vector (one split: its backward is one
    concatenation, where one slice per weight would write a full-size gradient each)."""
    layout = _dense_layout(n_factors, window, n_layers)
    parts = torch.split(flat, [math.prod(shape) for _, shape in layout])
    return {name: part.view(shape) for (name, shape), part in zip(layout, parts)}


def encode(params: dict[str, torch.Tensor], table: torch.Tensor, hists: np.ndarray, n_heads: int,
           n_layers: int) -> torch.Tensor:
    """Representations ``(len(hists), n_factors)`` of sequences of rows of ``table`` (most
    recent first, ``-1`` after the last) through ``n_layers`` pre-norm Transformer blocks
    with weights ``params`` (``unflatten``); an empty sequence gives zeros."""
    lengths = (hists >= 0).sum(1)
    width = max(int(lengths.max(initial=0)), 1)  # padding past the longest sequence changes nothing
    hists = hists[:, :width]
    b, d, heads = len(hists), table.shape[1], n_heads
    valid = torch.from_numpy(hists >= 0)
    x = table[torch.from_numpy(np.maximum(hists, 0).astype(np.int64))] + params["pos"][:width]
    x = x * valid[:, :, None]
    # position j sees positions k >= j (itself and older items); a padding position sees itself only
    eye = torch.eye(width, dtype=torch.bool)
    blocked = ~(torch.ones((width, width), dtype=torch.bool).triu()[None] & (valid[:, None, :] | eye[None]))
    scale = 1.0 / math.sqrt(d // heads)
    for layer in range(n_layers):
        last = layer == n_layers - 1  # only the most recent position's output is used
        a = F.layer_norm(x, (d,), params[f"ln1_w{layer}"], params[f"ln1_b{layer}"])
        n_q = 1 if last else width
        if width == 1:  # one item: attention over one key returns its value
            mixed = a @ params[f"wv{layer}"]
        else:
            q = (a[:, :n_q] @ params[f"wq{layer}"]).view(b, n_q, heads, d // heads).transpose(1, 2)
            k = (a @ params[f"wk{layer}"]).view(b, width, heads, d // heads).transpose(1, 2)
            v = (a @ params[f"wv{layer}"]).view(b, width, heads, d // heads).transpose(1, 2)
            scores = (q @ k.transpose(2, 3)).masked_fill_(blocked[:, None, :n_q], -torch.inf)
            mixed = (torch.softmax(scores * scale, 3) @ v).transpose(1, 2).reshape(b, n_q, d)
        x = x[:, :n_q] + mixed @ params[f"wo{layer}"]
        h = F.layer_norm(x, (d,), params[f"ln2_w{layer}"], params[f"ln2_b{layer}"])
        x = x + torch.relu(h @ params[f"w1{layer}"] + params[f"b1{layer}"]) @ params[f"w2{layer}"] + params[f"b2{layer}"]
    rep = F.layer_norm(x[:, 0], (d,), params["ln_w"], params["ln_b"])
    return rep * torch.from_numpy(lengths > 0)[:, None]


class SASRec(ReadsPopularity, QueuedItemLearner):
    """Self-attention over each user's last ``window`` items (SASRec), learned online.

    A user is the sequence of their last ``window`` items, most recent first. Each item's
    vector plus a learned embedding of its recency position goes through ``n_layers``
    pre-norm Transformer blocks (``n_heads``-head self-attention in which a position sees
    itself and older ones, then a two-layer feed-forward network, each with a residual);
    the output at the most recent position, layer-normalised, is the user's
    representation. An item scores ``<representation, item vector> + item bias``: the
    item table is shared by input and output (as in SASRec), so an item met once as input
    is already a candidate. All items are scored with one float32 matrix product per chunk
    of users (``recommend_many``), after one batched forward pass per chunk.

    Why self-attention rather than a GRU (GRU4Rec): a forward pass over a batch of
    sequences is a few batched products, where a GRU takes ``window`` steps one after
    another (on one thread, per-step overhead dominates these small sizes); and the user
    state is only a list of item ids, recomputed from the current weights, where a GRU's
    carried hidden state goes stale as the weights learn (and must travel at hand-over).

    Learning (``QueuedItemLearner``): ``learn_one`` appends the item to the user's sequence
    at once (the next ranking already follows it) and queues the event with the sequence
    before it. Every ``batch_size`` queued events make one gradient step over them plus
    ``replay`` times as many drawn from a replay buffer of the last ``buffer_size`` events:
    a sampled softmax of each event's item against ``n_negatives`` items shared by the
    step, drawn in proportion to item popularity raised to ``pop_alpha`` (logQ-corrected),
    weighted by event type. Autograd gives the gradients; item rows take a row-wise Adagrad
    step (``lr``) on the rows the step touched only, the dense weights an Adam step
    (``dense_lr``). ``learn_many`` is ``learn_one`` in a loop: steps fall at the same events.

    Popularity (negatives, and a tie-break of ``1e-6 * log1p(popularity)`` in every score)
    is a ``Trending`` of event weights decayed with ``half_life_s``: the model's own
    standalone, or the one its owner (the worker, the evaluator) hands over with
    ``use_popularity`` and learns, forgets and shares.

    Tables grow with new ids (no fixed vocabulary). An item's starting vector is drawn
    from ``(seed, item id)`` alone and the dense weights from ``seed``, so replicas start
    alike; ``item_delta`` reports the change of item rows and of the dense weights since
    the last call (diffed against a shadow copy), and ``merge_item_delta`` adds a peer's
    (parameter-server style). Users move as their item sequences and queued events.

    Parameters
    ----------
    n_factors
        Size of item vectors and of the hidden layers.
    window
        How many of the user's last items the model attends to.
    n_layers
        Transformer blocks.
    n_heads
        Attention heads (must divide ``n_factors``).
    n_negatives
        Negatives sampled per gradient step (shared by the step's events).
    pop_alpha
        Exponent on item popularity for negative sampling (0: uniform).
    lr
        Adagrad learning rate of item vectors and biases.
    dense_lr
        Adam learning rate of the attention, feed-forward, position and norm weights.
    batch_size, replay, buffer_size
        The queue (``QueuedItemLearner``): events per gradient step, replayed events per new
        event in a step, and the replay buffer's capacity.
    init_std
        Standard deviation of new item vectors and of position embeddings.
    seed
        Seeds the dense weights, item vectors (with each item's id), negatives and replay.
    half_life_s
        Half-life of the item popularity (``None``: all-time counts).
    event_weights
        Weight per event type (scales each event's loss); defaults to ``EVENT_WEIGHTS``.

    Examples
    --------
    >>> from core.schema import Event
    >>> model = SASRec(n_factors=8, batch_size=8, n_negatives=4, seed=1)
    >>> for user in range(40):
    ...     for t, item in enumerate("abc"):
    ...         model.learn_one(Event(user_id=f"u{user}", item_id=item, type="click", ts=t))
    >>> model.learn_one(Event(user_id="new", item_id="b", type="click", ts=0))
    >>> model.recommend("new", k=1, exclude={"b"})[0][0]
    'c'
    >>> model.explain_items("new", ["c", "b", "zz"]), model.explain_items("nobody", ["c"])
    ([('sasrec', 'often viewed after b, which you viewed'), ('sasrec', 'in your recent items'), ('sasrec', None)], [('trending', 'popular now')])
    """

    name = "sasrec"
    ITEM_TABLES = {"vecs": "step", "bias": "sum", "acc_vecs": "sum", "acc_bias": "sum"}
    _ITEM_TENSORS = (("_item_vecs", "vecs"), ("_item_bias", "bias"))

    def __init__(
        self,
        n_factors: int = 64,
        window: int = 20,
        n_layers: int = 1,
        n_heads: int = 1,
        n_negatives: int = 128,
        pop_alpha: float = 0.5,
        lr: float = 0.1,
        dense_lr: float = 0.003,
        batch_size: int = 32,
        replay: int = 1,
        buffer_size: int = 50_000,
        init_std: float = 0.1,
        seed: int = 42,
        half_life_s: float | None = 3 * 24 * 3600.0,
        event_weights: Mapping[str, float] | None = None,
    ):
        self.n_factors = n_factors
        self.window = window
        self.n_layers = n_layers
        self.n_heads = n_heads
        self.n_negatives = n_negatives
        self.pop_alpha = pop_alpha
        self.lr = lr
        self.dense_lr = dense_lr
        self.batch_size = batch_size
        self.replay = replay
        self.buffer_size = buffer_size
        self.init_std = init_std
        self.seed = seed
        self.half_life_s = half_life_s
        self.event_weights = event_weights
        if n_factors % n_heads:
            raise ValueError(f"n_heads ({n_heads}) must divide n_factors ({n_factors})")
        if window < 1 or n_layers < 1:
            raise ValueError("window and n_layers must be at least 1")
        self._users = IdIndex()  # rows name a user's events in the queue and the replay buffer
        self._items = IdIndex()
        self._rng = np.random.default_rng(seed)
        self._item_vecs = torch.zeros((0, n_factors))
        self._item_bias = torch.zeros((0, 1))
        self._acc = {"vecs": torch.zeros(0), "bias": torch.zeros(0)}  # row-wise Adagrad sums
        self._trending = Trending(half_life_s=half_life_s, event_weights=event_weights)
        self._pop_link: PopularityLink | None = None  # the trending's rows are these rows until handed one
        self._owns_popularity = True
        self._init_queue(np.int32)
        self._dense = initial_dense(n_factors, window, n_layers, seed, init_std)
        self._adam_m = torch.zeros_like(self._dense)
        self._adam_v = torch.zeros_like(self._dense)
        self._adam_steps = 0
        self._shadow: dict[str, np.ndarray] | None = None  # item state as of the last delta; see item_delta
        self._dense_shadow: torch.Tensor | None = None  # the dense weights as of the last delta

    # -- the dense weights (module functions above) --------------------------------------
    def _params(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        return unflatten(flat, self.n_factors, self.window, self.n_layers)

    def _encode(self, params: dict[str, torch.Tensor], table: torch.Tensor, hists: np.ndarray) -> torch.Tensor:
        return encode(params, table, hists, self.n_heads, self.n_layers)

    # -- growth (QueuedItemLearner) -----------------------------------------------------
    def _start_item(self, row: int, item_id: str) -> None:
        vecs, _ = initial_item_vectors([item_id], self.seed, self.n_factors, self.init_std)
        self._item_vecs[row] = torch.from_numpy(vecs[0])
        self._add_popularity_items([item_id], np.array([row]))

    # -- learning ----------------------------------------------------------------------
    def _learned(self, interaction: Interaction, item: int, weight: float) -> None:
        self._learn_popularity(interaction, item)

    def _step(self) -> None:
        _, items, hists, weights = self._take_batch()
        live = weights > 0  # forgotten users' and items' events stay in the buffer with weight 0
        if live.any():
            self._gradient_step(items[live], hists[live], weights[live])

    def _gradient_step(self, items: np.ndarray, hists: np.ndarray, weights: np.ndarray) -> None:
        """One step on the weighted mean sampled-softmax loss of the events: row-wise Adagrad
        on the item rows involved, Adam on the dense weights."""
        negatives, neg_probs = sample_negatives(self._raw_popularity(), self.n_negatives, self.pop_alpha,
                                                self._rng)
        used = hists >= 0
        rows, local = np.unique(np.concatenate([items, negatives, hists[used]]), return_inverse=True)
        b, n_neg = len(items), len(negatives)
        local_hists = np.full(hists.shape, -1, dtype=np.int64)
        local_hists[used] = local[b + n_neg :]
        vecs = self._item_vecs[torch.from_numpy(rows)].requires_grad_()
        bias = self._item_bias[torch.from_numpy(rows), 0].requires_grad_()
        dense = self._dense.detach().requires_grad_()
        reps = self._encode(self._params(dense), vecs, local_hists)
        pos_rows, neg_rows = torch.from_numpy(local[:b]), torch.from_numpy(local[b : b + n_neg])
        pos = (reps * vecs[pos_rows]).sum(1) + bias[pos_rows]
        correction = torch.from_numpy(np.log(neg_probs * n_neg).astype(np.float32))
        neg = reps @ vecs[neg_rows].T + bias[neg_rows] - correction  # logQ correction
        neg = neg.masked_fill(torch.from_numpy(items[:, None] == negatives[None, :]), -torch.inf)
        share = torch.from_numpy(weights / weights.sum())
        loss = (share * (torch.logsumexp(torch.cat([pos[:, None], neg], 1), 1) - pos)).sum()
        loss.backward()
        rowwise_adagrad(self._item_vecs.numpy(), self._acc["vecs"].numpy(), rows, vecs.grad.numpy(), self.lr)
        rowwise_adagrad(self._item_bias.numpy(), self._acc["bias"].numpy(), rows, bias.grad.numpy()[:, None], self.lr)
        self._adam(dense.grad)

    def _adam(self, grad: torch.Tensor) -> None:
        beta1, beta2 = _ADAM_BETAS
        self._adam_steps += 1
        self._adam_m.mul_(beta1).add_(grad, alpha=1 - beta1)
        self._adam_v.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        step = self.dense_lr / (1 - beta1**self._adam_steps)
        denom = (self._adam_v / (1 - beta2**self._adam_steps)).sqrt_().add_(1e-8)
        self._dense.addcdiv_(self._adam_m, denom, value=-step)

    # -- forgetting (QueuedItemLearner) ---------------------------------------------------
    def _forget_item_rows(self, item_ids: Collection[str], rows: np.ndarray) -> None:
        self._forget_popularity(item_ids, rows)

    def _drop_from_buffer(self, rows: np.ndarray) -> None:
        """Take the freed ``rows`` out of the buffered sequences, closing the gaps (a
        sequence stays most recent first)."""
        hists = self._buf_hist[: self._buf_len]
        for j in np.flatnonzero(np.isin(hists, rows).any(1)).tolist():
            kept = hists[j][(hists[j] >= 0) & ~np.isin(hists[j], rows)]
            hists[j] = -1
            hists[j, : len(kept)] = kept

    # -- scale-out (online_models.tables and QueuedItemLearner) ------------------------
    def item_delta(self) -> dict[str, Any]:
        """What this model's own learning changed since the last call: per item row its
        vector, bias and their Adagrad sums; the dense weights' change; its popularity's.

        As ``TorchEmbeddings.item_delta``: rows are diffed against a shadow copy that the
        first call builds (items at their initial vectors, dense weights at their seeded
        start), and an item met since the last call reports its change from its starting
        vector. ``dense`` is the change of the flat dense weight vector, empty when
        nothing changed; a peer adds it (each replica keeps its own Adam moments).

        Returns
        -------
        dict
            ``items`` (str), ``vecs`` ``(n, n_factors)``, ``bias``, ``acc_vecs``,
            ``acc_bias`` (float32), one entry per item; ``dense`` (float32, all dense
            weights or none); its own trending's delta under keys prefixed ``popularity/``.
        """
        self._start_dense_shadow()
        delta = {**tables.item_delta(self), **self._popularity_delta()}
        change = self._dense - self._dense_shadow
        if bool(change.any()):
            delta["dense"] = change.numpy()
            self._dense_shadow = self._dense.clone()
        else:
            delta["dense"] = np.zeros(0, dtype=np.float32)
        return delta

    def merge_item_delta(self, delta: Mapping[str, Any]) -> None:
        """Add a peer's ``item_delta`` to the item state, the dense weights, the popularity
        and the shadows (so that it is not reported back); items not met yet start from
        their initial vectors."""
        self._start_dense_shadow()
        own, parts = tables.split(delta, ["popularity"])
        tables.merge_item_delta(self, own)
        self._merge_popularity(parts["popularity"])
        dense = np.asarray(own.get("dense", ()), dtype=np.float32)
        if dense.size:
            change = torch.from_numpy(dense.copy())
            self._dense += change
            self._dense_shadow += change

    def _start_dense_shadow(self) -> None:
        if self._dense_shadow is None:  # sharing starts: all learned so far is own
            self._dense_shadow = initial_dense(self.n_factors, self.window, self.n_layers, self.seed, self.init_std)

    def _item_tables(self) -> dict[str, np.ndarray]:
        """Writable views of the shared item tables' rows."""
        n = len(self._items)
        return {"vecs": self._item_vecs.numpy()[:n], "bias": self._item_bias.numpy()[:n, 0],
                "acc_vecs": self._acc["vecs"].numpy()[:n], "acc_bias": self._acc["bias"].numpy()[:n]}

    def _initial_items(self, ids: Sequence[str]) -> dict[str, np.ndarray]:
        return {"vecs": initial_item_vectors(ids, self.seed, self.n_factors, self.init_std)[0]}

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        if "_trending" not in state:  # saved when it kept all-time counts of its own, rows as its items'
            counts, shadow = self.__dict__.pop("_counts"), self._shadow
            self.__dict__.pop("_tie", None)
            self.half_life_s = None
            trending = self._trending = Trending(half_life_s=None, event_weights=self.event_weights)
            trending._items, trending._scores = copy.deepcopy(self._items), counts
            trending._max = float(counts.max(initial=0.0))
            if shadow is not None:
                trending._shadow = {"scores": shadow.pop("counts")}
            self._pop_link, self._owns_popularity = None, True

    # -- ranking -----------------------------------------------------------------------
    def _histories(self, user_ids: Sequence[str]) -> np.ndarray:
        hists = np.full((len(user_ids), self.window), -1, dtype=np.int64)
        recent_of = self._recent
        for j, user_id in enumerate(user_ids):
            recent = recent_of.get(user_id)
            if recent:
                hists[j, : len(recent)] = list(reversed(recent))
        return hists

    def _representations(self, user_ids: Sequence[str]) -> np.ndarray:
        """Each user's representation (zeros for a user with no sequence): one forward pass."""
        with torch.inference_mode():
            return self._encode(self._params(self._dense), self._item_vecs, self._histories(user_ids)).numpy()

    def _bias(self) -> np.ndarray:
        """The item biases plus the popularity tie-break."""
        n = len(self._items)
        return self._item_bias.numpy()[:n, 0] + (TIE_BREAK * np.log1p(self._raw_popularity())).astype(np.float32)

    def recommend_many(
        self, user_ids: Sequence[str], k: int = 10, exclude: Mapping[str, Collection[str]] | None = None
    ) -> dict[str, Ranking]:
        """Users encoded by one forward pass and scored by one float32 matrix product per
        chunk; each user's best items picked by ``top_k_per_user``. A user never seen (or
        forgotten) ranks by the learned item biases (popularity)."""
        n = len(self._items)
        user_ids = list(user_ids)
        if n == 0:
            return {u: [] for u in user_ids}
        ids = self._items.ids
        best = top_k_by_product(self._item_vecs[:n], torch.from_numpy(self._bias()), self._representations,
                                self._items, user_ids, k, exclude or {})
        return {u: list(zip(map(ids.__getitem__, rows), vals)) for u, (rows, vals) in zip(user_ids, best)}

    def _after(self, rows: Sequence[int]) -> np.ndarray:
        """The representations of one-item sequences: what the model expects after each item."""
        with torch.inference_mode():
            hists = np.asarray(rows, dtype=np.int64).reshape(-1, 1)
            return self._encode(self._params(self._dense), self._item_vecs, hists).numpy()

    def similar_items(self, item_id: str, k: int = 10) -> Ranking:
        """The items the model ranks first after ``item_id`` alone (what is clicked after it)."""
        row = self._items.get(item_id)
        if row is None:
            return []
        n = len(self._items)
        scores = self._item_vecs.numpy()[:n] @ self._after([row])[0] + self._bias()
        rows, vals = top_k(scores, k, np.array([row]))  # freed rows score -inf
        return self._items.ranking(rows, vals)

    def explain_items(self, user_id: str, item_ids: Sequence[str]) -> list[tuple[str, str | None]]:
        """Per item, why: an item of the user's sequence is "in your recent items"; another
        is "often viewed after X", X being the recent item after which the model scores it
        highest. A user without a sequence was served the items with the largest biases:
        "popular now". Unknown items get no reason (examples: the class docstring).
        """
        rows = [self._items.get(item) for item in item_ids]
        recent = list(dict.fromkeys(reversed(self._recent.get(user_id, ()))))  # most recent first
        if not recent:
            return [(POPULAR_STRATEGY, POPULAR_NOW) if row is not None else (self.name, None) for row in rows]
        explained: list[tuple[str, str | None]] = [(self.name, None)] * len(item_ids)
        known = [(pos, row) for pos, row in enumerate(rows) if row is not None]
        if not known:
            return explained
        after = self._item_vecs.numpy()[[row for _, row in known]] @ self._after(recent).T  # the bias is alike per item
        ids, in_recent = self._items.ids, set(recent)
        for (pos, row), best in zip(known, np.argmax(after, axis=1).tolist()):
            because = ids[recent[best]]
            reason = "in your recent items" if row in in_recent else f"often viewed after {because}, which you viewed"
            explained[pos] = (self.name, reason)
        return explained
