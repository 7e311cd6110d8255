"""Serving: GET latency at a fixed arrival rate, and maximum throughput, against a bare endpoint.

Redis holds ``USERS`` top-``STREAMREC_TOP_K`` lists (50 by default) written by
``ListSink.write_batch``; requests ask for the top 10. The API
(``serving.app``) and the baseline (``bench.bare_app``: one Redis GET returned as it is) run
in turn under uvicorn, one process pinned to the server cores; the load generator
(``bench.loadgen``) runs in its own process pinned to the other cores. Redis and Kafka are
not pinned (they are shared by both sides, as in a single-box deployment).

Besides the rates, the server's own CPU time per request in the closed loop is read from
``/proc`` (all its threads: the API's impression sender too). On a shared machine the rates
swing with whatever else runs; CPU per request much less, and bare's over the API's is the
throughput ratio the two would have on cores of their own.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import time
import urllib.request

from bench import loadgen
from bench.common import (
    Services,
    Spread,
    bench_settings,
    drop_prefix,
    in_process,
    percentile,
    pin,
    split_cores,
)

USERS = 10_000
ITEMS = 10_000
RATE = 500


def populate(settings) -> list[str]:
    from core.keys import make_client
    from stream.sink import ListSink

    store = ListSink(make_client(settings.redis_url, retries=2), settings.redis_prefix)
    rng = random.Random(5)
    users = [f"u{n}" for n in range(USERS)]
    now = time.time()
    for start in range(0, USERS, 2000):
        lists = {u: [(f"i{rng.randrange(ITEMS)}", rng.random()) for _ in range(settings.top_k)]
                 for u in users[start:start + 2000]}
        store.write_batch(lists, "cooc", now, popular=lists[users[start]])
    store.close()
    return users


def start_server(app: str, settings, port: int, core_set: set[int]) -> subprocess.Popen:
    env = {**os.environ, "STREAMREC_REDIS_URL": settings.redis_url, "STREAMREC_REDIS_PREFIX": settings.redis_prefix,
           "STREAMREC_KAFKA_BOOTSTRAP": settings.kafka_bootstrap}
    proc = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "--factory", app, "--host", "127.0.0.1", "--port", str(port),
         "--no-access-log", "--log-level", "warning"],
        env=env, preexec_fn=lambda: pin(core_set), stdin=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/openapi.json", timeout=1).read()
            return proc
        except OSError:
            if proc.poll() is not None:
                raise RuntimeError(f"{app} exited with code {proc.returncode}")
            time.sleep(0.2)
    proc.kill()
    raise TimeoutError(f"{app} did not answer on port {port}")


def _cpu_s(pid: int) -> float:
    """CPU time (user + system, all threads) a process has used so far, from /proc."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _generate(core_set, port, server_pid, paths, rate, duration_s, max_s, out) -> None:
    pin(core_set)
    # warm up: connections, the server's first requests, caches
    loadgen.closed_loop("127.0.0.1", port, paths, 1.0, connections=8)
    fixed = loadgen.open_loop("127.0.0.1", port, paths, rate, duration_s)
    lat = fixed["latencies_s"]
    result = {"p50_ms": percentile(lat, 50) * 1e3, "p99_ms": percentile(lat, 99) * 1e3,
              "max_ms": max(lat) * 1e3, "achieved_rps": fixed["achieved_rps"], "errors": fixed["errors"]}
    cpu_before = _cpu_s(server_pid)
    peak = loadgen.closed_loop("127.0.0.1", port, paths, max_s, connections=32)
    time.sleep(0.3)  # what the answers left to background threads (impressions) is theirs too
    # the server's own CPU per answer: what its core can serve, whatever else shares the machine
    cpu_us = (_cpu_s(server_pid) - cpu_before) / max(peak["requests"], 1) * 1e6
    result.update(max_rps=peak["rps"], max_errors=peak["errors"], cpu_us_per_request=cpu_us)
    out.put(result)


def _py_spy(pid: int, seconds: float, path: str) -> subprocess.Popen | None:
    try:
        return subprocess.Popen(["py-spy", "record", "-p", str(pid), "-d", str(int(seconds)), "-r", "500",
                                 "-f", "raw", "-o", path], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    except FileNotFoundError:
        return None


def run(svc: Services, *, quick: bool, repeats: int | None = None, profile_dir: str | None = None,
        log=print) -> dict:
    from streamrec.services import free_port

    repeats = repeats or (3 if quick else 5)
    duration_s, max_s = (3.0, 2.0) if quick else (15.0, 10.0)
    settings = bench_settings(svc)
    server_cores, gen_cores = split_cores()
    log(f"serve: {USERS} users' top-{settings.top_k} lists; server on cores {sorted(server_cores)}, "
        f"load generator on cores {sorted(gen_cores)}; {RATE} req/s for {duration_s:.0f} s, then closed loop "
        f"(32 connections) for {max_s:.0f} s")
    users = populate(settings)
    apps = {
        "api": ("serving.app:create_app", "/users/{id}/recommendations?k=10"),
        "bare": ("bench.bare_app:create_app", "/bare/{id}"),
    }
    results: dict[str, list[dict]] = {name: [] for name in apps}
    try:
        for rep in range(repeats):
            for name, (app, template) in apps.items():
                port = free_port()
                proc = start_server(app, settings, port, server_cores)
                spy = None
                if profile_dir and rep == 0:
                    os.makedirs(profile_dir, exist_ok=True)
                    spy = _py_spy(proc.pid, duration_s + max_s + 1, f"{profile_dir}/serve-{name}.txt")
                try:
                    paths = loadgen.shuffled_paths(template, users, 20_000, seed=rep)
                    r = in_process(_generate, gen_cores, port, proc.pid, paths, RATE, duration_s, max_s)
                finally:
                    if spy is not None:
                        spy.wait(30)
                    proc.terminate()
                    proc.wait(10)
                results[name].append(r)
                log(f"  run {rep + 1}/{repeats} {name:4}: p50 {r['p50_ms']:.2f} ms, p99 {r['p99_ms']:.2f} ms "
                    f"at {r['achieved_rps']:.0f} req/s ({r['errors']} errors); max {r['max_rps']:,.0f} req/s, "
                    f"server CPU {r['cpu_us_per_request']:.0f} us/request")
    finally:
        drop_prefix(svc.redis_url, settings.redis_prefix)

    def spread(name, key):
        return Spread.of([r[key] for r in results[name]]).as_dict()

    return {
        "rate": RATE, "users": USERS, "server_cores": sorted(server_cores), "generator_cores": sorted(gen_cores),
        "api": {k: spread("api", k) for k in ("p50_ms", "p99_ms", "max_ms", "achieved_rps", "max_rps",
                                               "cpu_us_per_request")},
        "bare": {k: spread("bare", k) for k in ("p50_ms", "p99_ms", "max_ms", "achieved_rps", "max_rps",
                                                 "cpu_us_per_request")},
        "p99_ratio_vs_bare": Spread.of([a["p99_ms"] / b["p99_ms"] for a, b in zip(results["api"], results["bare"])]).as_dict(),
        "max_rps_ratio_vs_bare": Spread.of([a["max_rps"] / b["max_rps"] for a, b in zip(results["api"], results["bare"])]).as_dict(),
        # bare's CPU per request over the API's: the throughput ratio on cores nothing else uses
        "cpu_ratio_vs_bare": Spread.of([b["cpu_us_per_request"] / a["cpu_us_per_request"]
                                        for a, b in zip(results["api"], results["bare"])]).as_dict(),
        "errors": sum(r["errors"] + r["max_errors"] for rs in results.values() for r in rs),
    }
