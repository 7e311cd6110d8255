"""Negative sampling with kept sums (sampled_softmax.NegativeSampler): the same draws, bit
for bit, as ``sample_negatives`` over the current counts, however the counts changed.
Pure unit tests, nothing timed."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from core.schema import Event
from online_models.embeddings import TorchEmbeddings
from online_models.sampled_softmax import NegativeSampler, sample_negatives


def twin(rng: np.random.Generator) -> np.random.Generator:
    """A generator in the same state that draws apart from ``rng``."""
    copy = np.random.Generator(type(rng.bit_generator)())
    copy.bit_generator.state = rng.bit_generator.state
    return copy


def assert_same_draws(sampler: NegativeSampler, counts: np.ndarray, n: int, rng: np.random.Generator) -> None:
    want_rows, want_probs = sample_negatives(counts, n, sampler.alpha, twin(rng))
    rows, probs = sampler.draw(counts, n, rng)
    assert rows.tolist() == want_rows.tolist()
    assert probs.tobytes() == want_probs.tobytes()


@pytest.mark.parametrize("alpha", [0.5, 0.75, 1.0, 0.0])
def test_draws_match_sample_negatives_as_counts_change_and_grow(alpha: float) -> None:
    """Random counts (event weights, some rows freed to 0), changed at random rows between
    draws (the first and last rows too), new rows appended, the kept sums dropped now and
    then: every draw is the function's, rows and probabilities bit for bit."""
    rng = np.random.default_rng(7)
    counts = np.zeros(0)
    sampler = NegativeSampler(alpha)
    for round_ in range(300):
        grown = int(rng.integers(0, 40)) if round_ % 7 else int(rng.integers(0, 3000))
        counts = np.concatenate([counts, rng.choice([0.5, 1.0, 2.0, 3.0], grown)])
        if len(counts) == 0:
            continue
        changed = rng.integers(0, len(counts), int(rng.integers(0, 40)))
        changed = np.concatenate([changed, [0] if round_ % 5 == 0 else [], [len(counts) - 1] if round_ % 3 else []])
        changed = changed.astype(np.int64)
        counts[changed] += rng.choice([0.5, 1.0, 2.0], len(changed))
        counts[changed[rng.random(len(changed)) < 0.1]] = 0.0  # freed rows
        for row in changed.tolist():
            sampler.touch(row)
        if round_ % 50 == 49:
            sampler.reset()
        assert_same_draws(sampler, counts, 128, rng)
    assert len(counts) > 10_000


def test_many_rows_touched_at_once_and_a_pickled_sampler() -> None:
    """``touch`` takes arrays; a pickled sampler keeps no sums and computes them again."""
    rng = np.random.default_rng(3)
    counts = rng.integers(0, 50, 20_000).astype(np.float64)
    sampler = NegativeSampler(0.5)
    assert_same_draws(sampler, counts, 64, rng)
    rows = rng.integers(0, len(counts), 500)
    counts[rows] *= 3.0
    sampler.touch(rows)
    assert_same_draws(sampler, counts, 64, rng)
    restored = pickle.loads(pickle.dumps(sampler))
    assert len(pickle.dumps(sampler)) < 1000
    counts[5] += 1.0
    restored.touch(5)
    assert_same_draws(restored, counts, 64, rng)


def test_an_untold_change_is_the_callers_bug() -> None:
    """The sums follow only what ``touch`` says (why the model tells it every change)."""
    counts = np.array([1.0, 1.0, 1.0, 1.0])
    sampler = NegativeSampler(1.0)
    sampler.draw(counts, 4, np.random.default_rng(0))
    counts[0] = 100.0
    _, probs = sampler.draw(counts, 4, np.random.default_rng(0))
    assert probs.max() > 1.0  # counts[0] / the old total: stale
    sampler.touch(0)
    _, probs = sampler.draw(counts, 4, np.random.default_rng(0))
    assert probs.max() == pytest.approx(100.0 / 103.0)


class CheckedEmbeddings(TorchEmbeddings):
    """Embeddings that check every negative draw against ``sample_negatives``."""

    draws_checked = 0

    def _sample_negatives(self, n_items: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        counts = self._counts[: len(self._items) if n_items is None else n_items]
        want_rows, want_probs = sample_negatives(counts, self.n_negatives, self.pop_alpha, twin(self._rng))
        rows, probs = super()._sample_negatives(n_items)
        assert rows.tolist() == want_rows.tolist() and probs.tobytes() == want_probs.tobytes()
        CheckedEmbeddings.draws_checked += 1
        return rows, probs


def events(rng: np.random.Generator, n: int, n_items: int, t0: float) -> list[Event]:
    items = (rng.zipf(1.3, n) - 1) % n_items
    users = rng.integers(0, 60, n)
    kinds = rng.choice(["view", "click", "purchase"], n)
    return [Event(user_id=f"u{u}", item_id=f"i{i}", type=str(k), ts=t0 + j)
            for j, (u, i, k) in enumerate(zip(users.tolist(), items.tolist(), kinds.tolist()))]


def test_the_models_draws_match_through_forgetting_merging_handover_and_restore() -> None:
    """Every draw of a learning model equals ``sample_negatives`` on its counts while items
    and users are forgotten, a peer's item delta (counts included) is merged, users are
    handed over, and the model is pickled (a checkpoint) and restored."""
    CheckedEmbeddings.draws_checked = 0
    rng = np.random.default_rng(11)
    model = CheckedEmbeddings(n_factors=8, batch_size=8, n_negatives=16, seed=3)
    peer = TorchEmbeddings(n_factors=8, batch_size=8, n_negatives=16, seed=3)
    peer.item_delta()  # the peer's shadow starts before it learns
    model.item_delta()
    for round_ in range(12):
        model.learn_many(events(rng, 150, 400, 1000.0 * round_))
        peer.learn_many(events(rng, 100, 600, 1000.0 * round_))
        model.merge_item_delta(peer.item_delta())
        model.forget_items([f"i{i}" for i in rng.integers(0, 400, 5).tolist()])
        model.forget_user(f"u{int(rng.integers(0, 60))}")
        moved = [f"u{u}" for u in rng.integers(0, 60, 3).tolist()]
        model.import_users(peer.export_users([u for u in moved if peer._has_user(u)]))
        if round_ % 4 == 3:
            model = pickle.loads(pickle.dumps(model))
    assert CheckedEmbeddings.draws_checked > 200


def test_same_vectors_as_the_function() -> None:
    """A model whose draws come from ``sample_negatives`` learns the same vectors."""

    class Reference(TorchEmbeddings):
        def _sample_negatives(self, n_items: int | None = None) -> tuple[np.ndarray, np.ndarray]:
            n = len(self._items) if n_items is None else n_items  # the items entered up to the step
            return sample_negatives(self._counts[:n], self.n_negatives, self.pop_alpha, self._rng)

    stream = events(np.random.default_rng(5), 3000, 2000, 0.0)
    kept, reference = TorchEmbeddings(n_factors=8, seed=2), Reference(n_factors=8, seed=2)
    kept.learn_many(stream)
    reference.learn_many(stream)
    assert kept._item_out.numpy().tobytes() == reference._item_out.numpy().tobytes()
    assert kept._item_bias.numpy().tobytes() == reference._item_bias.numpy().tobytes()
