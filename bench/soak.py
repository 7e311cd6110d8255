"""Soak: does the worker's memory stop growing on a long stream whose users and items churn?

A news- or shop-like stream in event time: users arrive, are active for a while and leave;
items are published, are popular while new and fade (a sliding catalogue). One ``Worker``
with the served model but no Kafka (records go to ``Worker.process`` directly; lists are
ranked and written to Redis as in production) learns the stream; every ``--expire-every``
events it runs the idle expiry its checkpoints run, then its resident memory and the sizes
of its tables are read. With expiry on, memory should plateau once the stream is longer than
the expiry horizon; ``--no-expiry`` shows the growth it prevents (the baseline).

    python -m bench.soak                       # 1.5M events over 60 days, 7-day expiry
    python -m bench.soak --events 300000 --no-expiry
"""

from __future__ import annotations

import argparse
import json
import random
import time
from itertools import accumulate

import orjson

from bench.common import (
    TYPE_MIX,
    Nothing,
    bench_settings,
    drop_prefix,
    in_process,
    rss_bytes,
    services,
)
from stream.pipeline import Record

DAY_S = 86_400.0


class ChurningStream:
    """Events in event-time order over ``days``, with users and items that come and go.

    At time fraction ``f`` the active users are a window of ``active_users`` ids starting at
    ``f * (users - active_users)``, and the active catalogue a window of ``active_items``
    ids sliding the same way; within the catalogue the newest items are the most popular
    (Zipf over age rank).
    """

    def __init__(self, events: int, days: float, users: int, items: int, active_users: int, active_items: int,
                 seed: int = 3):
        self.events, self.span_s = events, days * DAY_S
        self.users, self.items = users, items
        self.active_users, self.active_items = active_users, active_items
        self.rng = random.Random(seed)
        self._cum = list(accumulate(1.0 / (r + 1) for r in range(active_items)))
        self._ranks = range(active_items)
        self._types = [t for t, _ in TYPE_MIX]
        self._type_cum = list(accumulate(p for _, p in TYPE_MIX))

    def values(self, start: int, stop: int, t0: float) -> list[tuple[float, bytes]]:
        """Events ``start..stop-1`` as (ts, JSON value)."""
        rng, out = self.rng, []
        ages = rng.choices(self._ranks, cum_weights=self._cum, k=stop - start)
        kinds = rng.choices(self._types, cum_weights=self._type_cum, k=stop - start)
        for n, age, kind in zip(range(start, stop), ages, kinds):
            f = n / self.events
            user = int(f * (self.users - self.active_users)) + rng.randrange(self.active_users)
            newest = int(f * (self.items - self.active_items)) + self.active_items - 1
            ts = t0 + f * self.span_s
            out.append((ts, orjson.dumps({"user_id": f"u{user}", "item_id": f"i{newest - age}",
                                          "type": kind, "ts": round(ts, 3)})))
        return out


def _soak(settings, args, out) -> None:
    from stream.worker import Worker

    stream = ChurningStream(args.events, args.days, args.users, args.items, args.active_users, args.active_items)
    worker = Worker(settings, consumer=Nothing(), dlq_producer=Nothing())
    rss0 = rss_bytes()
    t0 = time.time() - args.days * DAY_S
    points, started, done = [], time.perf_counter(), 0
    while done < args.events:
        upto = min(args.events, done + args.expire_every)
        while done < upto:
            stop = min(upto, done + args.batch)
            records = [Record(settings.topic, n % 3, n, int(ts * 1000), b"", value)
                       for n, (ts, value) in zip(range(done, stop), stream.values(done, stop, t0))]
            worker.process(records)
            done = stop
        if not args.no_expiry:
            worker.pipeline.expire_idle()
        points.append({"events": done, "day": round(done / args.events * args.days, 1), "rss_bytes": rss_bytes(),
                       **worker.pipeline.state_sizes(), "seconds": round(time.perf_counter() - started, 1)})
        print(f"  day {points[-1]['day']:5.1f}: {done:>9,} events, RSS {points[-1]['rss_bytes'] / 2**20:7.1f} MiB, "
              f"{json.dumps(worker.pipeline.state_sizes())}, {points[-1]['seconds']:.0f} s", flush=True)
    out.put({"points": points, "rss_after_init": rss0, "model": worker.model.name})


def plateau(points: list[dict], after_day: float) -> dict:
    """RSS growth over the part of the run past ``after_day`` (when expiry has caught up)."""
    late = [p for p in points if p["day"] >= after_day]
    if len(late) < 2:
        return {"from_day": after_day, "growth_mib": None, "growth_ratio": None}
    first, last = late[0]["rss_bytes"], late[-1]["rss_bytes"]
    return {"from_day": late[0]["day"], "to_day": late[-1]["day"], "rss_from_mib": first / 2**20,
            "rss_to_mib": last / 2**20, "growth_mib": (last - first) / 2**20, "growth_ratio": last / first}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=1_500_000)
    parser.add_argument("--days", type=float, default=60.0, help="event-time span of the stream")
    parser.add_argument("--expiry-days", type=float, default=7.0, help="idle expiry of users and items")
    parser.add_argument("--users", type=int, default=300_000, help="distinct users over the whole stream")
    parser.add_argument("--items", type=int, default=60_000, help="distinct items over the whole stream")
    parser.add_argument("--active-users", type=int, default=20_000)
    parser.add_argument("--active-items", type=int, default=5_000)
    parser.add_argument("--batch", type=int, default=1_000, help="records per Worker.process call")
    parser.add_argument("--expire-every", type=int, default=100_000, help="events between expiry runs")
    parser.add_argument("--model", default=None, help="the served model (default: the settings' default)")
    parser.add_argument("--no-expiry", action="store_true", help="never expire: the growth expiry prevents")
    parser.add_argument("--json", metavar="FILE")
    args = parser.parse_args()

    with services() as svc:
        overrides = {"user_idle_expiry_s": args.expiry_days * DAY_S, "item_idle_expiry_s": args.expiry_days * DAY_S}
        if args.model:
            overrides["model"] = args.model
        settings = bench_settings(svc, **overrides)
        print(f"soak: {args.events:,} events over {args.days:g} days, {args.users:,} users "
              f"({args.active_users:,} active at a time), {args.items:,} items ({args.active_items:,} active), "
              f"expiry {'off' if args.no_expiry else f'{args.expiry_days:g} days'}", flush=True)
        try:
            result = in_process(_soak, settings, args, timeout_s=7200)
        finally:
            drop_prefix(svc.redis_url, settings.redis_prefix)
    result["plateau"] = plateau(result["points"], after_day=2 * args.expiry_days)
    result["args"] = vars(args)
    p = result["plateau"]
    if p["growth_mib"] is not None:
        print(f"RSS from day {p['from_day']:g} to {p['to_day']:g}: {p['rss_from_mib']:.0f} -> {p['rss_to_mib']:.0f} MiB "
              f"({p['growth_mib']:+.0f} MiB, x{p['growth_ratio']:.2f})")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
