"""Each user's last items as one table: what ``Cooc`` and ``Sequential`` keep per user."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from itertools import repeat

import numpy as np

from online_models._arrays import IdIndex, grow, spans


class RecentItems:
    """Each user's last ``window`` items (rows) and a number per entry (``values``: the
    event's weight in ``Cooc``, its time in ``Sequential``): one table row per user.

    A user's ``n`` entries sit in the last ``n`` columns, oldest first, so an append shifts
    the row left by one (a memmove of ``window`` numbers) and a history is a view. Two
    numbers per entry, where a deque of tuples held Python objects: about 460 bytes per
    user instead of about 1,930 (200k users), and a checkpoint pickles two arrays instead
    of a deque per user. Users take rows from an ``IdIndex``; a forgotten user's row is reused.

    >>> recent = RecentItems(window=2)
    >>> for item, value in [(5, 0.5), (6, 1.0), (7, 2.0)]:
    ...     recent.push(recent.user_row("u"), item, value)
    >>> [a.tolist() for a in recent.get("u")], recent.get("nobody")
    ([[6, 7], [1.0, 2.0]], None)
    """

    def __init__(self, window: int):
        self.window = window
        self.users = IdIndex()
        self.rows = np.zeros((0, window), dtype=np.int64)
        self.values = np.zeros((0, window), dtype=np.float64)
        self.sizes: list[int] = []  # entries per table row (a list: its scalars read faster than numpy's)

    def user_row(self, user_id: str) -> int:
        """The user's table row, added (empty) for a new user."""
        u = self.users.add(user_id)
        if u >= len(self.sizes):
            self._room_for(u + 1)
        return u

    def user_rows(self, user_ids: list[str]) -> np.ndarray:
        """``user_row`` of each id in turn, the table grown once.

        >>> recent = RecentItems(window=2)
        >>> recent.user_rows(["u", "v", "u"]).tolist(), len(recent.sizes) >= 2
        ([0, 1, 0], True)
        """
        us = np.array(self.users.add_all(user_ids), dtype=np.int64)
        while len(self.users) > len(self.sizes):  # doubled as user_row doubles it, to the same room
            self._room_for(len(self.sizes) + 1)
        return us

    def _room_for(self, n: int) -> None:
        """At least ``n`` table rows (``grow``'s doubling), the new ones empty."""
        self.rows, self.values = grow(self.rows, n), grow(self.values, n)
        self.sizes.extend([0] * (len(self.rows) - len(self.sizes)))

    def held_of(self, user_ids: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Each user's table row (``-1``: unknown) and which of the row's ``window`` cells hold
        an entry (the last ones; none for an unknown user).

        >>> recent = RecentItems(window=3)
        >>> recent.push(recent.user_row("u"), 5, 0.5)
        >>> [a.tolist() for a in recent.held_of(["u", "nobody"])]
        [[0, -1], [[False, False, True], [False, False, False]]]
        """
        at = np.fromiter(map(self.users.rows.get, user_ids, repeat(-1)), dtype=np.int64, count=len(user_ids))
        held_by = self.sizes  # a list: read per user, not converted whole
        sizes = np.fromiter((held_by[a] if a >= 0 else 0 for a in at.tolist()), dtype=np.int64, count=len(user_ids))
        return at, self._held_cells(sizes, self.window)

    def history(self, u: int) -> tuple[np.ndarray, np.ndarray]:
        """Views of table row ``u``'s item rows and values, oldest first."""
        start = self.window - self.sizes[u]
        return self.rows[u, start:], self.values[u, start:]

    def get(self, user_id: str) -> tuple[np.ndarray, np.ndarray] | None:
        """The user's history (see ``history``), ``None`` for a user without one."""
        u = self.users.rows.get(user_id)
        return None if u is None or not self.sizes[u] else self.history(u)

    def push(self, u: int, row: int, value: float) -> None:
        rows, values = self.rows[u], self.values[u]
        rows[:-1] = rows[1:]
        rows[-1] = row
        values[:-1] = values[1:]
        values[-1] = value
        if self.sizes[u] < self.window:
            self.sizes[u] += 1

    def push_many(self, us: np.ndarray, rows: np.ndarray, values: np.ndarray
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``push`` of each ``(us[j], rows[j], values[j])`` in turn, on arrays; returns what
        each push found before it: the history lengths and, flat, the histories' item rows
        and values (each oldest first, as ``history``).

        >>> recent = RecentItems(window=2)
        >>> u, v = recent.user_row("u"), recent.user_row("v")
        >>> lengths, rows, _ = recent.push_many(np.array([u, v, u, u]), np.array([5, 9, 6, 7]), np.ones(4))
        >>> lengths.tolist(), rows.tolist(), recent.get("u")[0].tolist()
        ([0, 0, 1, 2], [5, 5, 6], [6, 7])
        """
        window = self.window
        users, of_user = np.unique(us, return_inverse=True)
        pushes = np.bincount(of_user, minlength=len(users))
        # each user's table row then its pushes, one block per user in one flat array
        block = window + pushes
        block_start = np.cumsum(block) - block
        by_user = np.argsort(of_user, kind="stable")
        nth = np.empty(len(us), dtype=np.int64)
        nth[by_user] = np.arange(len(us)) - np.repeat(np.cumsum(pushes) - pushes, pushes)
        at = block_start[of_user] + window + nth
        table_at = (block_start[:, None] + np.arange(window)).reshape(-1)
        flat_rows, flat_values = np.empty(int(block.sum()), dtype=np.int64), np.empty(int(block.sum()))
        flat_rows[table_at], flat_values[table_at] = self.rows[users].reshape(-1), self.values[users].reshape(-1)
        flat_rows[at], flat_values[at] = rows, values
        sizes = np.fromiter(map(self.sizes.__getitem__, users.tolist()), dtype=np.int64, count=len(users))
        lengths = np.minimum(window, sizes[of_user] + nth)
        found = spans(at - lengths, lengths)
        kept = (block_start + pushes)[:, None] + np.arange(window)  # each block's last ``window``
        self.rows[users], self.values[users] = flat_rows[kept], flat_values[kept]
        for u, size in zip(users.tolist(), np.minimum(window, sizes + pushes).tolist()):
            self.sizes[u] = size
        return lengths, flat_rows[found], flat_values[found]

    def set(self, user_id: str, rows: np.ndarray, values: np.ndarray) -> None:
        """Replace the user's history with the newest ``window`` of ``rows`` and ``values``."""
        u, m = self.user_row(user_id), min(len(rows), self.window)
        self.rows[u, self.window - m :] = rows[len(rows) - m :]
        self.values[u, self.window - m :] = values[len(values) - m :]
        self.sizes[u] = m

    def forget(self, user_ids: Collection[str]) -> None:
        for u in self.users.remove(user_ids).tolist():
            self.sizes[u] = 0

    def drop_items(self, gone: np.ndarray) -> None:
        """Take the item rows ``gone`` out of every history (one vectorised pass over the users)."""
        n_users = len(self.users)
        held = self._held_cells(np.array(self.sizes[:n_users]), self.window)
        hit = np.isin(self.rows[:n_users], gone) & held
        for u in np.flatnonzero(hit.any(axis=1)).tolist():
            rows, values = self.history(u)
            keep = ~hit[u, self.window - self.sizes[u] :]
            rows, values = rows[keep], values[keep]
            m = len(rows)
            self.rows[u, self.window - m :], self.values[u, self.window - m :] = rows, values
            self.sizes[u] = m

    def __len__(self) -> int:
        return self.users.live()

    def __getstate__(self):
        # only the held entries, user after user (most users hold a few of their window, and
        # the cells before them are never read), without the spare capacity; item rows fit int32
        n = len(self.users)
        sizes = np.array(self.sizes[:n], dtype=np.int32)
        held = self._held_cells(sizes, self.window)
        return {"window": self.window, "users": self.users, "sizes": sizes,
                "held_rows": self.rows[:n][held].astype(np.int32), "held_values": self.values[:n][held]}

    def __setstate__(self, state):
        state = dict(state)
        for old in ("weights", "ts"):  # saved as Cooc's _RecentItems or Sequential's _Histories
            if old in state:
                state["values"] = state.pop(old)
        if "held_rows" in state:
            sizes = np.asarray(state["sizes"])
            held = RecentItems._held_cells(sizes, state["window"])
            state["rows"] = np.zeros(held.shape, dtype=np.int64)
            state["values"] = np.zeros(held.shape, dtype=np.float64)
            state["rows"][held], state["values"][held] = state.pop("held_rows"), state.pop("held_values")
            state["sizes"] = sizes.tolist()
        else:  # saved whole (and _Histories kept its sizes in a numpy array)
            state["sizes"] = [int(size) for size in state["sizes"]]
        self.__dict__.update(state)
        self.rows = self.rows.astype(np.int64, copy=False)

    @staticmethod
    def _held_cells(sizes: np.ndarray, window: int) -> np.ndarray:
        """Which cells of a table with rows holding ``sizes`` entries hold one: each row's last ``sizes``."""
        return np.arange(window) >= (window - np.asarray(sizes, dtype=np.int64))[:, None]

