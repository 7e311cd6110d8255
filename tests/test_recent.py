"""RecentItems: what a checkpoint keeps of the users' histories, and what it gives back."""

from __future__ import annotations

import pickle

import numpy as np

from online_models.recent import RecentItems


def filled(seed: int) -> RecentItems:
    """Users with histories of every length (some full and shifted), some forgotten, some
    items dropped."""
    rng = np.random.default_rng(seed)
    recent = RecentItems(window=6)
    for _ in range(30):
        n = int(rng.integers(1, 80))
        users = recent.user_rows([f"u{u}" for u in rng.integers(0, 120, n).tolist()])
        recent.push_many(users, rng.integers(0, 50, n), rng.random(n))
    recent.forget([f"u{u}" for u in range(0, 120, 9)])
    recent.drop_items(np.array([3, 7]))
    return recent


def histories(recent: RecentItems) -> dict[str, tuple[list[int], list[float]]]:
    return {user: tuple(a.tolist() for a in recent.get(user)) for user in recent.users.rows if recent.get(user)}


def test_a_pickle_keeps_the_held_entries_only_and_gives_the_same_histories() -> None:
    for seed in range(4):
        recent = filled(seed)
        state = recent.__getstate__()
        assert len(state["held_rows"]) == len(state["held_values"]) == sum(recent.sizes[: len(recent.users)])
        twin = pickle.loads(pickle.dumps(recent))
        assert histories(twin) == histories(recent) and twin.sizes == recent.sizes[: len(recent.users)]
        # and both go on alike, new users and old
        users = [f"u{u}" for u in range(0, 140, 3)]
        rows, values = np.arange(len(users)) % 50, np.linspace(0, 1, len(users))
        for table in (recent, twin):
            table.push_many(table.user_rows(users), rows, values)
        assert histories(twin) == histories(recent)


def test_a_pickle_of_the_whole_table_still_loads() -> None:
    recent = filled(7)
    n = len(recent.users)
    whole = {"window": recent.window, "users": recent.users, "rows": recent.rows[:n].astype(np.int32),
             "values": recent.values[:n].copy(), "sizes": recent.sizes[:n]}  # as checkpoints saved it before
    twin = RecentItems.__new__(RecentItems)
    twin.__setstate__(pickle.loads(pickle.dumps(whole)))
    assert histories(twin) == histories(recent) and twin.rows.dtype == np.int64
