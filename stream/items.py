"""Item metadata files (CSV or JSON lines) read into ``item`` events, with column mapping.

MovieLens' ``movies.csv`` (``movieId,title,genres``, genres ``|``-separated; some copies
have no header line and CRLF line ends) loads with
``streamrec items load movies.csv --columns id,title,genres``.

>>> rows = ["1,Toy Story (1995),Adventure|Animation\\r\\n", "2,,\\r\\n", "x\\r\\n"]
>>> for line, found in read_items(rows, "csv", columns=["id", "title", "genres"]):
...     print(line, found)
1 {'item_id': '1', 'title': 'Toy Story (1995)', 'category': ['Adventure', 'Animation']}
2 {'item_id': '2'}
3 row has 1 field(s), expected 3 (id, title, genres)
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Iterator, Sequence

import orjson

ID_COLUMNS = ("item_id", "id", "movieId", "itemId", "item")
TITLE_COLUMNS = ("title", "name")
CATEGORY_COLUMNS = ("category", "categories", "genres", "genre")
NO_CATEGORY = ("(no genres listed)", "")


def _pick(given: str | None, candidates: Sequence[str], names: Sequence[str]) -> str | None:
    if given is not None:
        return given
    return next((name for name in candidates if name in names), None)


def _categories(value) -> list[str]:
    """``|``-separated (MovieLens), a list as it is; "(no genres listed)" is none."""
    parts = value if isinstance(value, list) else str(value).split("|")
    return [p.strip() for p in map(str, parts) if p.strip() not in NO_CATEGORY]


def _metadata(record: dict, id_column: str, title_column: str | None, category_column: str | None) -> dict | str:
    """The item's metadata with ``item_id``, ``title`` and ``category`` named as the schema
    names them (other fields kept as they are), or why the record is bad."""
    item_id = record.get(id_column)
    if item_id is None or (isinstance(item_id, str) and not item_id.strip()):
        return f"no item id (column {id_column!r})"
    if not isinstance(item_id, str | int) or isinstance(item_id, bool):
        return f"item id must be a string or an integer, not {type(item_id).__name__}"
    out = {"item_id": str(item_id).strip()}
    for key, value in record.items():
        if key in (id_column, title_column, category_column) or value in (None, ""):
            continue
        out[key] = value
    if title_column is not None and record.get(title_column) not in (None, ""):
        out["title"] = str(record[title_column]).strip()
    if category_column is not None and record.get(category_column) not in (None, ""):
        categories = _categories(record[category_column])
        if categories:
            out["category"] = categories
    return out


def read_items(
    lines: Iterable[str],
    fmt: str,
    *,
    id_column: str | None = None,
    title_column: str | None = None,
    category_column: str | None = None,
    columns: Sequence[str] | None = None,
) -> Iterator[tuple[int, dict | str]]:
    """``(line number, metadata)`` per item, or ``(line number, reason)`` for a bad row.

    ``fmt`` is ``csv`` or ``jsonl``. A CSV's first row names its columns unless ``columns``
    does (then a first row equal to ``columns`` is skipped as a header). The id, title and
    category columns default to the first of ``ID_COLUMNS``, ``TITLE_COLUMNS`` and
    ``CATEGORY_COLUMNS`` present (for JSON lines: in each object).
    """
    if fmt == "jsonl":
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                record = orjson.loads(line)
            except orjson.JSONDecodeError as exc:
                yield number, f"not JSON: {exc}"
                continue
            if not isinstance(record, dict):
                yield number, "a line must be a JSON object"
                continue
            names = list(record)
            found = _pick(id_column, ID_COLUMNS, names)
            yield number, _metadata(record, found or "item_id", _pick(title_column, TITLE_COLUMNS, names),
                                    _pick(category_column, CATEGORY_COLUMNS, names))
        return
    if fmt != "csv":
        raise ValueError(f"unknown format {fmt!r}: csv or jsonl")
    rows = csv.reader(lines)
    names = list(columns) if columns else None
    id_col = title_col = category_col = None
    for row in rows:
        number = rows.line_num
        if not row or not any(field.strip() for field in row):
            continue
        if names is None or (columns and number == 1 and [f.strip() for f in row] == list(columns)):
            names = names or [field.strip() for field in row]
            continue
        if id_col is None:
            id_col = _pick(id_column, ID_COLUMNS, names) or names[0]
            title_col = _pick(title_column, TITLE_COLUMNS, names)
            category_col = _pick(category_column, CATEGORY_COLUMNS, names)
            if id_col not in names:
                raise ValueError(f"no column {id_col!r} among {', '.join(names)}")
        if len(row) != len(names):
            yield number, f"row has {len(row)} field(s), expected {len(names)} ({', '.join(names)})"
            continue
        yield number, _metadata(dict(zip(names, row)), id_col, title_col, category_col)
