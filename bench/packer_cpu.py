"""The client CPU of ``ListSink.write_batch`` through ``core.keys.make_client``'s client (its
command packer) against a plain ``redis.Redis`` (redis-py's packer), in turns in one process
on the same batches' effects (the ingest bench's stream through a pipeline), per 1k events.

    python -m bench.packer_cpu [--events 20000] [--model cooc] [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics
import time

import redis


def main(argv: list[str] | None = None) -> None:
    from bench.common import services
    from bench.ingest_cpu import batches_of
    from core.keys import make_client
    from core.settings import Settings
    from online_models import make_model
    from stream.pipeline import Pipeline
    from stream.sink import ListSink

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--model", default="cooc")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    settings = Settings(_env_file=None)
    batches = batches_of(args.events + settings.max_poll_records, settings.max_poll_records)
    pipeline = Pipeline(settings, make_model(args.model))
    effects = [pipeline.process(records) for records in batches]
    events = sum(map(len, batches[1:]))  # the first batch's write warms the connection up, untimed
    with services() as svc:
        clients = {"make_client": make_client(svc.redis_url, retries=0), "redis-py": redis.Redis.from_url(svc.redis_url)}
        spent: dict[str, list[float]] = {name: [] for name in clients}
        try:
            for rnd in range(args.rounds):
                for name in list(clients)[:: 1 if rnd % 2 == 0 else -1]:  # alternating which goes first
                    sink = ListSink(clients[name], f"packer-cpu-{name}", history_events=settings.user_history_events)
                    total = 0.0
                    for n, e in enumerate(effects):
                        started = time.process_time()
                        sink.write_batch(e.lists, e.model, e.written_at, e.popular, e.counters, e.similar,
                                         ("w0", {}), e.explanations, e.item_metadata, history=e.history)
                        total += time.process_time() - started if n else 0.0
                    spent[name].append(total)
        finally:
            for name, client in clients.items():
                for key in client.scan_iter(f"packer-cpu-{name}:*"):
                    client.delete(key)
                client.close()
    mine, theirs = (statistics.median(spent[name]) * 1e6 / events for name in clients)
    print(f"write_batch client CPU, ms per 1k events (median of {args.rounds}): make_client {mine:.2f}, "
          f"redis-py {theirs:.2f}, ratio {mine / theirs:.3f}")


if __name__ == "__main__":
    main()
