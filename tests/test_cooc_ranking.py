"""Cooc's batch top-k: the popular rows merged into each user's own entries on arrays rank
exactly as one top-k of all the candidates (pure unit tests, no services)."""

from __future__ import annotations

import numpy as np
import pytest

from online_models.cooc_ranking import _merge_popular, _top_k_of_entries


def _candidates(seed: int, n: int, n_users: int, depth: int):
    """Random entries (distinct rows per user), popular rows and exclusions, with many
    equal scores so that ties between entries and popular rows are common."""
    rng = np.random.default_rng(seed)
    users, rows = [], []
    for u in range(n_users):
        own = rng.choice(n, size=int(rng.integers(0, min(n, 3 * depth))), replace=False)
        users.append(np.full(len(own), u))
        rows.append(np.sort(own) if seed % 2 else own)
    users, rows = np.concatenate(users).astype(np.int64), np.concatenate(rows).astype(np.int64)
    by_popularity = rng.integers(0, 6, n) / 8.0
    by_popularity[rng.choice(n, size=n // 10, replace=False)] = -np.inf  # freed rows
    scores = by_popularity[rows] + rng.integers(-1, 4, len(rows)) / 8.0
    popular = rng.choice(n, size=depth, replace=False)
    excluded = rng.random(len(rows)) < 0.1
    scores[excluded] = -np.inf  # excluded entries never rank
    at_user = np.concatenate([users[excluded], rng.integers(0, n_users, 5)])
    at_item = np.concatenate([rows[excluded], rng.choice(popular, 5)])
    return users, rows, scores, popular, by_popularity, at_user, at_item


def _all_at_once(users, rows, scores, popular, by_popularity, at_user, at_item, n, n_users, k):
    """The reference: the popular rows each user neither holds nor excludes, appended to
    the entries, and one top-k of them all."""
    listed = {(u, r) for u, r in zip(users.tolist(), rows.tolist())}
    listed |= set(zip(at_user.tolist(), at_item.tolist()))
    extra = [(u, r) for u in range(n_users) for r in popular.tolist() if (u, r) not in listed]
    extra_users = np.array([u for u, _ in extra], dtype=np.int64)
    extra_rows = np.array([r for _, r in extra], dtype=np.int64)
    return _top_k_of_entries(np.concatenate([users, extra_users]), np.concatenate([rows, extra_rows]),
                             np.concatenate([scores, by_popularity[extra_rows]]), n_users, k)


@pytest.mark.parametrize("seed", range(12))
def test_merging_the_popular_rows_ranks_as_one_top_k_of_all(seed: int) -> None:
    n, n_users, depth = 60, 25, 12
    users, rows, scores, popular, by_popularity, at_user, at_item = _candidates(seed, n, n_users, depth)
    for k in (1, 5, depth, 3 * depth):
        want = _all_at_once(users, rows, scores, popular, by_popularity, at_user, at_item, n, n_users, k)
        got = _merge_popular(users, rows, scores, popular, by_popularity[popular], at_user, at_item, n, n_users, k)
        assert np.array_equal(got[0], want[0]), (seed, k)
        assert np.array_equal(got[1], want[1]), (seed, k)


@pytest.mark.parametrize("seed", range(6))
def test_users_without_entries_get_the_popular_rows(seed: int) -> None:
    n, n_users, depth = 60, 25, 12
    users, rows, scores, popular, by_popularity, at_user, at_item = _candidates(seed, n, n_users, depth)
    some, some_excluding = users % 3 == 0, at_user % 4 == 1  # the others have neither entries nor exclusions
    users, rows, scores, at_user, at_item = users[some], rows[some], scores[some], at_user[some_excluding], \
        at_item[some_excluding]
    for k in (1, 5, depth, 3 * depth):
        want = _all_at_once(users, rows, scores, popular, by_popularity, at_user, at_item, n, n_users, k)
        got = _merge_popular(users, rows, scores, popular, by_popularity[popular], at_user, at_item, n, n_users, k)
        assert np.array_equal(got[0], want[0]) and np.array_equal(got[1], want[1]), (seed, k)


def test_no_popular_rows_and_no_entries() -> None:
    empty = np.zeros(0, dtype=np.int64)
    rows, scores = _merge_popular(empty, empty, np.zeros(0), empty, np.zeros(0), empty, empty, 5, 3, 4)
    assert (rows == -1).all() and (scores == -np.inf).all() and rows.shape == (3, 4)
