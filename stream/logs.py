"""Reading historical interaction logs into ``Event`` objects, for backtests and replays.

Formats (``FORMATS``):

``jsonl``
    One event per line in the streamrec event schema, checked by ``core.schema``.
``csv``
    A header naming event fields (``user_id``, ``item_id``, ``type``, ``ts``, ``value``,
    ``event_id``; others are ignored); ``type`` defaults to ``click``.
``movielens``
    MovieLens ratings: ml-100k ``.inter`` (RecBole's typed header ``user_id:token ...``),
    ml-100k ``u.data`` (tab separated, no header), ml-latest ``ratings.csv``
    (``userId,movieId,rating,timestamp``, with or without header), ml-1m ``ratings.dat``
    (``::``). CRLF or LF. Each rating becomes a ``click`` with ``value`` = the rating.
``yoochoose``
    RecSys Challenge 2015 clicks: the preprocessed ``SessionId<TAB>ItemId<TAB>Time`` with
    header, or the original ``session,timestamp,item,category`` (ISO time). Sessions stand
    in for users.

A log may be several files or a directory; they are concatenated in the order given (files
of a directory by name) and then stably sorted by timestamp. Rows that cannot be read are
counted with their reasons (the first few are kept) and skipped, or stop the read with
``LogError`` when ``strict``. Every timestamp is epoch seconds; a log needs them, so a row
without one is a bad row. ISO times without a zone are taken as UTC.

>>> import io
>>> f = io.StringIO("user_id:token\\titem_id:token\\trating:float\\ttimestamp:float\\n196\\t242\\t3\\t881250949\\n")
>>> [(e.user_id, e.item_id, e.value, e.ts) for _, e in _read_movielens(f, "ml-100k")]
[('196', '242', 3.0, 881250949.0)]
"""

from __future__ import annotations

import csv
import gzip
import io
import math
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from operator import attrgetter
from pathlib import Path
from typing import IO

from core.errors import InvalidEvent, StreamrecError
from core.schema import Event, decode_json, validate_event

FORMATS = ("jsonl", "csv", "movielens", "yoochoose")
DEFAULT_TYPE = "click"
MAX_EXAMPLES = 5

_DIR_PATTERNS = {
    "jsonl": ("*.jsonl", "*.json", "*.jsonl.gz", "*.ndjson"),
    "csv": ("*.csv", "*.csv.gz"),
    "movielens": ("ratings.csv", "ratings.dat", "u.data", "*.inter", "ratings.csv.gz"),
    "yoochoose": ("*.txt", "*.dat", "*.csv", "*.tsv", "*.gz"),
}


class LogError(StreamrecError):
    """A log that cannot be read: a missing path, an unknown format, or a bad row under ``strict``."""


Row = tuple[int, "Event | str"]  # (line number, the event or why the row is bad)


@dataclass
class Log:
    """Events read from one or more files, plus what was wrong with the rest."""

    events: list[Event]
    files: list[Path]
    format: str
    rows: int = 0
    bad: int = 0
    bad_examples: list[str] = field(default_factory=list)

    def summary(self) -> str:
        users = len({e.user_id for e in self.events})
        items = len({e.item_id for e in self.events})
        text = (f"{len(self.events):,} events ({users:,} users, {items:,} items) "
                f"from {len(self.files)} file(s), format {self.format}")
        if self.bad:
            text += f"; {self.bad:,} bad row(s) skipped, e.g.\n  " + "\n  ".join(self.bad_examples)
        return text


# -- helpers ---------------------------------------------------------------------------


def _open(path: Path) -> IO[str]:
    if path.suffix == ".gz":
        return io.TextIOWrapper(gzip.open(path), encoding="utf-8-sig", newline=None)
    return open(path, encoding="utf-8-sig", newline=None)  # universal newlines: CRLF or LF


def _number(text: str, name: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise InvalidEvent(f"{name} {text.strip()[:40]!r} is not a number") from None
    if not math.isfinite(value):
        raise InvalidEvent(f"{name} is not finite")
    return value


def _timestamp(text: str) -> float:
    text = text.strip()
    try:
        ts = float(text)
    except ValueError:
        try:
            parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            raise InvalidEvent(f"time {text[:40]!r} is neither epoch seconds nor ISO-8601") from None
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=timezone.utc)
        ts = parsed.timestamp()
    if not math.isfinite(ts) or ts < 0:
        raise InvalidEvent(f"time {text[:40]!r} is not a time after 1970")
    return ts


