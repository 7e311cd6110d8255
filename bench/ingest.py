"""Ingest throughput: events/s one worker process sustains, Kafka to Redis, against a bare consumer.

The topic is filled first by a producer in its own process (``n`` events over a catalogue of
10k items); then, in a fresh process each, (a) the streamrec worker drains it (poll ->
validate -> ``learn_many`` -> top-k lists to Redis -> commit), and (b) a bare consumer on the
worker's Kafka client (confluent-kafka) with the same fetch settings drains it, only decoding
each message. The worker uses its own consumer group; the bare consumer is assigned every
partition and joins no group. The clock starts after the first batch (group join and the first
fetch excluded) and stops when the last event is committed (worker) or decoded (bare).
Each side's own CPU time is reported too (events per CPU-second), since on a shared machine
the wall-clock rate also measures the neighbours.
"""

from __future__ import annotations

import multiprocessing as mp
import statistics
import time

from bench.common import (
    Catalogue,
    Services,
    Spread,
    bench_settings,
    drop_prefix,
    in_process,
)

ITEMS = 10_000
USERS = 100_000


def produce(settings, n: int, seed: int = 7) -> float:
    """Fill ``settings.topic`` with ``n`` events; returns the producer's events/s."""
    from core.kafka import ensure_topics, make_producer

    ensure_topics(settings.kafka_bootstrap, {settings.topic: settings.topic_partitions,
                                             settings.dlq_topic: settings.topic_partitions})
    payloads = Catalogue(ITEMS, USERS, seed=seed).payloads(n)
    producer = make_producer(settings.kafka_bootstrap, acks=1, enable_idempotence=False, linger_ms=20)
    started = time.perf_counter()
    for key, value in payloads:
        producer.send(settings.topic, key=key, value=value)
    producer.flush()
    elapsed = time.perf_counter() - started
    producer.close()
    return n / elapsed


def no_lists(users):
    """A pipeline's ``_rank`` for learning only: no lists computed nor written (the learning ceiling)."""
    from core.keys import ListBatch

    return ListBatch.of_rankings({}), None


def _drain_worker(settings, n: int, profile_path: str | None, refresh_lists: bool, out: mp.Queue) -> None:
    from stream.worker import Worker

    worker = Worker(settings)
    refresh = {"seconds": 0.0, "users": 0}
    rank = worker.pipeline._rank

    def timed_rank(users):  # list refresh alone, as the worker runs it
        started = time.perf_counter()
        lists = rank(users)
        refresh["seconds"] += time.perf_counter() - started
        refresh["users"] += len(users)
        return lists

    # learning only: no lists computed nor written (the learning ceiling)
    worker.pipeline._rank = timed_rank if refresh_lists else no_lists
    first = None
    while first is None:
        first = worker.poll_once()
    refresh["seconds"], refresh["users"] = 0.0, 0
    profiler = _start_profiler(profile_path)
    consumed, batches = first.consumed, 0
    started, cpu_started = time.perf_counter(), time.process_time()
    while consumed < n:
        batch = worker.poll_once()
        if batch is not None:
            consumed += batch.consumed
            batches += 1
    worker.settle()  # the last batch's write, still in flight, counts too
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    _stop_profiler(profiler, profile_path)
    out.put({"events": consumed - first.consumed, "seconds": elapsed, "cpu_seconds": cpu, "batches": batches,
             "model": worker.model.name, "applied": worker.totals.applied,
             "refresh_seconds": refresh["seconds"], "refreshed_users": refresh["users"]})
    worker.close()


LARGE_FETCHES = {"fetch.max.bytes": 32 * 1024 * 1024, "max.partition.fetch.bytes": 8 * 1024 * 1024}
"""librdkafka's fetch sizes for the bare consumers: a poll is never short of records."""


def assigned_reader(settings, group_id: str):
    """The worker's Kafka client (``stream.consumer.Reader``) reading every partition of the
    topic from its start, assigned, not subscribed (like the worker's side reader: no group
    join to wait for)."""
    from stream.consumer import Partition, Reader, wait_for_partitions

    reader = Reader({"bootstrap.servers": settings.kafka_bootstrap, "group.id": group_id, **LARGE_FETCHES},
                    max_records=settings.max_poll_records)
    reader.assign([Partition(settings.topic, p) for p in sorted(wait_for_partitions(reader, settings.topic))])
    return reader


