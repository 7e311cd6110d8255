"""Scale-out derived from declared tables: users move, item state is shared.

Most models hold the same kinds of state: per item, rows of counts or vectors in arrays
indexed by an ``IdIndex``; per user, a vector or a short list of items. A model declares
them, and the functions here derive ``export_users`` / ``import_users`` and ``item_delta``
/ ``merge_item_delta`` from the declaration instead of each model writing its own.

Item tables (``ITEM_TABLES``: name -> ``"sum"`` or ``"step"``) are shared by difference:
a shadow copy of the tables as last reported (plus what peers added since) is kept, the
rows that differ from it are this model's own learning, and a peer adds them. A ``"sum"``
row (a count) starts at 0; a ``"step"`` row (a learned vector) starts from a value drawn
from the model's seed and the item's id (``_initial_items``), which every replica draws
alike, so that each sends only its own steps (parameter averaging in the style of an
asynchronous parameter server). The shadow is built by the first call: a model nobody
shares keeps nothing.

User tables (``USER_TABLES``: name -> ``"vector"``, ``"items"`` or ``"weighted-items"``)
move with their user: a vector row, or a list of items (named by id on the way, never by
row), with a weight each or not.

What a model provides:

- ``_items`` (its item ``IdIndex``) and ``_add_items(ids) -> rows`` (unknown items created
  with their starting values);
- ``_item_tables() -> {name: array}``: writable views of the first ``len(_items)`` rows
  (a model whose state lives elsewhere returns copies and writes merged rows back in
  ``_merged``); ``_initial_items(ids) -> {name: rows}`` for its ``"step"`` tables;
  optionally ``_merged(rows, tables)``, called after a merge;
- ``_has_user(user_id)``, ``_user_get(name, user_id)`` (``None``: nothing in that table)
  and ``_user_put(name, user_id, value)``; a vector is an array, a list of items is
  ``(rows, weights or None)``.

A model that creates an item or frees a row while sharing calls ``rebase(model, rows)``, so
that a new item reports its change from its starting value and a freed row reports nothing.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from typing import Any

import numpy as np

from online_models._arrays import IdIndex, grow_all


def id_array(index: IdIndex, rows: np.ndarray) -> np.ndarray:
    """The ids at ``rows`` of ``index`` as a numpy ``str`` array (what a delta carries).

    >>> index = IdIndex(); _ = index.add("a"), index.add("bc")
    >>> id_array(index, np.array([1, 0])).tolist(), id_array(index, np.array([], dtype=int)).size
    (['bc', 'a'], 0)
    """
    ids = index.ids
    return np.array([ids[row] for row in rows.tolist()], dtype=str)


# -- item state ------------------------------------------------------------------------
def shadow(model: Any) -> dict[str, np.ndarray]:
    """The model's shadow of its item tables, built on first use (live items at their
    starting values: everything learned so far is own; freed rows as they are) and grown
    to the tables' rows."""
    tables = model._item_tables()
    kept = model.__dict__.get("_shadow")
    if kept is None:
        kept = {name: now.copy() for name, now in tables.items()}
        live = model._items.live_rows()
        if len(live):
            initial = model._initial_items([model._items.ids[r] for r in live.tolist()]) if any(
                kind == "step" for kind in model.ITEM_TABLES.values()) else {}
            for name, kind in model.ITEM_TABLES.items():
                kept[name][live] = initial[name] if kind == "step" else 0
        model._shadow = kept
    grow_all(kept, len(model._items))
    return kept


def rebase(model: Any, rows: np.ndarray) -> None:
    """The shadow of ``rows`` takes their current values (an item created at its starting
    values, a freed row), once sharing has started."""
    kept = model.__dict__.get("_shadow")
    if kept is None:
        return
    grow_all(kept, len(model._items))
    for name, now in model._item_tables().items():
        kept[name][rows] = now[rows]


def scale_shadow(model: Any, name: str, factor: float) -> None:
    """Scale a table's shadow as the table was scaled (a change of units, not learning)."""
    kept = model.__dict__.get("_shadow")
    if kept is not None:
        kept[name] *= factor


def item_delta(model: Any) -> dict[str, Any]:
    """What the model's own learning changed in its item tables since the last call; the
    shadow takes the new values.

    Returns
    -------
    dict
        ``items`` (str array) and, per table, the change of each item's row.
    """
    kept = shadow(model)
    tables = model._item_tables()
    n = len(model._items)
    changed = np.zeros(n, dtype=bool)
    for name, now in tables.items():
        differs = now != kept[name][:n]
        changed |= differs.any(axis=tuple(range(1, now.ndim))) if now.ndim > 1 else differs
    if model._items.free:
        changed[model._items.free] = False
    rows = np.flatnonzero(changed)
    delta: dict[str, Any] = {"items": id_array(model._items, rows)}
    for name, now in tables.items():
        delta[name] = now[rows] - kept[name][rows]
        kept[name][rows] = now[rows]
    return delta


def merge_item_delta(model: Any, delta: Mapping[str, Any]) -> np.ndarray:
    """Add a peer's ``item_delta`` to the tables and to the shadow (so that it is not
    reported back); items not met yet are created. Returns their rows."""
    kept = shadow(model)  # before the peer's changes mix in: what is here now is own
    ids = np.asarray(delta.get("items", ())).tolist()
    if not ids:
        return np.zeros(0, dtype=np.int64)
    rows = np.asarray(model._add_items(ids), dtype=np.int64)
    kept = shadow(model)
    tables = model._item_tables()
    for name, now in tables.items():
        change = np.asarray(delta[name], dtype=now.dtype).reshape((len(rows),) + now.shape[1:])
        now[rows] += change
        kept[name][rows] += change
    merged = getattr(model, "_merged", None)
    if merged is not None:
        merged(rows, tables)
    return rows


