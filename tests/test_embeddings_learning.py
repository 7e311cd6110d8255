"""The embeddings' batched learning (``learn_many``: new users, items and counts of a stretch
added at once) against ``learn_one`` in a loop, the reference: the same numbers bit for bit,
not only the same lists, so that every backtest figure stays as it was."""

from __future__ import annotations

import pickle
from collections import deque

import numpy as np
import pytest

from core.schema import Event
from online_models import make_model
from online_models._arrays import IdIndex
from online_models.embeddings import TorchEmbeddings
from online_models.sampled_softmax import row_groups, rowwise_adagrad

SMALL = {"n_factors": 8, "batch_size": 8, "n_negatives": 16, "window": 5, "buffer_size": 300, "seed": 3}
TYPES = ("view", "click", "add_to_cart", "purchase")


def stream(n: int, n_items: int, n_users: int, seed: int, t0: float = 0.0) -> list[Event]:
    """Zipf-popular items and uniform users: new ids keep arriving, repeats within a batch."""
    rng = np.random.default_rng(seed)
    items = (rng.zipf(1.3, n) - 1) % n_items
    users = rng.integers(0, n_users, n)
    kinds = rng.integers(0, len(TYPES), n)
    return [Event(user_id=f"u{u}", item_id=f"i{i}", type=TYPES[k], ts=t0 + j)
            for j, (u, i, k) in enumerate(zip(users.tolist(), items.tolist(), kinds.tolist()))]


def state(model: TorchEmbeddings) -> dict[str, bytes]:
    """Everything the model learned, as bytes: tables, counts, tie-breaks, random state,
    queue, replay buffer, recent items and id maps."""
    n_users, n_items = len(model._users), len(model._items)
    arrays = {"user_vecs": model._user_vecs.numpy()[:n_users], "in": model._item_in.numpy()[:n_items],
              "out": model._item_out.numpy()[:n_items], "bias": model._item_bias.numpy()[:n_items],
              "counts": model._counts[:n_items], "tie": model._tie[:n_items],
              "buf_user": model._buf_user[: model._buf_len], "buf_item": model._buf_item[: model._buf_len],
              "buf_hist": model._buf_hist[: model._buf_len], "buf_weight": model._buf_weight[: model._buf_len]}
    arrays.update({f"acc_{name}": acc.numpy()[: n_users if name == "user" else n_items]
                   for name, acc in model._acc.items()})
    out = {name: array.tobytes() for name, array in arrays.items()}
    out["rng"] = pickle.dumps(model._rng.bit_generator.state)
    out["queue"] = pickle.dumps((model._pending, {u: list(r) for u, r in model._recent.items()}))
    out["ids"] = pickle.dumps((model._users.ids, model._items.ids, model._users.free, model._items.free))
    return out


def assert_same(batched: TorchEmbeddings, one_by_one: TorchEmbeddings) -> None:
    a, b = state(batched), state(one_by_one)
    assert [name for name in a if a[name] != b[name]] == []


def learn(model: TorchEmbeddings, events: list[Event], batch: int | None) -> None:
    """``learn_many`` on micro-batches of ``batch`` events, or ``learn_one`` (``None``)."""
    if batch is None:
        for event in events:
            model.learn_one(event)
    else:
        for start in range(0, len(events), batch):
            model.learn_many(events[start : start + batch])


OTHER = {**SMALL, "loss": "bpr", "l2": 0.01, "replay": 2, "event_weights": {"view": 0.5, "purchase": 3.0}}


UNIFORM = {**SMALL, "pop_alpha": 0.0}  # every entered item can be a negative: each step's own catalogue


