"""The dashboard page's load time with 100k users in Redis.

Redis (a private ``redis-server``) gets ``--users`` users' top-50 lists with explanations
and seen flags and their recent events (``RecommendationStore.write_batch``, as the worker
writes them), a day of per-minute series, a day of exposure over ``--items`` items, and one
worker's metrics. Then, with the API's app in process:

- ``GET /dashboard`` (1 hour and 24 hours), the user panel and the item panel, each timed
  ``--repeat`` times (median and max), and the first load (the API keeps the exposure of
  closed buckets: later loads read only the open ones);
- the same page with the same series and exposure but no users (the baseline: the page
  never scans users, so the ratio should be about 1);
- when Chromium and chromedriver are installed, the page loaded in headless Chromium over
  real HTTP (uvicorn): navigation start to the load event.

    python -m bench.dashboard [--users 100000] [--items 10000] [--repeat 20]
"""

from __future__ import annotations

import argparse
import random
import shutil
import statistics
import tempfile
import threading
import time
from pathlib import Path

from pydantic import SecretStr

KEY = "bench-key"


def populate(store, users: int, items: int, with_users: bool, now: float) -> None:
    """Write through ``stream.sink.ListSink``, as the worker does."""
    rng = random.Random(7)
    ids = [f"i{n}" for n in range(items)]
    if with_users:
        for start in range(0, users, 5000):
            chunk = [f"u{n}" for n in range(start, min(start + 5000, users))]
            lists = {u: [(i, round(1 - k / 50, 4)) for k, i in enumerate(rng.sample(ids, 50))] for u in chunk}
            explained = {u: [("cooc", f"often viewed with {rng.choice(ids)}, which you viewed")] * 50 for u in chunk}
            seen = {u: [k < 3 for k in range(50)] for u in chunk}
            history = {u: [(rng.choice(ids), "view", now - 60)] * 5 for u in chunk}
            store.write_batch(lists, "blend", now, explanations=explained, seen=seen, history=history)
    store.write_batch({}, "blend", now, [(i, 1.0) for i in ids[:50]], {"consumed:0": 10**6, "applied:0": 10**6},
                      {i: [(j, 0.5) for j in ids[:20]] for i in ids[:100]},
                      ("bench-worker", {"consumer_lag": 3, "partitions": [0, 1, 2], "users": users, "items": items,
                                        "online_evaluated": 10**5, "online_hits": 12_000, "last_checkpoint_at": now}),
                      item_metadata={i: {"title": f"Item {i}", "category": ["x"]} for i in ids})
    for minute in range(24 * 60):  # a day of series, a batch a minute, exposure every 5 minutes
        at = now - minute * 60
        exposure = {int(at // 300): {rng.choice(ids): rng.randint(1, 9) for _ in range(400)}} if minute % 5 == 0 else None
        store.add_series({"consumed": 60_000, "applied": 59_900, "dead_lettered": 50, "deduplicated": 50,
                          "online_evaluated": 5000, "online_hits": 600, "shown:cooc": 9000, "shown:embeddings": 6000,
                          "clicks:cooc": 300, "clicks:embeddings": 200, "fresh:1": 40_000, "fresh:3": 19_000,
                          "fresh:6": 900}, exposure, now=at)


def timed(client, path: str, repeat: int, headers=None) -> list[float]:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        response = client.get(path, headers=headers or {})
        times.append(time.perf_counter() - started)
        response.raise_for_status()
    return times


def browser_load_ms(app, path: str, repeat: int) -> list[float] | None:
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not (chromium and driver):
        return None
    import uvicorn
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    from streamrec.services import free_port

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        options.add_argument(arg)
    browser = webdriver.Chrome(service=Service(driver), options=options)
    try:
        loads = []
        for _ in range(repeat):
            browser.get(f"http://127.0.0.1:{port}{path}")
            timing = browser.execute_script("const t = performance.getEntriesByType('navigation')[0];"
                                            "return [t.startTime, t.loadEventEnd];")
            loads.append((timing[1] - timing[0]) / 1000)
        return loads
    finally:
        browser.quit()
        server.should_exit = True
        thread.join(timeout=10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--items", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args()

    from fastapi.testclient import TestClient

    from core.keys import make_client
    from core.settings import Settings
    from serving.app import create_app
    from stream.sink import ListSink
    from streamrec.services import LocalRedis, free_port

    def show(name: str, times: list[float], baseline: list[float] | None = None) -> None:
        median = statistics.median(times)
        ratio = f"   {median / statistics.median(baseline):.2f}x the baseline" if baseline else ""
        print(f"{name:<44} median {median * 1000:7.1f} ms   max {max(times) * 1000:7.1f} ms{ratio}", flush=True)

    routes = {
        "page 1 h": ("/dashboard?hours=1", None),
        "page 24 h": ("/dashboard?hours=24", None),
        "panels 1 h (the 5 s refresh)": ("/dashboard/panels?hours=1", None),
        "user panel": ("/dashboard/users/u77", {"X-API-Key": KEY}),
        "item panel": ("/dashboard/items/i7", None),
        "GET /healthz (floor)": ("/healthz", None),
    }
    with tempfile.TemporaryDirectory() as tmp:
        redis = LocalRedis(Path(tmp))
        url = redis.start(port=free_port())
        try:
            now = time.time()
            apps = {}
            for prefix, with_users in (("empty", False), ("full", True)):
                started = time.perf_counter()
                sink = ListSink(make_client(url, retries=2), prefix)
                populate(sink, args.users, args.items, with_users, now)
                print(f"{prefix}: wrote {args.users if with_users else 0:,} users ({sink.client.dbsize():,} keys in "
                      f"Redis so far) in {time.perf_counter() - started:.0f} s", flush=True)
                sink.close()
                apps[prefix] = create_app(Settings(
                    _env_file=None, redis_url=url, redis_prefix=prefix, kafka_bootstrap="127.0.0.1:1",
                    publish_impressions=False, read_api_key=SecretStr(KEY),
                    reports_dir=Path(__file__).parent / "agent_report"))
            results: dict[str, dict[str, list[float]]] = {"empty": {}, "full": {}}
            with TestClient(apps["empty"]) as empty, TestClient(apps["full"]) as full:
                clients = {"empty": empty, "full": full}
                for prefix, client in clients.items():  # nothing cached yet: every bucket is read
                    results[prefix]["page 24 h, first load (cold)"] = timed(client, "/dashboard?hours=24", 1)
                for client in clients.values():
                    timed(client, "/dashboard", 3)  # warm-up
                for name, (path, headers) in routes.items():
                    for _ in range(args.repeat):  # alternated: both see the same machine load
                        for prefix, client in clients.items():
                            results[prefix].setdefault(name, []).extend(timed(client, path, 1, headers))
            browser = browser_load_ms(apps["full"], "/dashboard", max(args.repeat // 4, 3))
            print(f"\n{args.users:,} users, {args.items:,} items, a day of series; {args.repeat} requests each, "
                  f"alternating with the baseline (the same Redis data without users):")
            for name, times in results["full"].items():
                show(name, times, results["empty"][name])
            if browser:
                show("Chromium: /dashboard navigation to load", browser)
            else:
                print("Chromium: not installed, browser load not measured")
        finally:
            redis.stop()

if __name__ == "__main__":
    main()
