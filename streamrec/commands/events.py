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
    p.add_argument("file", help='JSON lines, one item each: {"item_id": ..., "title": ..., "category": ...} (- for stdin)')
    p.add_argument("--topic", help="topic (default: STREAMREC_TOPIC)")


@command("items", "load item metadata (title, description, category) as item events", _items_arguments)
def items(args: argparse.Namespace) -> int:
    import orjson

    from core.kafka import EventProducer

    settings = Settings()
    topic = args.topic or settings.topic
    sent = bad = 0
    with EventProducer(settings.kafka_bootstrap, topic) as producer:
        for number, line in _lines(args.file):
            try:
                metadata = orjson.loads(line)
                if not isinstance(metadata, dict) or "item_id" not in metadata:
                    raise InvalidEvent("an item needs an object with 'item_id'")
                item_id = metadata.pop("item_id")
                event = parse_event(orjson.dumps({"type": "item", "item_id": item_id, "context": metadata}))
            except (orjson.JSONDecodeError, InvalidEvent) as exc:
                bad += 1
                print(f"line {number}: {getattr(exc, 'reason', exc)} (not sent)", file=sys.stderr)
                continue
            producer.send(event)
            sent += 1
    print(f"sent {sent} item(s) to {topic}" + (f"; {bad} bad line(s) skipped" if bad else ""))
    return 1 if bad else 0
