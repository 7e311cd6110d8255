"""The recommendation agent against its single strategies, and the content gain on cold items.

Prequential (test-then-learn, timestamp order, the shared protocol): at each event of a
user seen before, the model serves its top-10 (the user's earlier items excluded) before it
learns the event; a hit is the event's item in the list. For the agent that list is what
its bandit assembled, and the event settles it (reward 1 for the strategy in the hit slot,
0 for the other shown slots), so the bandit learns off the logged data as it goes.

Reported per dataset and model: HR@10 / NDCG@10 over all evaluated events, HR@10 on
*cold* events (the event's item had fewer than ``--cold`` prior interactions), events/s;
for agents, the share of the top-10 slots each strategy filled over time (plotted) and the
hits each strategy earned. Item metadata (titles, genres) reach the content strategies
before the replay: MovieLens ``movies.csv`` (ml-latest-small) or ``ml-100k.item``.

    python -m bench.agent_backtest --datasets ml100k,ml-latest-small,yoochoose --out bench/agent_report

Writes ``report.json``, ``report.md`` and ``arm_shares.png`` into ``--out``.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import sys
import time
from collections import Counter
from pathlib import Path

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")  # one BLAS thread: on 2 shared cores more threads are 5x slower

SHARED = Path(os.environ.get("STREAMREC_SHARED", Path(__file__).resolve().parents[2] / "shared"))
ML100K = Path(os.environ.get("STREAMREC_ML100K", "/tmp/recbole/recbole/dataset_example/ml-100k/ml-100k.inter"))

DATASETS = {
    "ml100k": (ML100K, "movielens"),
    "ml-latest-small": (SHARED / "datasets/ml-latest-small/ratings.csv", "movielens"),
    "yoochoose": (SHARED / "datasets/yoochoose-clicks-sample", "yoochoose"),
}
DEFAULT_MODELS = "trending,cooc,embeddings,content,blend,blend+content,agent-no-content,agent"
NO_CONTENT = {"cooc": {}, "embeddings": {}, "trending": {}}


# -- metadata --------------------------------------------------------------------------


def load_metadata(dataset: str) -> dict[str, dict]:
    """Item metadata (title, genres) of a dataset, or ``{}`` where it has none."""
    if dataset == "ml-latest-small":
        path = SHARED / "datasets/ml-latest-small/movies.csv"
        out = {}
        with open(path, encoding="utf-8", newline="") as f:
            for row in csv.reader(f):
                if len(row) >= 3 and row[0].strip().isdigit():
                    out[row[0].strip()] = {"title": row[1].strip(), "genres": row[2].strip()}
        return out
    if dataset == "ml100k":
        path = ML100K.with_suffix(".item")
        out = {}
        if path.exists():
            with open(path, encoding="latin-1") as f:
                next(f)
                for line in f:
                    parts = line.rstrip("\r\n").split("\t")
                    if len(parts) >= 4:
                        year = f" ({parts[2]})" if parts[2].strip() else ""
                        out[parts[0]] = {"title": parts[1] + year, "genres": parts[3].split()}
        return out
    return {}


# -- models ----------------------------------------------------------------------------


def make(name: str, seed: int = 0):
    from online_models import make_model
    from online_models.agent import DEFAULT_STRATEGIES, Agent

    if name == "agent":
        return Agent(seed=seed)
    if name == "agent-ucb":
        return Agent(policy="ucb1", seed=seed)
    if name == "agent-no-content":
        return Agent(strategies=NO_CONTENT, seed=seed)
    if name == "agent-flat":  # one segment, one slot statistics for all positions
        return Agent(strategies=DEFAULT_STRATEGIES, segments=None, n_slots=1, seed=seed)
    if name == "content-alltime":  # popularity without decay: ratings logs span decades
        return make_model("content", half_life_s=None)
    if name == "blend+content-alltime":
        return make_model("blend", models={"cooc": {}, "embeddings": {}, "content": {"half_life_s": None}},
                          weights={"cooc": 1.0, "embeddings": 0.5, "content": 0.5})
    if name == "agent-alltime":
        strategies = {**DEFAULT_STRATEGIES, "content": {"model": "content", "params": {"half_life_s": None}}}
        return Agent(strategies=strategies, seed=seed)
    if name == "blend+content":
        return make_model("blend", models={"cooc": {}, "embeddings": {}, "content": {}},
                          weights={"cooc": 1.0, "embeddings": 0.5, "content": 0.3})
    return make_model(name)


def give_metadata(model, metadata: dict[str, dict]) -> None:
    if not metadata:
        return
    learn = getattr(model, "learn_items", None)
    if callable(learn):
        learn(metadata)
        return
    for part in getattr(model, "_models", {}).values():  # a blend's components
        give_metadata(part, metadata)


# -- the replay ------------------------------------------------------------------------


def replay(model, events, *, k: int = 10, cold: int = 5, buckets: int = 40, progress=None) -> dict:
    """The shared prequential protocol, plus cold-item HR and, for agents, slot shares over time."""
    seen: dict[str, set[str]] = {}
    item_count: Counter[str] = Counter()
    is_agent = hasattr(model, "last_served")
    n_total = len(events)
    bucket_of = max(1, math.ceil(n_total / buckets))
    shares = [Counter() for _ in range(math.ceil(n_total / bucket_of))]
    strat_hits: Counter[str] = Counter()
    strat_slots: Counter[str] = Counter()
    hits = ndcg = 0.0
    evaluated = cold_eval = cold_hits = 0
    recommend, learn, log2 = model.recommend, model.learn_one, math.log2
    t0 = time.perf_counter()
    for n, event in enumerate(events):
        user, item = event.user_id, event.item_id
        user_items = seen.get(user)
        if user_items is not None:
            ids = [i for i, _ in recommend(user, k, user_items)[:k]]
            evaluated += 1
            is_cold = item_count[item] < cold
            cold_eval += is_cold
            if item in ids:
                rank = ids.index(item)
                hits += 1
                ndcg += 1.0 / log2(rank + 2)
                cold_hits += is_cold
            if is_agent:
                served = model.last_served(user)
                bucket = shares[n // bucket_of]
                for it, strategy, _ in served[:k]:
                    bucket[strategy] += 1
                    strat_slots[strategy] += 1
                    if it == item:
                        strat_hits[strategy] += 1
        learn(event)
        if user_items is None:
            user_items = seen[user] = set()
        user_items.add(item)
        item_count[item] += 1
        if progress is not None and n % 20_000 == 0 and n:
            progress(n)
    elapsed = time.perf_counter() - t0
    out = {
        "events": n_total, "evaluated": evaluated, "hr": hits / max(evaluated, 1), "ndcg": ndcg / max(evaluated, 1),
        "cold_evaluated": cold_eval, "cold_hr": cold_hits / max(cold_eval, 1),
        "warm_hr": (hits - cold_hits) / max(evaluated - cold_eval, 1),
        "events_per_s": n_total / elapsed if elapsed else 0.0, "elapsed_s": elapsed,
    }
    if is_agent:
        arms = list(model.bandit.arms)
        series = []
        for b, counter in enumerate(shares):
            total = sum(counter.values())
            series.append({"until_event": min((b + 1) * bucket_of, n_total),
                           **{a: (counter[a] / total if total else 0.0) for a in arms}})
        out["arm_shares_over_time"] = series
        out["slots_served"] = {a: strat_slots[a] for a in arms}
        out["hits_by_strategy"] = {a: strat_hits[a] for a in arms}
        out["hit_rate_by_strategy_slot"] = {a: (strat_hits[a] / strat_slots[a] if strat_slots[a] else 0.0)
                                            for a in arms}
        stats = model.stats()
        out["bandit"] = {"arms": stats["arms"], "by_segment_slot0": {
            seg: {a: v[0] for a, v in per.items()} for seg, per in stats["by_segment"].items()}}
    return out


# -- reports ---------------------------------------------------------------------------


def plot_shares(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(ds, name, r) for ds, per in results.items() for name, r in per.items() if "arm_shares_over_time" in r]
    if not panels:
        return
    fig, axes = plt.subplots(len(panels), 1, figsize=(10, 3.2 * len(panels)), dpi=100, squeeze=False)
    for ax, (ds, name, r) in zip(axes[:, 0], panels):
        series = r["arm_shares_over_time"]
        x = [p["until_event"] for p in series]
        arms = [a for a in series[0] if a != "until_event"]
        ax.stackplot(x, *[[p[a] for p in series] for a in arms], labels=arms, alpha=0.85)
        ax.set_xlim(0, x[-1])
        ax.set_ylim(0, 1)
        ax.set_ylabel("share of top-10 slots")
        ax.set_title(f"{ds}: {name} (HR@10 {r['hr']:.4f}, cold HR@10 {r['cold_hr']:.4f})", fontsize=10)
        ax.legend(loc="upper right", fontsize=7, ncol=len(arms))
    axes[-1, 0].set_xlabel("events replayed")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def markdown(results: dict, settings: dict) -> str:
    lines = ["# Agent backtest", "",
             f"Prequential test-then-learn, k={settings['k']}, user's earlier items excluded; cold = the event's "
             f"item had fewer than {settings['cold']} prior interactions. Item metadata known up front "
             f"(content strategies only). Settings: {json.dumps(settings)}.", ""]
    for ds, per in results.items():
        lines += [f"## {ds}", "", "| model | evaluated | HR@10 | NDCG@10 | cold events | cold HR@10 | warm HR@10 | events/s |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|"]
        for name, r in per.items():
            lines.append(f"| {name} | {r['evaluated']:,} | {r['hr']:.4f} | {r['ndcg']:.4f} | {r['cold_evaluated']:,} | "
                         f"{r['cold_hr']:.4f} | {r['warm_hr']:.4f} | {r['events_per_s']:,.0f} |")
        for name, r in per.items():
            if "arm_shares_over_time" in r:
                series = r["arm_shares_over_time"]
                arms = [a for a in series[0] if a != "until_event"]
                pick = [series[0], series[len(series) // 4], series[len(series) // 2], series[-1]]
                lines += ["", f"{name}: share of top-10 slots per strategy (first bucket, 1/4, 1/2, last) and hits earned:", "",
                          "| strategy | " + " | ".join(f"until {p['until_event']:,}" for p in pick) + " | hits | hit rate per slot |",
                          "|---|" + "---:|" * (len(pick) + 2)]
                for a in arms:
                    lines.append(f"| {a} | " + " | ".join(f"{p[a]:.3f}" for p in pick)
                                 + f" | {r['hits_by_strategy'][a]:,} | {r['hit_rate_by_strategy_slot'][a]:.4f} |")
        lines.append("")
    lines += ["![arm shares](arm_shares.png)", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", default="ml100k,ml-latest-small,yoochoose")
    parser.add_argument("--models", default=DEFAULT_MODELS)
    parser.add_argument("--limit", type=int, default=None, help="first N events of each log")
    parser.add_argument("--cold", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="bench/agent_report")
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(1)
    from stream.logs import read_log

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    settings = {"k": 10, "cold": args.cold, "limit": args.limit, "seed": args.seed, "models": args.models}
    results: dict[str, dict] = {}
    report_path = out / "report.json"
    if report_path.exists():  # keep earlier datasets/models, so runs can be split
        results = json.loads(report_path.read_text()).get("results", {})
    for ds in [d.strip() for d in args.datasets.split(",") if d.strip()]:
        path, fmt = DATASETS[ds]
        events = read_log(path, fmt, limit=args.limit).events
        metadata = load_metadata(ds)
        print(f"{ds}: {len(events):,} events, metadata for {len(metadata):,} items", file=sys.stderr, flush=True)
        per = results.setdefault(ds, {})
        for name in [m.strip() for m in args.models.split(",") if m.strip()]:
            model = make(name, args.seed)
            t0 = time.perf_counter()
            give_metadata(model, metadata)
            meta_s = time.perf_counter() - t0
            r = replay(model, events, cold=args.cold)
            r["metadata_s"] = meta_s
            per[name] = r
            print(f"  {name:>18}: HR@10 {r['hr']:.4f}  NDCG@10 {r['ndcg']:.4f}  cold HR@10 {r['cold_hr']:.4f} "
                  f"({r['cold_evaluated']:,} cold)  {r['events_per_s']:,.0f} ev/s", file=sys.stderr, flush=True)
            report_path.write_text(json.dumps({"settings": settings, "results": results}, indent=1))
    (out / "report.md").write_text(markdown(results, settings))
    plot_shares(results, out / "arm_shares.png")
    print(f"wrote {out}/report.json, report.md, arm_shares.png", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