@pytest.mark.parametrize("params", [SMALL, OTHER, UNIFORM], ids=["softmax", "bpr-l2-weights", "uniform-negatives"])
@pytest.mark.parametrize("batch", [1, 5, 8, 37, 500])
def test_learn_many_is_learn_one_bit_for_bit(batch: int, params: dict) -> None:
    """Micro-batches shorter, equal to and longer than ``batch_size``, across forgetting
    (freed rows taken by new ids) and with item sharing on (the shadow rebased for new items)."""
    models = [make_model("embeddings", **params), make_model("embeddings", **params)]
    events = stream(1500, 400, 150, seed=1)
    for model, size in zip(models, (batch, None)):
        model.item_delta()  # sharing on: new items rebase the shadow
        learn(model, events[:700], size)
        model.forget_user("u3")
        model.forget_items(["i0", "i5", "i77"])
        learn(model, events[700:], size)
    assert_same(*models)
    deltas = [model.item_delta() for model in models]
    for name in deltas[0]:
        assert np.asarray(deltas[0][name]).tobytes() == np.asarray(deltas[1][name]).tobytes(), name


def test_learn_many_after_adopting_a_long_queue() -> None:
    """Users imported with more queued events than ``batch_size``: the first event learned
    takes the step, as ``learn_one`` would; merged items are created in one call."""
    donor = make_model("embeddings", **{**SMALL, "batch_size": 1000})
    learn(donor, stream(300, 200, 40, seed=2), 50)
    users = [f"u{u}" for u in range(0, 40, 3)]
    exported, delta = donor.export_users(users), donor.item_delta()
    assert len(exported["pending_user"]) > SMALL["batch_size"]
    later = stream(200, 250, 60, seed=3, t0=1e4)
    models = [make_model("embeddings", **SMALL), make_model("embeddings", **SMALL)]
    for model, size in zip(models, (64, None)):
        learn(model, stream(100, 300, 50, seed=4), size)
        model.merge_item_delta(delta)
        model.import_users(exported)
        learn(model, later, size)
    assert_same(*models)


def test_new_items_start_as_one_by_one() -> None:
    """``_add_items`` with repeats and known ids gives the rows and starting state that
    ``_add_item`` one by one gives (sasrec shares it)."""
    ids = ["x", "y", "x", "z", "y", "w"]
    for name in ("embeddings", "sasrec"):
        batched, single = make_model(name), make_model(name)
        batched._add_item("y"), single._add_item("y")
        rows = batched._add_items(ids)
        assert rows.tolist() == [single._add_item(i) for i in ids] == [1, 0, 1, 2, 0, 3]
        for attr, _ in batched._ITEM_TENSORS:
            assert getattr(batched, attr)[:4].numpy().tobytes() == getattr(single, attr)[:4].numpy().tobytes()


def reference_adagrad(table, acc, rows, grads, lr, l2=0.0) -> None:
    """Row-wise Adagrad written plainly (every run summed by ``reduceat``, ``np.mean``)."""
    order = np.argsort(rows, kind="stable")
    ordered = rows[order]
    starts = np.flatnonzero(np.concatenate([[True], ordered[1:] != ordered[:-1]]))
    uniq = ordered[starts]
    grad = np.add.reduceat(grads[order].astype(np.float32), starts, axis=0)
    leaf = table[uniq]
    if l2:
        grad += l2 * leaf
    acc[uniq] += (grad**2).mean(1)
    table[uniq] = leaf - lr * grad / (np.sqrt(acc[uniq]) + 1e-8)[:, None]