def _drain_bare(settings, n: int, out: mp.Queue) -> None:
    """The bare consumer: the worker's own Kafka client (``stream.consumer.Reader``) polling
    and decoding each event's JSON, nothing more; the ceiling ``ingest_ratio_vs_bare_consumer``
    compares the worker with."""
    import orjson

    consumer = assigned_reader(settings, f"{settings.group_id}.bare")
    loads, seen, first, started = orjson.loads, 0, 0, 0.0
    while seen < n:
        for records in consumer.poll(timeout_ms=settings.poll_timeout_ms).values():
            for record in records:
                loads(record.value)
            seen += len(records)
        if not first and seen:
            first, started, cpu_started = seen, time.perf_counter(), time.process_time()
    out.put({"events": seen - first, "seconds": time.perf_counter() - started,
             "cpu_seconds": time.process_time() - cpu_started})
    consumer.close()


def _start_profiler(path):
    if not path:
        return None
    import os

    os.makedirs(os.path.dirname(path), exist_ok=True)
    from pyinstrument import Profiler

    profiler = Profiler(interval=0.0005)
    profiler.start()
    return profiler


def _stop_profiler(profiler, path) -> None:
    if profiler is not None:
        profiler.stop()
        with open(path, "w") as f:
            f.write(profiler.output_text(unicode=False, color=False, show_all=False))


BY_MODEL = ("trending", "cooc", "embeddings", "blend")
# the default before sequence joined the blend (issue 14 asks its ingest against this one)
BLEND_WITHOUT_SEQUENCE = {"models": {"cooc": {}, "embeddings": {}}}


