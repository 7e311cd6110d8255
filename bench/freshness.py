"""Freshness: from ``produce()`` of a user's event to the API answering with that user's new list.

A worker process (the default served model) and the API (uvicorn) run against a topic that a
third process loads with ``LOAD_RPS`` events/s (and again with ``LOAD_RPS_LOW``, reported
under ``at_1k``). The load starts once the worker applies events (a warm-up event
answered), so that no backlog of its start-up is measured; the probes start once it has
applied all the load sent since but a quarter second of it. A worker that does not get there within
``CATCH_UP_S`` does not keep up with the load: the run says so (``keeps_up``, and the
events/s the worker did apply meanwhile) and probes anyway. The probe (this process) sends one event for
a user never seen before, flushes the producer, and polls ``GET /users/{id}/recommendations``
over a keep-alive connection every ``POLL_S`` until the answer is the user's own list
(``source`` turns ``personal`` and ``updated_at`` moves); the time since the send is one
sample. Baseline, same run and same load: the time until a bare kafka-python consumer in
this process receives a probe event (the floor any Kafka-fed pipeline starts from).
"""

from __future__ import annotations

import http.client
import os
import random
import threading
import time
import uuid

import orjson

from bench.common import (
    Catalogue,
    Services,
    Spread,
    bench_settings,
    drop_prefix,
    percentile,
)
from bench.serve import start_server

LOAD_RPS = 5000
LOAD_RPS_LOW = 1000
# between two GETs of one probe: every answer is published as an impression that the worker
# consumes, so a tighter poll would load the pipeline it measures (resolution: +-POLL_S)
POLL_S = 0.005
CATCH_UP_S = 30.0  # how long a loaded worker may take to apply all the load but a quarter second of it


def _load(settings, rate: int, stop_file: str, out) -> None:
    from core.kafka import make_producer

    catalogue = Catalogue(10_000, 100_000, seed=11)
    producer = make_producer(settings.kafka_bootstrap)
    sent, started = 0, time.perf_counter()
    while not os.path.exists(stop_file):
        due = int((time.perf_counter() - started) * rate)
        for _ in range(due - sent):
            event = catalogue.event()
            producer.send(settings.topic, key=event["user_id"].encode(), value=orjson.dumps(event))
        sent = max(sent, due)
        time.sleep(0.005)
    producer.flush()
    out.put({"sent": sent, "rate": sent / (time.perf_counter() - started)})


def _worker(settings, stop_file: str, out) -> None:
    from stream.worker import Worker

    worker = Worker(settings)
    stop = threading.Event()
    threading.Thread(target=lambda: (_wait_file(stop_file), stop.set()), daemon=True).start()
    totals = worker.run(stop)
    worker.close()
    out.put({"consumed": totals.consumed})


def _store(settings):
    from core.keys import make_client
    from serving.store import RecommendationStore

    return RecommendationStore(make_client(settings.redis_url, retries=2), settings.redis_prefix)


def _wait_consuming(settings, timeout_s: float = 90.0) -> None:
    """Until the worker applies events: a warm-up event is sent every half second until one is."""
    from core.kafka import make_producer

    store, producer = _store(settings), make_producer(settings.kafka_bootstrap)
    deadline = time.monotonic() + timeout_s
    try:
        while store.counters().get("applied", 0) == 0:
            if time.monotonic() > deadline:
                raise TimeoutError(f"the worker applied no event within {timeout_s:.0f} s")
            producer.send(settings.topic, key=b"warm-up", value=_probe_event("warm-up"))
            producer.flush()
            time.sleep(0.5)
    finally:
        producer.close()
        store.close()


def _wait_caught_up(settings, rate: int, timeout_s: float) -> dict:
    """Wait (two seconds of load at least) until the worker has applied all the load sent
    since it started but a quarter second of it; returns whether it got there, how many
    events it was behind then and the events/s it applied meanwhile.

    The worker's counters are written with each batch, so a worker busy with a long batch
    counts as behind: the test is on what it has made durable, not on its consumer lag.
    """
    store = _store(settings)
    started = time.monotonic()
    applied_at_start = store.counters().get("applied", 0)
    try:
        while True:
            time.sleep(0.25)
            elapsed = time.monotonic() - started
            applied = store.counters().get("applied", 0) - applied_at_start
            behind = rate * elapsed - applied
            if elapsed >= 2.0 and behind <= rate / 4:
                keeps_up = True
                break
            if elapsed > timeout_s:
                keeps_up = False
                break
    finally:
        store.close()
    return {"keeps_up": keeps_up, "behind_at_probes": float(max(behind, 0.0)),
            "worker_events_per_s": applied / elapsed}


def _wait_file(path: str) -> None:
    while not os.path.exists(path):
        time.sleep(0.05)


def _probe_event(user: str) -> bytes:
    return orjson.dumps({"user_id": user, "item_id": f"i{random.randrange(100)}", "type": "click",
                         "ts": round(time.time(), 3)})


def probe_api(settings, port: int, n: int, timeout_s: float = 5.0) -> list[float]:
    from core.kafka import make_producer

    producer = make_producer(settings.kafka_bootstrap)
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    tag = uuid.uuid4().hex[:6]

    def get(user: str) -> dict:
        conn.request("GET", f"/users/{user}/recommendations?k=10")
        return orjson.loads(conn.getresponse().read())

    latencies = []
    for i in range(n):
        if latencies[-3:] == [float("inf")] * 3:  # the pipeline is stuck: count the rest as timeouts
            latencies += [float("inf")] * (n - i)
            break
        user = f"probe-{tag}-{i}"
        before = get(user)["updated_at"]
        value = _probe_event(user)
        started = time.perf_counter()
        producer.send(settings.topic, key=user.encode(), value=value)
        producer.flush()
        while time.perf_counter() - started < timeout_s:
            body = get(user)
            if body["source"] == "personal" and body["updated_at"] != before:
                latencies.append(time.perf_counter() - started)
                break
            time.sleep(POLL_S)
        else:
            latencies.append(float("inf"))
        time.sleep(random.uniform(0.02, 0.06))
    conn.close()
    producer.close()
    return latencies


