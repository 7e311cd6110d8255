"""Backtest speed: prequential (test-then-learn) events/s per registered model on MovieLens 100K.

Each model runs in a fresh process (``online_models.make_model`` + ``online_models.evaluation
.prequential``, k=10, the user's earlier items excluded); the clock is the evaluator's own.
Baseline, same run: the evaluator around a model that learns nothing and recommends nothing
(the protocol's own cost), so each model's ratio says how much of the time is the model's.

Needs no Kafka or Redis: ``python -m bench.backtest --models trending,cooc --repeats 3``.
The log is ``$STREAMREC_ML100K``, else where ``streamrec datasets fetch movielens-100k`` puts it.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from bench.common import Spread, in_process


def _ml100k() -> Path:
    if "STREAMREC_ML100K" in os.environ:
        return Path(os.environ["STREAMREC_ML100K"])
    fetched = Path("data/movielens-100k/ml-100k.inter")  # where `streamrec datasets fetch` puts it
    for candidate in (fetched, Path("/tmp/recbole/recbole/dataset_example/ml-100k/ml-100k.inter")):
        if candidate.exists():
            return candidate
    return fetched


ML100K = _ml100k()


def _events(limit: int | None):
    from stream.logs import read_log

    return read_log(ML100K, "movielens", limit=limit).events


def _run_model(name: str, limit: int | None, out) -> None:
    import torch

    torch.set_num_threads(1)
    from online_models import Recommender, make_model
    from online_models.evaluation import prequential

    class Null(Recommender):
        name = "null"

        def learn_one(self, interaction) -> None:
            pass

        def recommend(self, user_id, k=10, exclude=None):
            return []

    events = _events(limit)
    model = Null() if name == "null" else make_model(name)
    result = prequential(model, events, k=10)
    out.put({"events": result.events, "seconds": result.elapsed_s, "events_per_s": result.events_per_s,
             "hr": result.hr, "ndcg": result.ndcg})


def run(svc=None, *, quick: bool, repeats: int | None = None, log=print, models: list[str] | None = None, **_) -> dict:
    from online_models import MODELS

    if not ML100K.exists():
        log(f"backtest: {ML100K} not found (set STREAMREC_ML100K); skipped")
        return {"skipped": f"{ML100K} not found"}
    repeats = repeats or (1 if quick else 3)
    limit = 10_000 if quick else None
    names = models or list(MODELS)
    log(f"backtest: ML100K ({limit or 'all 100,000'} events), {repeats} run(s) per model, models {', '.join(names)}")
    rates: dict[str, list[float]] = {}
    quality: dict[str, dict] = {}
    for name in ["null", *names]:
        for _ in range(repeats):
            try:
                r = in_process(_run_model, name, limit, timeout_s=600)
            except (RuntimeError, TimeoutError) as exc:
                log(f"  {name}: failed ({exc})")
                break
            rates.setdefault(name, []).append(r["events_per_s"])
            quality[name] = {"hr@10": r["hr"], "ndcg@10": r["ndcg"], "events": r["events"]}
        if name in rates:
            spread = Spread.of(rates[name])
            log(f"  {name:16} {spread.median:>10,.0f} events/s  (min {spread.min:,.0f}, max {spread.max:,.0f}; "
                f"HR@10 {quality[name]['hr@10']:.4f}, NDCG@10 {quality[name]['ndcg@10']:.4f})")
    baseline = Spread.of(rates["null"]).median
    return {
        "dataset": str(ML100K), "events": quality["null"]["events"],
        "models": {name: {**Spread.of(v).as_dict(), **quality[name], "ratio_vs_null": Spread.of(v).median / baseline}
                   for name, v in rates.items()},
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", help="comma-separated registry names (default: every model)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="the first 10,000 events only")
    args = parser.parse_args()
    run(quick=args.quick, repeats=args.repeats, models=args.models.split(",") if args.models else None)
