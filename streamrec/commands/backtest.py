"""``streamrec backtest``, ``streamrec replay`` and ``streamrec datasets``: working with historical logs."""

from __future__ import annotations

import argparse
import sys

from streamrec.commands.registry import command

FORMATS = ("jsonl", "csv", "movielens", "yoochoose")  # stream.logs.FORMATS, without importing it here


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must not be negative, got {value}")
    return value


def _log_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("paths", nargs="+", metavar="PATH",
                   help="log file(s) or a directory of them, concatenated then sorted by time")
    p.add_argument("--format", "-f", required=True, choices=FORMATS, help="log format")
    p.add_argument("--limit", type=_positive_int, default=None, help="use only the first N events (time order)")
    p.add_argument("--strict", action="store_true", help="stop at the first bad row instead of skipping it")


def _backtest_arguments(p: argparse.ArgumentParser) -> None:
    _log_arguments(p)
    p.add_argument("--models", "-m", default=None,
                   help="comma-separated registry names (default: every registered model)")
    p.add_argument("--k", type=_positive_int, default=None,
                   help="length of each ranking (default 10; 20 with --protocol next-item)")
    p.add_argument("--protocol", choices=("prequential", "next-item"), default="prequential",
                   help="prequential (default): test-then-learn over the log; next-item: learn the log, then "
                        "rank before each click of the --test sessions after their first (repeats allowed)")
    p.add_argument("--test", nargs="+", metavar="TEST", default=None,
                   help="the test log(s) of --protocol next-item, in the same format")
    p.add_argument("--report", metavar="DIR", default=None, help="write report.json, report.md and report.png here")
    p.add_argument("--json", action="store_true", help="print one JSON object per model on stdout, nothing else")
    seen = p.add_mutually_exclusive_group()
    seen.add_argument("--no-exclude-seen", dest="exclude_seen", action="store_false", default=None,
                      help="let rankings include items the user already interacted with (prequential default: "
                           "excluded)")
    seen.add_argument("--exclude-seen", dest="exclude_seen", action="store_true", default=None,
                      help="leave out items the user already interacted with (next-item default: kept)")
    p.add_argument("--warmup", type=_non_negative_int, default=0, help="learn the first N events without judging")
    p.add_argument("--stride", type=_positive_int, default=1, help="judge every N-th eligible event")
    p.add_argument("--torch-threads", type=_positive_int, default=1,
                   help="threads for torch-based models (default 1: one event at a time gains nothing from more)")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar on stderr")


@command("backtest", "replay a historical log through the models, test-then-learn, and report metrics",
         _backtest_arguments)
def backtest(args: argparse.Namespace) -> int:
    from streamrec.backtest import result_json, run_backtest, text_table, write_report

    on_result = None
    if args.json:
        def on_result(result) -> None:
            print(result_json(result), flush=True)

    next_item = args.protocol == "next-item"
    k = args.k if args.k is not None else (20 if next_item else 10)
    exclude_seen = args.exclude_seen if args.exclude_seen is not None else not next_item
    bt = run_backtest(
        args.paths, args.format, models=args.models, k=k, exclude_seen=exclude_seen,
        warmup=args.warmup, stride=args.stride, limit=args.limit, strict=args.strict,
        progress=args.progress, on_result=on_result, torch_threads=args.torch_threads,
        protocol=args.protocol, test_paths=args.test,
    )
    if not args.json:
        print(text_table(bt.results))
    if args.report:
        paths = write_report(bt, args.report)
        print(f"report: {', '.join(str(p) for p in paths.values())}", file=sys.stderr)
    return 1 if bt.errors else 0


def _replay_arguments(p: argparse.ArgumentParser) -> None:
    _log_arguments(p)
    p.add_argument("--topic", "-t", required=True, help="Kafka topic to publish to")
    p.add_argument("--speed", default="max",
                   help="replay S times faster than the original gaps (e.g. 60), or 'max' (default)")
    p.add_argument("--bootstrap", default=None, help="Kafka bootstrap servers (default: from settings)")
    p.add_argument("--file-order", action="store_true",
                   help="send in file order instead of sorting by timestamp")


@command("replay", "publish a historical log into Kafka, keyed by user, at its original pace or faster",
         _replay_arguments)
def replay(args: argparse.Namespace) -> int:
    from core.settings import Settings
    from stream.logs import read_log
    from stream.replay import parse_speed, replay_to_kafka

    speed = parse_speed(args.speed)
    settings = Settings()
    bootstrap = args.bootstrap or settings.kafka_bootstrap
    log = read_log(args.paths, args.format, strict=args.strict, sort=not args.file_order, limit=args.limit)
    print(f"read {log.summary()}", file=sys.stderr)
    bar = None
    if len(log.events) >= 10_000:
        from tqdm import tqdm

        bar = tqdm(total=len(log.events), unit="ev", unit_scale=True, file=sys.stderr, mininterval=1.0)
    try:
        stats = replay_to_kafka(log.events, bootstrap, args.topic, speed=speed, partitions=settings.topic_partitions,
                                progress=bar.update if bar is not None else None)
    finally:
        if bar is not None:
            bar.close()
    print(stats.summary(args.topic) + f" via {bootstrap}")
    return 0


def _datasets_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    fetch = sub.add_parser("fetch", help="download a dataset into a local folder")
    fetch.add_argument("name", help="dataset name (see 'streamrec datasets list')")
    fetch.add_argument("--dest", default="data", help="folder to put it in (default: data/)")
    fetch.add_argument("--force", action="store_true", help="download again even when a good copy is there")
    sub.add_parser("list", help="the datasets that can be fetched")


@command("datasets", "fetch public interaction logs for backtests (no data hub needed)", _datasets_arguments)
def datasets(args: argparse.Namespace) -> int:
    from stream.datasets import DATASETS, fetch

    if args.action == "list":
        for spec in DATASETS.values():
            print(f"{spec.name}\t--format {spec.format}\t{spec.description}")
        return 0
    path = fetch(args.name, args.dest, force=args.force, log=lambda m: print(m, file=sys.stderr))
    spec = DATASETS[args.name]
    print(path)
    print(f"backtest it with: streamrec backtest {path} --format {spec.format}", file=sys.stderr)
    return 0