@pytest.mark.parametrize("n_rows", [1, 40, 3000])
@pytest.mark.parametrize("l2", [0.0, 0.01])
@pytest.mark.parametrize("columns", [1, 7, 32])
def test_rowwise_adagrad_is_the_plain_one_bit_for_bit(n_rows: int, l2: float, columns: int) -> None:
    """Runs of one row, short runs and runs long enough for numpy's pairwise summation
    (over 8 and over 128 repeats), with grouping computed or handed in, gradients in
    event order or already in the grouping's order."""
    rng = np.random.default_rng(n_rows + columns)
    rows = np.concatenate([rng.integers(0, n_rows, 600), np.full(300, n_rows // 2), np.full(9, 0)])
    rng.shuffle(rows)
    grads = (rng.standard_normal((len(rows), columns)) * 10.0 ** rng.uniform(-6, 1, (len(rows), 1))).astype(np.float32)
    grads[::17] = -0.0
    table = rng.standard_normal((n_rows + 1, columns)).astype(np.float32)
    acc = rng.uniform(0, 1, n_rows + 1).astype(np.float32)
    groups = row_groups(rows)
    for given, ordered in ((None, False), (groups, False), (groups, True)):
        want_table, want_acc, got_table, got_acc = table.copy(), acc.copy(), table.copy(), acc.copy()
        reference_adagrad(want_table, want_acc, rows, grads, 0.1, l2)
        rowwise_adagrad(got_table, got_acc, rows, grads[groups[0]] if ordered else grads, 0.1, l2, given, ordered)
        assert got_table.tobytes() == want_table.tobytes() and got_acc.tobytes() == want_acc.tobytes()
    distinct = rng.permutation(n_rows + 1)[: min(n_rows + 1, 50)]  # every row once (sasrec's case)
    want_table, got_table, want_acc, got_acc = table.copy(), table.copy(), acc.copy(), acc.copy()
    reference_adagrad(want_table, want_acc, distinct, grads[: len(distinct)], 0.1, l2)
    rowwise_adagrad(got_table, got_acc, distinct, grads[: len(distinct)], 0.1, l2)
    assert got_table.tobytes() == want_table.tobytes() and got_acc.tobytes() == want_acc.tobytes()


@pytest.mark.parametrize("buffer_size", [1, 300, 1024, 1500])
def test_replay_buffer_is_a_ring_written_slot_by_slot(buffer_size: int) -> None:
    """``_remember`` (``ring_slots``: a run of slots as a slice where it can) leaves the
    buffer as a ring written slot by slot would: filling, full without and with wrapping
    round, and more entries than slots."""

    def ring_by_index(capacity, length, position, m):  # free slots first, then the oldest; the last m win
        fill = min(capacity - length, m)
        slots = np.concatenate([np.arange(length, length + fill), (position + np.arange(m - fill)) % capacity])
        last = slice(max(m - capacity, 0), m)
        return slots[last], last, length + fill, (position + m - fill) % capacity

    model = make_model("embeddings", **{**SMALL, "buffer_size": buffer_size})
    rng = np.random.default_rng(buffer_size)
    want = {"user": np.zeros(0, dtype=np.int64), "item": np.zeros(0, dtype=np.int64),
            "hist": np.zeros((0, model.window), dtype=model._buf_hist.dtype), "weight": np.zeros(0, dtype=np.float32)}
    length = position = 0
    for _ in range(120):
        m = int(rng.choice([0, 1, 7, 32, 64, 333, 2000]))
        users, items = rng.integers(0, 10**6, m), rng.integers(0, 10**6, m)
        hists = rng.integers(-1, 10**6, (m, model.window))
        weights = rng.uniform(0, 3, m).astype(np.float32)
        model._remember(users, items, hists, weights)
        capacity = len(model._buf_user)  # grown by _remember as before
        for name, size in want.items():
            want[name] = np.resize(want[name], (capacity, model.window) if name == "hist" else capacity)
        if capacity:
            slots, last, length, position = ring_by_index(capacity, length, position, m)
            want["user"][slots], want["item"][slots] = users[last], items[last]
            want["hist"][slots], want["weight"][slots] = hists[last], weights[last]
        assert (model._buf_len, model._buf_pos) == (length, position)
        assert model._buf_user.tobytes() == want["user"].tobytes()
        assert model._buf_item.tobytes() == want["item"].tobytes()
        assert model._buf_hist.tobytes() == want["hist"].tobytes()
        assert model._buf_weight.tobytes() == want["weight"].tobytes()


def test_a_restored_model_learns_on_as_the_one_never_pickled() -> None:
    """Users' recent items are pickled as lists and made deques (of ``window`` items) again:
    a model restored from a checkpoint now and then learns the same numbers as one never
    pickled; a state pickled with the deques themselves (before) still loads."""
    events = stream(900, 300, 120, seed=6)
    kept, restored = make_model("embeddings", **SMALL), make_model("embeddings", **SMALL)
    for start in range(0, len(events), 150):
        kept.learn_many(events[start : start + 150])
        restored.learn_many(events[start : start + 150])
        restored = pickle.loads(pickle.dumps(restored, protocol=pickle.HIGHEST_PROTOCOL))
        assert all(type(r) is deque and r.maxlen == SMALL["window"] for r in restored._recent.values())
    assert_same(restored, kept)
    older = object.__new__(TorchEmbeddings)
    older.__setstate__(dict(kept.__dict__))  # a state from before: "_recent" with its deques
    assert older._recent is kept._recent


def test_add_new_is_add_one_by_one() -> None:
    """``IdIndex.add_new`` takes freed rows in the order ``add`` takes them, then new rows."""
    rng = np.random.default_rng(5)
    batched, single = IdIndex(), IdIndex()
    for round_ in range(30):
        known = list(batched.rows)
        gone = [known[j] for j in rng.permutation(len(known))[: rng.integers(0, 6)]] if known else []
        batched.remove(gone), single.remove(gone)
        keys = list(dict.fromkeys(f"k{k}" for k in rng.integers(0, 200, rng.integers(1, 12)).tolist()))
        keys = [k for k in keys if k not in batched.rows]
        assert batched.add_new(keys) == [single.add(k) for k in keys]
        assert (batched.ids, batched.rows, batched.free) == (single.ids, single.rows, single.free)


def test_l2_leaves_freed_rows_finite_for_the_items_that_take_them_next() -> None:
    """With ``l2`` on, events of a forgotten item still in the replay buffer (weight 0)
    touch its freed row, whose bias is ``-inf``: the decay must not turn that row's Adagrad
    sums infinite, or the new item that takes the row could never learn its bias."""
    events = stream(3000, 60, 200, seed=5)
    model = TorchEmbeddings(**{**SMALL, "l2": 0.01})
    model.learn_many(events[:2000])
    model.forget_items(sorted({e.item_id for e in events[:2000]})[:20])
    with np.errstate(invalid="raise"):  # inf / inf in the step raised FloatingPointError before
        model.learn_many(events[2000:] + stream(1000, 200, 200, seed=6, t0=3000.0))
    for name, acc in model._acc.items():
        assert np.isfinite(acc.numpy()).all(), name
    live = model._item_bias.numpy()[model._item_bias.numpy() > -np.inf]
    assert np.isfinite(live).all()


@pytest.mark.parametrize("window", [1, 5, 20])
def test_representations_are_each_users_own_sum_bit_for_bit(window: int) -> None:
    """A batch's representations: per user, the user vector plus ``weights @ vectors`` of
    the recent items (most recent first), as one user at a time would sum them."""
    from online_models.embeddings import _history_weights

    rng = np.random.default_rng(window)
    model = TorchEmbeddings(n_factors=16, window=window, batch_size=8, seed=3)
    users = [f"u{length}" for length in range(1, window + 1) for _ in range(length)]  # every history length
    users += [f"v{n % 7}" for n in range(300)]
    for n, user in enumerate(rng.permutation(users).tolist()):
        model.learn_one(Event(user_id=user, item_id=f"i{int(rng.integers(0, 90))}", type="view", ts=n))
    model.forget_user("v0")
    users = [*model._recent, "v0", "stranger", "u1"]
    weights = _history_weights(model.recency_decay, model.window)
    expected = np.zeros((len(users), 16), dtype=np.float32)
    for j, user in enumerate(users):
        row = model._users.get(user)
        if row is not None:
            expected[j] = model._user_vecs.numpy()[row]
        recent = model._recent.get(user)
        if recent:
            expected[j] += weights[len(recent)] @ model._item_in.numpy()[list(reversed(recent))]
    assert {len(r) for r in model._recent.values()} == set(range(1, window + 1))
    assert model._representations(users).tobytes() == expected.tobytes()