def forget_shadow(model: Any) -> None:
    """Drop the shadow: the next delta reports everything learned so far (nothing kept)."""
    model.__dict__["_shadow"] = None


# -- state kept in dicts by key (an item id, a feature name) ---------------------------
def take_keyed(now: Mapping[str, Any], seen: dict[str, Any], keys: Iterable[str]) -> tuple[list[str], np.ndarray]:
    """The ``keys`` whose value in ``now`` (a number, or a list of numbers) differs from
    ``seen`` (absent: 0), and by how much; ``seen`` takes the new values. Absent in ``now``:
    skipped (forgotten).

    >>> seen = {"a": [1.0, 0.0]}
    >>> take_keyed({"a": [1.0, 2.0], "b": [3.0, 0.0], "c": [0.0, 0.0]}, seen, ["a", "b", "c", "gone"])
    (['a', 'b'], array([[0., 2.],
           [3., 0.]]))
    """
    changed, gains = [], []
    for key in keys:
        value = now.get(key)
        if value is None:
            continue
        gain = np.subtract(value, seen.get(key, 0.0))
        if np.any(gain):
            changed.append(key)
            gains.append(gain)
            seen[key] = list(value) if isinstance(value, list) else value
    return changed, np.array(gains, dtype=np.float64)


def add_keyed(now: dict[str, Any], seen: dict[str, Any], keys: Iterable[str], gains: np.ndarray) -> None:
    """Add a peer's ``take_keyed`` gains to ``now`` and to ``seen`` (so that they are not
    reported back); a list value stays a list (learning adds to it in place)."""
    for key, gain in zip(keys, np.asarray(gains, dtype=np.float64).tolist()):
        for table in (now, seen):
            if isinstance(gain, list):
                entry = table.setdefault(key, [0.0] * len(gain))
                for j, value in enumerate(gain):
                    entry[j] += value
            else:
                table[key] = table.get(key, 0.0) + gain


# -- user state ------------------------------------------------------------------------
def export_users(model: Any, user_ids: Collection[str]) -> dict[str, Any]:
    """The declared user tables' rows of the known ``user_ids``, as flat arrays.

    Returns
    -------
    dict
        ``users`` (str); per vector table, its rows ``(n, ...)``; per item table ``name``,
        the items (ids) one user after the other, each user's count in ``name/len`` and
        their weights (when the table has some) in ``name/weights``.
    """
    users = [u for u in dict.fromkeys(user_ids) if model._has_user(u)]
    out: dict[str, Any] = {"users": np.array(users, dtype=str)}
    for name, kind in model.USER_TABLES.items():
        values = [model._user_get(name, u) for u in users]
        if kind == "vector":
            out[name] = np.array([np.asarray(v) for v in values]).reshape((len(users), -1))
            continue
        values = [v if v is not None else (np.zeros(0, dtype=np.int64), np.zeros(0)) for v in values]
        out[name] = id_array(model._items, np.concatenate([np.asarray(v[0], dtype=np.int64) for v in values]
                                                          or [np.zeros(0, dtype=np.int64)]))
        out[f"{name}/len"] = np.array([len(v[0]) for v in values], dtype=np.int64)
        if kind == "weighted-items":
            out[f"{name}/weights"] = np.concatenate([np.asarray(v[1], dtype=np.float64) for v in values]
                                                    or [np.zeros(0)])
    return out


def import_users(model: Any, state: Mapping[str, Any]) -> list[str]:
    """Adopt ``export_users``' users, replacing the rows of their declared user tables;
    items not met yet are created. Returns the users."""
    users = np.asarray(state.get("users", ())).tolist()
    if not users:
        return users
    for name, kind in model.USER_TABLES.items():
        if kind == "vector":
            for user_id, value in zip(users, np.asarray(state[name])):
                model._user_put(name, user_id, value.copy())
            continue
        rows = np.asarray(model._add_items(np.asarray(state[name]).tolist()), dtype=np.int64)
        weights = state.get(f"{name}/weights")
        ends = np.cumsum(np.asarray(state[f"{name}/len"], dtype=np.int64)).tolist()
        for user_id, start, end in zip(users, [0] + ends[:-1], ends):
            model._user_put(name, user_id, (rows[start:end], None if weights is None else
                                            np.asarray(weights, dtype=np.float64)[start:end]))
    return users


# -- composites ------------------------------------------------------------------------
def prefixed(parts: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """Parts' flat dicts as one: each key prefixed with its part's name and ``/``.

    >>> prefixed({"cooc": {"items": 1}, "": {"pulls": 2}})
    {'cooc/items': 1, 'pulls': 2}
    """
    return {(f"{name}/{key}" if name else key): value for name, part in parts.items() for key, value in part.items()}


def split(state: Mapping[str, Any], names: Iterable[str]) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """``prefixed`` undone: the entries of no part named in ``names`` and each part's.

    >>> split({"cooc/items": 1, "cooc/x/len": 3, "pulls": 2}, ["cooc"])
    ({'pulls': 2}, {'cooc': {'items': 1, 'x/len': 3}})
    """
    own: dict[str, Any] = {}
    parts: dict[str, dict[str, Any]] = {name: {} for name in names}
    for key, value in state.items():
        name, slash, rest = key.partition("/")
        if slash and name in parts:
            parts[name][rest] = value
        else:
            own[key] = value
    return own, parts