def run(svc: Services, *, quick: bool, repeats: int | None = None, profile_dir: str | None = None,
        log=print) -> dict:
    n = 20_000 if quick else 200_000
    repeats = repeats or (3 if quick else 5)
    base = bench_settings(svc)
    log(f"ingest: producing {n} events ({ITEMS} items, {USERS} users) to {base.topic}")
    produced = in_process(_produce_proc, base, n)
    # the blend without sequence, the default's partner in each main run (issue 14 asks the
    # default's ingest against it): the same events on a topic of its own, since a worker
    # merges the item deltas that earlier workers of its topic published, and another
    # model's do not fit; each pair's later runs find their earlier runs' deltas, alike
    partner_topic = bench_settings(svc).topic  # a new topic
    in_process(_produce_proc, bench_settings(svc, topic=partner_topic), n)
    worker_rates, bare_rates, ratios, model = [], [], [], None
    worker_cpu_rates, bare_cpu_rates, refresh_rates = [], [], []
    partner_rates, partner_cpu_rates = [], []
    for rep in range(repeats):
        run_settings = bench_settings(svc, topic=base.topic)
        profile = f"{profile_dir}/ingest-worker-{rep}.txt" if profile_dir and rep == 0 else None
        w = in_process(_drain_worker, run_settings, n, profile, True)
        drop_prefix(svc.redis_url, run_settings.redis_prefix)
        # at once after it, so that the pair shares the host's load of that moment
        partner_settings = bench_settings(svc, topic=partner_topic, model="blend",
                                          model_params=BLEND_WITHOUT_SEQUENCE)
        profile = f"{profile_dir}/ingest-blend_without_sequence.txt" if profile_dir and rep == 0 else None
        p = in_process(_drain_worker, partner_settings, n, profile, True)
        drop_prefix(svc.redis_url, partner_settings.redis_prefix)
        b = in_process(_drain_bare, bench_settings(svc, topic=base.topic), n)
        model = w["model"]
        wr, br = w["events"] / w["seconds"], b["events"] / b["seconds"]
        worker_rates.append(wr)
        bare_rates.append(br)
        ratios.append(wr / br)
        worker_cpu_rates.append(w["events"] / w["cpu_seconds"])
        bare_cpu_rates.append(b["events"] / b["cpu_seconds"])
        refresh_rates.append(w["refreshed_users"] / max(w["refresh_seconds"], 1e-9))
        partner_rates.append(p["events"] / p["seconds"])
        partner_cpu_rates.append(p["events"] / p["cpu_seconds"])
        log(f"  run {rep + 1}/{repeats}: worker {wr:,.0f} ev/s ({w['batches']} batches; "
            f"{worker_cpu_rates[-1]:,.0f} per CPU-second; list refresh {refresh_rates[-1]:,.0f} users/s), "
            f"bare {br:,.0f} ev/s ({bare_cpu_rates[-1]:,.0f} per CPU-second), ratio {wr / br:.2f}; "
            f"blend without sequence {partner_rates[-1]:,.0f} ev/s ({partner_cpu_rates[-1]:,.0f} per CPU-second), "
            f"the pair's ratio per CPU-second {worker_cpu_rates[-1] / partner_cpu_rates[-1]:.2f}")
    # each model, and the default model learning only (list refresh off), one after the
    # other in the same run, so that their ratios hold on a shared machine
    per_model_repeats = 1 if quick else 3
    by_model: dict[str, dict] = {}
    for name in (*BY_MODEL, "cooc_learn_only", None):
        label = name or "learn_only"
        rates, cpu_rates = [], []
        for _ in range(per_model_repeats):
            # a topic of its own (the same events): see partner_topic
            if name == "cooc_learn_only":
                run_settings = bench_settings(svc, model="cooc")
            else:
                run_settings = bench_settings(svc, **({"model": name} if name else {}))
            in_process(_produce_proc, run_settings, n)
            # with --profile, each model's first run is profiled too (its figures then include the profiler)
            profile = f"{profile_dir}/ingest-{label}.txt" if profile_dir and not rates else None
            w = in_process(_drain_worker, run_settings, n, profile, name not in (None, "cooc_learn_only"))
            drop_prefix(svc.redis_url, run_settings.redis_prefix)
            rates.append(w["events"] / w["seconds"])
            cpu_rates.append(w["events"] / w["cpu_seconds"])
        by_model[label] = {"worker": Spread.of(rates).as_dict(), "worker_per_cpu_s": Spread.of(cpu_rates).as_dict()}
        log(f"  {label.replace('_learn_only', ', learning only') if name else f'{model}, learning only'}: "
            f"{statistics.median(rates):,.0f} ev/s "
            f"({statistics.median(cpu_rates):,.0f} per CPU-second)")
    learn_only = by_model.pop("learn_only")
    learn_only_by_model = {"cooc": by_model.pop("cooc_learn_only"), model: learn_only}
    by_model["blend_without_sequence"] = {"worker": Spread.of(partner_rates).as_dict(),
                                          "worker_per_cpu_s": Spread.of(partner_cpu_rates).as_dict()}
    by_model["default"] = {"worker": Spread.of(worker_rates).as_dict(),
                           "worker_per_cpu_s": Spread.of(worker_cpu_rates).as_dict()}
    pairs = [w / p for w, p in zip(worker_cpu_rates, partner_cpu_rates)]
    versus = {"pairs": pairs, "median": statistics.median(pairs),
              "ratio_of_medians": statistics.median(worker_cpu_rates) / statistics.median(partner_cpu_rates)}
    log(f"  default vs blend without sequence per CPU-second: {versus['median']:.2f} the median pair "
        f"({', '.join(f'{r:.2f}' for r in pairs)}), {versus['ratio_of_medians']:.2f} the ratio of the medians")
    return {
        "events": n, "items": ITEMS, "users": USERS, "model": model, "producer_events_per_s": produced,
        "worker": Spread.of(worker_rates).as_dict(), "bare_consumer": Spread.of(bare_rates).as_dict(),
        "ratio": Spread.of(ratios).as_dict(),
        # events per second of the process's own CPU time: what a dedicated core would sustain
        # (this machine's cores are shared, so wall-clock rates move with the neighbours' load)
        "worker_per_cpu_s": Spread.of(worker_cpu_rates).as_dict(),
        "bare_per_cpu_s": Spread.of(bare_cpu_rates).as_dict(),
        "by_model": by_model,
        "learn_only": learn_only,
        "learn_only_by_model": learn_only_by_model,  # the learning ceilings: list refresh off
        "refresh_users_per_s": Spread.of(refresh_rates).as_dict(),
        # issue 14: each main run's default over the blend without sequence run at once after it
        "default_vs_blend_without_sequence": versus,
    }


def _produce_proc(settings, n, out):
    out.put(produce(settings, n))
