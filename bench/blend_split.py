"""Blend's defaults judged on train logs only (how they were chosen; the test file stays unseen).

- yoochoose: the train log split by time, the sessions that start in its last day judged
  by the next-item protocol (k=20) after the earlier ones were learned; and the train
  log's prequential run (k=10, seen items excluded);
- the first 30,000 events of MovieLens 100K and of ml-latest-small, prequential (k=10).

``python -m bench.blend_split [--models blend,sequence] [--params JSON] [--only yc-split,ml100k]``
prints HR and MRR per log for each model (``--params``: hyperparameters for every model,
e.g. ``'{"feedback_half_life": null}'`` for blend with fixed weights).
"""

from __future__ import annotations

import argparse
import json
import time

LOGS = ("yc-split", "yc-train", "ml100k", "mlsmall")
YOOCHOOSE = "../shared/datasets/yoochoose-clicks-sample/yoochoose-clicks-100k_train_full.txt"
ML100K = "data/movielens-100k/ml-100k.inter"
ML_SMALL = "../shared/datasets/ml-latest-small/ratings.csv"


def last_day_split(events):
    """The next-item split of a train log: sessions starting in its last 24 hours are the test."""
    from online_models.evaluation import next_item_split

    cut = max(e.ts for e in events) - 86_400
    first: dict[str, float] = {}
    for e in events:
        first.setdefault(e.user_id, e.ts)
    return next_item_split([e for e in events if first[e.user_id] < cut], [e for e in events if first[e.user_id] >= cut])


def judge(log: str, model):
    from online_models.evaluation import next_item, prequential
    from stream.logs import read_log

    if log == "yc-split":
        return next_item(model, last_day_split(read_log(YOOCHOOSE, "yoochoose").events), 20)
    if log == "yc-train":
        return prequential(model, read_log(YOOCHOOSE, "yoochoose").events, 10)
    path = ML100K if log == "ml100k" else ML_SMALL
    return prequential(model, read_log(path, "movielens", limit=30_000).events, 10)


def main() -> None:
    import torch

    from online_models import make_model

    torch.set_num_threads(1)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="blend,sequence")
    parser.add_argument("--params", default="{}", help="JSON hyperparameters for every model")
    parser.add_argument("--only", default=",".join(LOGS), help=f"logs among {', '.join(LOGS)}")
    args = parser.parse_args()
    params = json.loads(args.params)
    for log in args.only.split(","):
        for name in args.models.split(","):
            started = time.perf_counter()
            r = judge(log, make_model(name, **params))
            print(f"{log:9s} {name:10s} HR@{r.k} {r.hr:.4f}  MRR@{r.k} {r.mrr:.4f}  {r.evaluated:,} judged  "
                  f"{time.perf_counter() - started:.0f}s", flush=True)


if __name__ == "__main__":
    main()