def _id(text: str, name: str) -> str:
    text = text.strip()
    if not text:
        raise InvalidEvent(f"{name} is empty")
    return text


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _columns(header: list[str], names: dict[str, tuple[str, ...]], what: str) -> dict[str, int]:
    """Map our field names to column positions from a header (``name:type`` suffixes dropped)."""
    clean = [h.strip().split(":")[0].lower().replace("_", "") for h in header]
    found = {}
    for key, aliases in names.items():
        for alias in aliases:
            if alias in clean:
                found[key] = clean.index(alias)
                break
    missing = [key for key in names if key not in found]
    if missing:
        raise LogError(f"{what} header {header!r} has no column for {', '.join(missing)}")
    return found


# -- readers: each yields (line number, Event or reason) ------------------------------

_ML_NAMES = {
    "user": ("userid", "user"),
    "item": ("itemid", "movieid", "item", "movie"),
    "rating": ("rating", "value"),
    "ts": ("timestamp", "time", "ts"),
}


def _delimited(
    f: IO[str], names: dict[str, tuple[str, ...]], what: str, separators: tuple[str, ...],
    headerless: Callable[[str], dict[str, int]],
) -> tuple[dict[str, int], Iterator[tuple[int, list[str] | str]]] | None:
    """Columns and split rows of a delimited log, with or without a header line.

    The separator is the first of ``separators`` found on the first line (else ``,``); a
    first line that does not start with a number is a header naming the ``names`` columns,
    otherwise ``headerless(sep)`` gives them. Rows come as ``(line number, fields)``, or
    ``(line number, reason)`` when a row has too few fields; blank lines are skipped.
    None for an empty file.
    """
    first = f.readline()
    if not first:
        return None
    line0 = first.rstrip("\r\n")
    sep = next((c for c in separators if c in line0), ",")
    fields0 = line0.split(sep)
    if fields0 and not _is_number(fields0[0]):  # a header line
        cols, lines, start = _columns(fields0, names, what), f, 2
    else:
        cols, lines, start = headerless(sep), _chain_first(first, f), 1
    need = max(cols.values()) + 1

    def rows() -> Iterator[tuple[int, list[str] | str]]:
        for lineno, line in enumerate(lines, start):
            parts = line.rstrip("\r\n").split(sep)
            if len(parts) >= need:
                yield lineno, parts
            elif len(parts) > 1 or parts[0].strip():
                yield lineno, f"expected {need} fields separated by {sep!r}, got {len(parts)}"

    return cols, rows()


def _read_movielens(f: IO[str], source: str) -> Iterator[Row]:
    opened = _delimited(f, _ML_NAMES, "movielens", ("\t", "::"),
                        lambda sep: {"user": 0, "item": 1, "rating": 2, "ts": 3})
    if opened is None:
        return
    cols, rows = opened
    u, i, r, t = cols["user"], cols["item"], cols["rating"], cols["ts"]
    make = Event
    for lineno, parts in rows:
        if isinstance(parts, str):
            yield lineno, parts
            continue
        try:
            user, item = parts[u], parts[i]
            if not user or not item:
                raise InvalidEvent("user or item id is empty")
            rating = float(parts[r])
            ts = float(parts[t])
            if not (math.isfinite(rating) and math.isfinite(ts)) or ts < 0:
                raise InvalidEvent("rating or timestamp is not a finite number (timestamp >= 0)")
        except ValueError:
            yield lineno, f"rating {parts[r][:20]!r} or timestamp {parts[t][:20]!r} is not a number"
            continue
        except InvalidEvent as exc:
            yield lineno, exc.reason
            continue
        yield lineno, make(user, item, DEFAULT_TYPE, ts, f"{source}:{lineno}", rating)


def _chain_first(first: str, rest: Iterable[str]) -> Iterator[str]:
    yield first
    yield from rest


_YC_NAMES = {
    "user": ("sessionid", "session", "userid", "user"),
    "item": ("itemid", "item"),
    "ts": ("time", "timestamp", "ts"),
}


def _yoochoose_headerless(sep: str) -> dict[str, int]:
    # the prepared files are session<TAB>item<TAB>time; the original is session,timestamp,item,category
    return {"user": 0, "item": 1, "ts": 2} if sep == "\t" else {"user": 0, "item": 2, "ts": 1}


def _read_yoochoose(f: IO[str], source: str) -> Iterator[Row]:
    opened = _delimited(f, _YC_NAMES, "yoochoose", ("\t",), _yoochoose_headerless)
    if opened is None:
        return
    cols, rows = opened
    u, i, t = cols["user"], cols["item"], cols["ts"]
    for lineno, parts in rows:
        if isinstance(parts, str):
            yield lineno, parts
            continue
        try:
            ts = _timestamp(parts[t])
            event = Event(_id(parts[u], "session id"), _id(parts[i], "item id"), DEFAULT_TYPE, ts,
                          f"{source}:{lineno}")
        except InvalidEvent as exc:
            yield lineno, exc.reason
            continue
        yield lineno, event