def probe_bare_consumer(settings, n: int, timeout_s: float = 5.0) -> list[float]:
    """Produce-to-consume latency of a bare consumer (own group) on the same loaded topic."""
    from kafka import KafkaConsumer

    from core.kafka import make_producer

    consumer = KafkaConsumer(settings.topic, bootstrap_servers=settings.kafka_bootstrap,
                             group_id=f"{settings.group_id}-bare", enable_auto_commit=False,
                             auto_offset_reset="latest")
    while not consumer.assignment():
        consumer.poll(timeout_ms=100)
    producer = make_producer(settings.kafka_bootstrap)
    tag = uuid.uuid4().hex[:6]
    latencies = []
    for i in range(n):
        key = f"probe-{tag}-{i}".encode()
        started = time.perf_counter()
        producer.send(settings.topic, key=key, value=_probe_event(key.decode()))
        producer.flush()
        found = False
        while not found and time.perf_counter() - started < timeout_s:
            for records in consumer.poll(timeout_ms=50).values():
                if any(r.key == key for r in records):
                    found = True
        latencies.append(time.perf_counter() - started if found else float("inf"))
        time.sleep(random.uniform(0.02, 0.06))
    consumer.close()
    producer.close()
    return latencies


def run(svc: Services, *, quick: bool, repeats: int | None = None, log=print, **_) -> dict:
    repeats = repeats or (2 if quick else 5)
    result = _run_at(svc, LOAD_RPS, repeats, quick, log)
    log(f"  and at {LOAD_RPS_LOW:,} events/s:")
    result["at_1k"] = _run_at(svc, LOAD_RPS_LOW, 1 if quick else repeats, quick, log)
    return result


def _run_at(svc: Services, rate: int, repeats: int, quick: bool, log) -> dict:
    import multiprocessing as mp

    from core.kafka import ensure_topics
    from streamrec.services import free_port

    probes = 30 if quick else 200
    ctx = mp.get_context("spawn")
    runs = []
    for rep in range(repeats):
        settings = bench_settings(svc)
        ensure_topics(settings.kafka_bootstrap, {settings.topic: settings.topic_partitions,
                                                 settings.dlq_topic: settings.topic_partitions})
        stop_file = str(settings.state_dir / "stop")
        settings.state_dir.mkdir(parents=True, exist_ok=True)
        out = ctx.Queue()
        load = ctx.Process(target=_load, args=(settings, rate, stop_file, out))
        worker = ctx.Process(target=_worker, args=(settings, stop_file, out))
        worker.start()
        port = free_port()
        api = start_server("serving.app:create_app", settings, port, None)
        try:
            _wait_consuming(settings)  # the worker started, joined the group and applies events
            load.start()
            caught_up = _wait_caught_up(settings, rate, CATCH_UP_S)
            if not caught_up["keeps_up"]:
                log(f"  the worker did not keep up with {rate:,} events/s: {caught_up['behind_at_probes']:,.0f} events "
                    f"behind after {CATCH_UP_S:.0f} s, {caught_up['worker_events_per_s']:,.0f} events/s applied")
            api_lat = probe_api(settings, port, probes)
            if not worker.is_alive():
                log(f"  the worker process exited (code {worker.exitcode}) during the probes")
            bare_lat = probe_bare_consumer(settings, probes)
        finally:
            open(stop_file, "w").close()
            api.terminate()
            api.wait(10)
            if load.is_alive() or load.exitcode is not None:
                load.join(30)
            worker.join(60)
            for proc in (load, worker):
                if proc.is_alive():
                    proc.kill()
            drop_prefix(svc.redis_url, settings.redis_prefix)
        stats = {
            "p50_ms": percentile(api_lat, 50) * 1e3, "p99_ms": percentile(api_lat, 99) * 1e3,
            "max_ms": max(api_lat) * 1e3, "timeouts": float(sum(x == float("inf") for x in api_lat)),
            "bare_p50_ms": percentile(bare_lat, 50) * 1e3, "bare_p99_ms": percentile(bare_lat, 99) * 1e3,
            "keeps_up": float(caught_up["keeps_up"]), "worker_events_per_s": caught_up["worker_events_per_s"],
            "behind_at_probes": caught_up["behind_at_probes"],
        }
        runs.append(stats)
        log(f"  run {rep + 1}/{repeats}: freshness p50 {stats['p50_ms']:.0f} ms, p99 {stats['p99_ms']:.0f} ms "
            f"(max {stats['max_ms']:.0f}); bare consumer p50 {stats['bare_p50_ms']:.0f} ms, "
            f"p99 {stats['bare_p99_ms']:.0f} ms; worker applied {stats['worker_events_per_s']:,.0f} events/s "
            f"while the load came ({'kept up' if stats['keeps_up'] else 'did not keep up'})")
    return {
        "load_events_per_s": rate, "probes_per_run": probes,
        **{key: Spread.of([r[key] for r in runs]).as_dict() for key in runs[0]},
        "p50_ratio_vs_bare": Spread.of([r["p50_ms"] / r["bare_p50_ms"] for r in runs]).as_dict(),
    }
