"""The shell's per-event cost before ranking, without Kafka or Redis: ``Pipeline.process``
learning only (no lists, as ``bench.ingest``'s learn-only run) over the ingest bench's
events, in batches of ``max_poll_records``, timed in process CPU time; and parsing alone
over the same records (``parse_records`` per batch, or ``parse_record`` per record in a tree
without it).

``--against TREE`` runs the same measurement in another checkout (``/work/base``, say) in
turns with this one, each in a fresh process, and prints the ratios (this tree over that
one, per CPU-second; the median of the pairs, so that they hold on a shared machine).
``--digest`` prints instead, per model, a digest of everything ``Pipeline.process`` returns
and keeps (lists, popular list, explanations, history, dead letters and their reasons,
counts, the state of the last-active tables, seen items and popularity) over the same events
plus a few odd records, with the clock pinned: equal digests in two trees, the same output.

``--kafka`` measures the real worker instead (``bench.ingest``'s drain: Kafka to Redis,
lists on), per CPU-second and wall, each run on a topic of its own filled first.

    python -m bench.front_cpu [--events 20000] [--models trending,cooc] [--against TREE] [--repeats 5]
                              [--digest | --kafka]
"""

from __future__ import annotations

import argparse
import contextlib
import json  # also for the call appended when this file runs as code in an older tree
import os
import statistics
import time
from pathlib import Path


def measure(events: int, models: list[str]) -> dict[str, float]:
    """Events per CPU-second: ``parse`` alone, and each model's learn-only ``Pipeline.process``."""
    from bench.ingest import no_lists
    from bench.ingest_cpu import batches_of
    from core.errors import InvalidEvent
    from core.settings import Settings
    from online_models import make_model
    from stream import pipeline as pipeline_module
    from stream.pipeline import Pipeline

    settings = Settings(_env_file=None)
    batch = settings.max_poll_records
    batches = batches_of(events + batch, batch)  # the first batch warms up, untimed
    timed = sum(len(b) for b in batches[1:])
    rates = {}
    parse_records = getattr(pipeline_module, "parse_records", None)  # a batch at once, where the tree has it
    parse_record = getattr(pipeline_module, "parse_record", None)  # one by one, in a tree before it
    started = time.process_time()
    for records in batches[1:]:
        if parse_records is not None:
            parse_records(records, settings.max_event_bytes)
            continue
        for record in records:
            try:
                parse_record(record, settings.max_event_bytes)
            except InvalidEvent:
                pass
    rates["parse"] = timed / (time.process_time() - started)
    for name in models:
        pipeline = Pipeline(settings, make_model(name))
        pipeline._rank = no_lists
        pipeline.process(batches[0])
        started = time.process_time()
        for records in batches[1:]:
            pipeline.process(records)
        rates[name] = timed / (time.process_time() - started)
    return rates


ODD_RECORDS = [  # a repeated event id, attribution context, an item event, malformed ones
    b'{"user_id":"u1","item_id":"i1","type":"click","ts":1699999375.5,"event_id":"dup"}',
    b'{"user_id":"u1","item_id":"i2","type":"click","ts":1699999376.5,"event_id":"dup"}',
    b'{"user_id":"u2","item_id":"i3","type":"purchase","ts":1699999377,"value":3.5,"context":{"recomm_id":"r"}}',
    b'{"item_id":"i4","type":"item","context":{"title":"T: x"}}', b"{", b"", b'{"user_id":"u","type":"view"}',
    b'{"user_id":"u3","item_id":"i5","type":"view","ts":"2023-11-14T22:13:20Z","session":"s"}',
]


def digest(events: int, models: list[str]) -> dict[str, str]:
    """Per model, a digest of what ``Pipeline.process`` returns and keeps (see the module's doc)."""
    import hashlib
    import time as clock

    import orjson

    clock.time = lambda: 1_700_000_000.0  # the catalogue's timestamps and parse's "now"
    from bench.ingest_cpu import batches_of
    from core.settings import Settings
    from online_models import make_model
    from stream.pipeline import Pipeline, Record

    settings = Settings(_env_file=None, popular_refresh_s=0.0)
    odd = [Record("bench", 0, 10**6 + n, 0, b"k", value) for n, value in enumerate(ODD_RECORDS)]
    batches = [*batches_of(events, settings.max_poll_records), odd]
    digests = {}
    for name in models:
        pipeline, h = Pipeline(settings, make_model(name), clock=lambda: 1.0), hashlib.sha256()
        for records in batches:
            e = pipeline.process(records)
            h.update(orjson.dumps([vars(e.counts), {u: e.lists.items_of(u) for u in e.lists}, e.popular,
                                   sorted(e.touched_items), [(r.record.offset, r.reason) for r in e.dead_letters],
                                   e.explanations, e.history, e.item_metadata], option=orjson.OPT_SERIALIZE_NUMPY))
        h.update(orjson.dumps([sorted(pipeline.last_active.items()), sorted(pipeline.item_last_active.items()),
                               sorted((u, sorted(items)) for u, items in pipeline.seen.items()),
                               pipeline.popularity.raw_scores().tolist(), pipeline.popularity.max_score(),
                               pipeline.metrics.online_evaluated, pipeline.metrics.online_hits]))
        digests[name] = h.hexdigest()[:16]
    return digests