def _needs_ts(obj: dict) -> None:
    if obj.get("ts") in (None, ""):
        raise InvalidEvent("missing field 'ts' (a log needs timestamps to be replayed in order)")


def _read_csv(f: IO[str], source: str) -> Iterator[Row]:
    reader = csv.reader(f)
    header = next(reader, None)
    if header is None:
        return
    names = [h.strip() for h in header]
    for required in ("user_id", "item_id"):
        if required not in names:
            raise LogError(f"csv header {header!r} must name the event fields; no {required!r} column")
    now = time.time()
    for row in reader:
        lineno = reader.line_num
        if not row or (len(row) == 1 and not row[0].strip()):
            continue
        if len(row) != len(names):
            yield lineno, f"expected {len(names)} fields like the header, got {len(row)}"
            continue
        obj: dict = {k: v for k, v in zip(names, row)}
        try:
            if not obj.get("type"):
                obj["type"] = DEFAULT_TYPE
            _needs_ts(obj)
            obj["ts"] = float(obj["ts"]) if _is_number(obj["ts"]) else obj["ts"].strip()
            value = obj.get("value")
            obj["value"] = _number(value, "value") if value not in (None, "") else None
            if not obj.get("event_id"):
                obj["event_id"] = f"{source}:{lineno}"
            yield lineno, validate_event(obj, now=now)
        except InvalidEvent as exc:
            yield lineno, exc.reason


def _read_jsonl(f: IO[str], source: str) -> Iterator[Row]:
    now = time.time()
    for lineno, line in enumerate(f, 1):
        line = line.strip()
        if not line:
            continue
        try:
            obj = decode_json(line.encode())
            if isinstance(obj, dict):
                _needs_ts(obj)
                if obj.get("event_id") is None:
                    obj = {**obj, "event_id": f"{source}:{lineno}"}
            yield lineno, validate_event(obj, now=now)
        except InvalidEvent as exc:
            yield lineno, exc.reason


_READERS: dict[str, Callable[[IO[str], str], Iterator[Row]]] = {
    "jsonl": _read_jsonl,
    "csv": _read_csv,
    "movielens": _read_movielens,
    "yoochoose": _read_yoochoose,
}


# -- public API ------------------------------------------------------------------------


def resolve_paths(paths: str | Path | Iterable[str | Path], fmt: str) -> list[Path]:
    """The files to read: given files as they are, directories expanded (by name) for ``fmt``."""
    check_format(fmt)
    if isinstance(paths, (str, Path)):
        paths = [paths]
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted({f for pattern in _DIR_PATTERNS[fmt] for f in p.glob(pattern)
                            if f.is_file() and not f.name.startswith(".")})
            if not found:
                raise LogError(f"no {fmt} files in {p} (looked for {', '.join(_DIR_PATTERNS[fmt])})")
            files.extend(found)
        elif p.is_file():
            files.append(p)
        else:
            raise LogError(f"no such file or directory: {p}")
    if not files:
        raise LogError("no log files given")
    unique = list(dict.fromkeys(files))
    return unique


def check_format(fmt: str) -> None:
    if fmt not in _READERS:
        raise LogError(f"unknown log format {fmt!r}; choose one of {', '.join(FORMATS)}")


def iter_rows(path: Path, fmt: str) -> Iterator[Row]:
    """``(line number, Event or reason)`` for each non-blank row of one file."""
    check_format(fmt)
    source = path.name.removesuffix(".gz")
    with _open(path) as f:
        yield from _READERS[fmt](f, source)


def read_log(
    paths: str | Path | Iterable[str | Path],
    fmt: str,
    *,
    strict: bool = False,
    sort: bool = True,
    limit: int | None = None,
    max_examples: int = MAX_EXAMPLES,
) -> Log:
    """Read every event of a log; sorted by timestamp (stable) unless ``sort=False``.

    ``limit`` keeps the first ``limit`` events after sorting. With ``strict`` the first bad
    row raises ``LogError``; otherwise bad rows are counted and the first few reasons kept.
    """
    files = resolve_paths(paths, fmt)
    events: list[Event] = []
    append = events.append
    log = Log(events=events, files=files, format=fmt)
    rows = 0
    for path in files:
        for lineno, item in iter_rows(path, fmt):
            rows += 1
            if type(item) is Event:
                append(item)
                continue
            where = f"{path.name}:{lineno}: {item}"
            if strict:
                raise LogError(f"bad row in {fmt} log at {where}")
            log.bad += 1
            if len(log.bad_examples) < max_examples:
                log.bad_examples.append(where)
    log.rows = rows
    if sort:
        events.sort(key=attrgetter("ts"))
    if limit is not None:
        del events[max(0, limit):]
    return log
