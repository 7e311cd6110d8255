"""``streamrec publish`` and ``streamrec validate``: events in, from flags or JSON lines."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Iterator
from typing import IO

from core.errors import InvalidEvent, StreamrecError
from core.schema import INTERACTION_TYPES, Event, new_event_id, parse_event
from core.settings import Settings
from streamrec.commands.registry import command


def _lines(path: str) -> Iterator[tuple[int, bytes]]:
    stream: IO[bytes] = sys.stdin.buffer if path == "-" else open(path, "rb")
    with stream:
        for number, line in enumerate(stream, start=1):
            line = line.rstrip(b"\r\n")
            if line.strip():
                yield number, line


def _publish_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", nargs="?", help="JSON lines to send ('-' for stdin); or use the flags below")
    p.add_argument("--user", help="user id of a single event")
    p.add_argument("--item", help="item id of a single event")
    p.add_argument("--type", default="click", choices=INTERACTION_TYPES, help="event type (default: click)")
    p.add_argument("--value", type=float, help="optional value (price, rating)")
    p.add_argument("--topic", help="topic (default: STREAMREC_TOPIC)")
    p.add_argument("--raw", action="store_true", help="send lines unchecked (the worker dead-letters bad ones)")


@command("publish", "send events to the topic: one from flags, or JSON lines from a file or stdin",
         _publish_arguments)
def publish(args: argparse.Namespace) -> int:
    from core.kafka import EventProducer

    settings = Settings()
    topic = args.topic or settings.topic
    if args.file is None and not (args.user and args.item):
        raise StreamrecError("give a FILE of JSON lines (or '-'), or --user and --item")
    sent = bad = 0
    with EventProducer(settings.kafka_bootstrap, topic) as producer:
        if args.file is None:
            event = Event(user_id=args.user, item_id=args.item, type=args.type, ts=time.time(),
                          event_id=new_event_id(), value=args.value)
            producer.send(parse_event(event.to_json()))  # the same checks as every other event
            sent = 1
        else:
            for number, line in _lines(args.file):
                if args.raw:
                    producer.send_raw(line)
                    sent += 1
                    continue
                try:
                    producer.send(parse_event(line))
                    sent += 1
                except InvalidEvent as exc:
                    bad += 1
                    print(f"line {number}: {exc.reason} (not sent)", file=sys.stderr)
    print(f"sent {sent} event(s) to {topic} at {settings.kafka_bootstrap}" + (f"; {bad} bad line(s) skipped" if bad else ""))
    return 1 if bad else 0


def _validate_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", help="JSON lines to check ('-' for stdin)")


@command("validate", "check a JSON-lines file of events offline; lists each bad line with its reason",
         _validate_arguments)
def validate(args: argparse.Namespace) -> int:
    good = bad = 0
    for number, line in _lines(args.file):
        try:
            parse_event(line)
            good += 1
        except InvalidEvent as exc:
            bad += 1
            print(f"line {number}: {exc.reason}")
    print(f"{good} valid, {bad} invalid", file=sys.stderr)
    return 1 if bad else 0


def _items_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", choices=["load"])
    p.add_argument("file", help="item metadata, one item per row or line: CSV or JSON lines ('-' for stdin)")
    p.add_argument("--format", choices=["csv", "jsonl"],
                   help="csv or jsonl (default: csv for a .csv file, else jsonl)")
    p.add_argument("--id", dest="id_column", help="column of the item id (default: the first of item_id, id, movieId...)")
    p.add_argument("--title", dest="title_column", help="column of the title (default: title or name)")
    p.add_argument("--category", dest="category_column",
                   help="column of the categories, '|'-separated as MovieLens' genres (default: category, genres...)")
    p.add_argument("--columns", help="CSV without a header line: its column names, comma-separated "
                   "(MovieLens movies.csv: id,title,genres)")
    p.add_argument("--topic", help="topic (default: STREAMREC_TOPIC)")


@command("items", "load item metadata (title, category, ...) from CSV or JSON lines, as item events",
         _items_arguments)
def items(args: argparse.Namespace) -> int:
    import orjson

    from core.kafka import EventProducer
    from stream.items import read_items

    settings = Settings()
    topic = args.topic or settings.topic
    fmt = args.format or ("csv" if args.file.lower().endswith(".csv") else "jsonl")
    columns = [c.strip() for c in args.columns.split(",")] if args.columns else None
    sent = bad = 0
    # newline="": the csv module reads CRLF and quoted line breaks itself
    stream: IO[str] = sys.stdin if args.file == "-" else open(args.file, encoding="utf-8-sig", errors="replace",
                                                              newline="")
    with stream, EventProducer(settings.kafka_bootstrap, topic) as producer:
        try:
            for number, found in read_items(stream, fmt, id_column=args.id_column, title_column=args.title_column,
                                            category_column=args.category_column, columns=columns):
                try:
                    if isinstance(found, str):
                        raise InvalidEvent(found)
                    item_id = found.pop("item_id")
                    event = parse_event(orjson.dumps({"type": "item", "item_id": item_id, "context": found}))
                except InvalidEvent as exc:
                    bad += 1
                    print(f"line {number}: {exc.reason} (not sent)", file=sys.stderr)
                    continue
                producer.send(event)
                sent += 1
        except ValueError as exc:  # the columns asked for are not in the file
            raise StreamrecError(str(exc)) from exc
    print(f"sent {sent} item(s) to {topic}" + (f"; {bad} bad line(s) skipped" if bad else ""))
    return 1 if bad else 0