def drain(events: int, models: list[str]) -> dict[str, float]:
    """The worker through Kafka and Redis (``STREAMREC_KAFKA_BOOTSTRAP``, ``STREAMREC_REDIS_URL``):
    events per CPU-second of each model, and per wall second (``<model> wall``)."""
    from bench.common import Services, bench_settings, drop_prefix
    from bench.ingest import _drain_worker, produce

    svc = Services(os.environ.pop("STREAMREC_KAFKA_BOOTSTRAP"), os.environ.pop("STREAMREC_REDIS_URL"), "existing")

    class Out:
        def put(self, result):
            self.result = result

    rates = {}
    for name in models:
        settings, out = bench_settings(svc, model=name), Out()
        produce(settings, events)
        _drain_worker(settings, events, None, True, out)
        drop_prefix(svc.redis_url, settings.redis_prefix)
        rates[name] = out.result["events"] / out.result["cpu_seconds"]
        rates[f"{name} wall"] = out.result["events"] / out.result["seconds"]
    return rates


def _in_tree(tree: str, events: int, models: list[str], what: str = "measure", env_extra=None) -> dict:
    from bench.common import json_from_tree

    call = f"print(json.dumps({what}({events}, {models!r})))"
    code = f"import json; from bench.front_cpu import {what}; {call}"
    if not (Path(tree) / "bench" / "front_cpu.py").exists():  # a tree from before this file: run ours there
        code = Path(__file__).read_text() + f"\n{call}"
    return json_from_tree(tree, ["-c", code], extra_env=env_extra)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--models", default="trending,cooc")
    parser.add_argument("--against", metavar="TREE", help="another checkout, measured in turns with this one")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--digest", action="store_true", help="digests of the pipeline's output, not speed")
    parser.add_argument("--kafka", action="store_true", help="the worker through Kafka and Redis (with --against)")
    args = parser.parse_args(argv)
    models = [m for m in args.models.split(",") if m]
    here = str(Path(__file__).resolve().parents[1])
    if args.digest:
        for tree in (here, args.against) if args.against else (here,):
            print(tree, _in_tree(tree, args.events, models, "digest"))
        return
    if not args.against:
        if args.kafka:
            parser.error("--kafka measures against another tree: give --against")
        for name, rate in measure(args.events, models).items():
            print(f"{name:10s} {rate:10,.0f} events per CPU-second")
        return
    from bench.common import in_turns  # main runs in this checkout

    runs: dict[str, list[dict[str, float]]] = {"here": [], "there": []}
    with contextlib.ExitStack() as stack:
        what, env_extra = "measure", None
        if args.kafka:
            from bench.common import services

            svc = stack.enter_context(services())
            what, env_extra = "drain", {"STREAMREC_KAFKA_BOOTSTRAP": svc.kafka_bootstrap,
                                        "STREAMREC_REDIS_URL": svc.redis_url}
        for rep in range(args.repeats):
            for side in in_turns(("here", "there"), rep):
                tree = here if side == "here" else args.against
                runs[side].append(_in_tree(tree, args.events, models, what, env_extra))
    print(f"{'':16s} {'this tree':>12s} {'against':>12s} {'ratio':>7s}  (events per CPU-second; wall: per second; medians of "
          f"{args.repeats}; ratio: median of the pairs)")
    for name in runs["here"][0]:
        mine = statistics.median(r[name] for r in runs["here"])
        theirs = statistics.median(r[name] for r in runs["there"])
        paired = statistics.median(a[name] / b[name] for a, b in zip(runs["here"], runs["there"]))
        print(f"{name:16s} {mine:12,.0f} {theirs:12,.0f} {paired:7.3f}")


if __name__ == "__main__":
    main()
