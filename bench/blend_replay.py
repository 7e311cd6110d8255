"""Blend's weightings judged on its parts' recorded lists (the train logs of ``bench.blend_split``).

Each part of a blend learns every event whatever the blend's weights, so the parts' lists at
each judged event are the same under any weighting or feedback setting. ``record`` runs the
default blend once per log and keeps, at each judged event, every part's list (its
``n_candidates`` items with their scores) and the event's item. ``report`` fuses those lists
as ``Blend`` does (the same scaling, sums in part order and tie-breaks) under weights that may
change from event to event (feedback) and judges them: for the recorded settings the figures
are the real model's (tests/test_blend_replay.py), and any other weighting takes seconds
instead of a real run. Choices are made on train logs only (the test file unseen while choosing).

``python -m bench.blend_replay record [--only yc-train,ml100k]`` (about 10 minutes for the four
logs, written under ``bench/results/blend_lists/``), then ``python -m bench.blend_replay report``.
``--only yc-full,yc-next,ml100k-full,mlsmall-full`` records and reports the README's backtests
(the judged data): only to confirm, after the fact, what the train logs chose.
``python -m bench.blend_replay run --params JSON [--models blend,sequence] --only ...`` runs the
real blend with those hyperparameters (e.g. ``'{"candidates_from": null, "weight_choices": {}}'``
for the default before bounding) on the logs, as the README's backtests run it.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bench.blend_split import LOGS, ML100K, ML_SMALL, judge
from online_models.blend import DEFAULT_CALIBRATED, DEFAULT_WEIGHTS
from online_models.fusion import scale_into

RESULTS = Path("bench/results/blend_lists")


@dataclass
class PartLists:
    """Each part's list at every judged event, in the order the events were judged."""

    k: int
    names: list[str]
    target: np.ndarray  # (n,) the judged event's item, as an int id
    items: dict[str, np.ndarray]  # (n, width) int ids, best first, -1 after the list
    scores: dict[str, np.ndarray]  # (n, width), -inf after the list
    context: dict[str, np.ndarray]  # (n,) per-event facts for reports: the user's events before it

    def __len__(self) -> int:
        return len(self.target)


def record(model, events_judged: Callable[[object], object], width: int = 100) -> tuple[PartLists, object]:
    """Run ``events_judged(model)`` (a protocol over ``model``, a ``Blend``) with each part's
    ``recommend`` recorded, and the lists it gave at each judged event."""
    ids: dict[str, int] = {}
    lists: dict[str, list] = {name: [] for name in model._models}
    users: list[str] = []
    for name, part in model._models.items():
        def recording(user_id, k=10, exclude=None, _rank=part.recommend, _name=name):
            ranking = _rank(user_id, k, exclude)
            lists[_name].append(ranking)
            if _name == next(iter(lists)):
                users.append(user_id)
            return ranking
        part.recommend = recording
    learn = model.learn_one
    targets: list[int] = []
    before: dict[str, int] = {}
    history: list[int] = []

    def learn_one(event) -> None:  # the protocols rank a user, then learn the user's event
        if len(targets) < len(users):
            assert users[len(targets)] == event.user_id, "a judged event must follow its ranking"
            targets.append(ids.setdefault(event.item_id, len(ids)))
            history.append(before.get(event.user_id, 0))
        before[event.user_id] = before.get(event.user_id, 0) + 1
        learn(event)

    model.learn_one = learn_one
    result = events_judged(model)
    n = len(targets)
    items, scores = {}, {}
    for name, rankings in lists.items():
        items[name] = np.full((n, width), -1, dtype=np.int64)
        scores[name] = np.full((n, width), -np.inf)
        for j, ranking in enumerate(rankings):
            ranking = ranking[:width]
            if ranking:
                items[name][j, : len(ranking)] = [ids.setdefault(item, len(ids)) for item, _ in ranking]
                scores[name][j, : len(ranking)] = [score for _, score in ranking]
    k = getattr(result, "k", 10)
    return PartLists(k, list(lists), np.array(targets, dtype=np.int64), items, scores,
                     {"history": np.array(history, dtype=np.int64)}), result


class Replay:
    """Fusion of recorded part lists under per-event weights, and the judged rank of each
    event's item (``ranks``); what does not depend on the weights is worked out once."""

    def __init__(self, lists: PartLists, calibrated: Sequence[str] = DEFAULT_CALIBRATED,
                 calibrated_power: float = 2.0) -> None:
        self.lists = lists
        self.calibrated = frozenset(calibrated)
        self.calibrated_power = calibrated_power
        n = len(lists)
        names = lists.names
        width = lists.items[names[0]].shape[1]
        cells = np.concatenate([lists.items[name] for name in names], axis=1)  # part after part
        self.listed = cells >= 0
        row = np.broadcast_to(np.arange(n)[:, None], cells.shape)[self.listed]
        column = np.broadcast_to(np.arange(cells.shape[1]), cells.shape)[self.listed]
        span = int(cells.max(initial=0)) + 1
        keys, self.cell_item = np.unique(row * span + cells[self.listed], return_inverse=True)
        self.item_row = keys // span
        # tie-breaks (Blend._fuse): the better position in any list, then the first listed
        self.best_pos = np.full(len(keys), width, dtype=np.int64)
        np.minimum.at(self.best_pos, self.cell_item, column % width)
        self.first_col = np.full(len(keys), cells.shape[1], dtype=np.int64)
        np.minimum.at(self.first_col, self.cell_item, column)
        at = np.searchsorted(keys, np.arange(n) * span + lists.target)
        found = (at < len(keys)) & (keys[np.minimum(at, len(keys) - 1)] == np.arange(n) * span + lists.target)
        self.target_item = np.where(found, at, -1)

    def values(self, name: str, weight: np.ndarray) -> np.ndarray:
        """What each listed item of a part adds to its blend score (the fusion's ``scale_into``,
        with this event's weight), 0 elsewhere."""
        items, scores = self.lists.items[name], self.lists.scores[name]
        out = np.empty(items.shape)
        power = self.calibrated_power if name in self.calibrated else None
        scale_into(out, items, scores, weight, power, None)
        return np.where(items >= 0, out, 0.0)

    def ranks(self, weights: Mapping[str, np.ndarray | float], candidates_of: str | None = None,
              candidate_depth: int = 100) -> np.ndarray:
        """Each judged event's item's rank in the fused list (0: first; -1: in no list).

        ``candidates_of``: a fusion ``Blend`` does not have (replayed only): only the items
        in that part's first ``candidate_depth`` are ranked; the other parts only reorder them."""
        n = len(self.lists)
        parts = [self.values(name, np.broadcast_to(np.asarray(weights[name], dtype=np.float64), (n,)))
                 for name in self.lists.names]
        fused = np.bincount(self.cell_item, weights=np.concatenate(parts, axis=1)[self.listed],
                            minlength=len(self.item_row))  # summed in part order, as Blend does
        target = np.maximum(self.target_item, 0)
        if candidates_of is not None:
            names = self.lists.names
            width = self.lists.items[candidates_of].shape[1]
            first = sum(self.lists.items[name].shape[1] for name in names[: names.index(candidates_of)])
            column = np.broadcast_to(np.arange(self.listed.shape[1]), self.listed.shape)[self.listed]
            allowed = np.zeros(len(self.item_row), dtype=bool)
            allowed[self.cell_item[(column >= first) & (column < first + min(candidate_depth, width))]] = True
            fused = np.where(allowed, fused, -np.inf)
            ranked = (self.target_item >= 0) & allowed[target]
        else:
            ranked = self.target_item >= 0
        mine = fused[target][self.item_row]
        tie_key = self.best_pos * (self.first_col.max(initial=0) + 1) + self.first_col
        ahead = (fused > mine) | ((fused == mine) & (tie_key < tie_key[target][self.item_row]))
        rank = np.bincount(self.item_row[ahead], minlength=n)
        return np.where(ranked, rank, -1)


def hr_mrr(ranks: np.ndarray, k: int) -> tuple[float, float]:
    hit = (ranks >= 0) & (ranks < k)
    n = max(len(ranks), 1)
    return float(hit.sum() / n), float((1.0 / (ranks[hit] + 1)).sum() / n)


def feedback_weights(lists: PartLists, base: Mapping[str, float] = DEFAULT_WEIGHTS, half_life: float = 10_000.0,
                     prior: float = 1.0, power: float = 3.0, depth: int = 20, credit: str = "rank",
                     context: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Each part's weight at each judged event under ``Blend``'s feedback: credits from the
    events judged before it, each crediting the reciprocal rank of its item in each part's
    list (``Blend._take_feedback``, ``feedback_factors``).

    Two variants ``Blend`` does not have (replayed only): ``credit="advantage"`` credits a part
    only with how much better it ranked the item than the best other part did (its
    reciprocal rank less theirs, 0 when it did not rank it best), so a part whose hits the
    others hold too earns nothing; ``context`` (an int per judged event) keeps one set of
    credits per context (e.g. a bucket of the user's history length), each event read and
    credited within its own."""
    names = lists.names
    keep = 0.5 ** (1.0 / half_life)
    reciprocal = []
    for name in names:
        hit = lists.items[name][:, :depth] == lists.target[:, None]
        position = np.where(hit.any(axis=1), hit.argmax(axis=1), -1)
        reciprocal.append(np.where(position >= 0, 1.0 / (np.maximum(position, 0) + 1), 0.0))
    earned = np.array(reciprocal).reshape(len(names), len(lists))
    if credit == "advantage" and len(names) > 1:
        best_other = np.array([np.delete(earned, p, axis=0).max(axis=0) for p in range(len(names))])
        earned = np.maximum(earned - best_other, 0.0)
    elif credit != "rank":
        raise ValueError(f"credit must be 'rank' or 'advantage', not {credit!r}")
    earned_by_event = earned.T.tolist()
    contexts = [0] * len(lists) if context is None else np.asarray(context).tolist()
    credits_in: dict[int, list[float]] = {}
    base_weights = [float(base.get(name, 1.0)) for name in names]
    out = np.empty((len(names), len(lists)))
    for j, (c, gains) in enumerate(zip(contexts, earned_by_event)):
        credit_now = credits_in.setdefault(c, [0.0] * len(names))
        credits = [x + prior for x in credit_now]
        average = sum(credits) / len(credits)
        for p, weight in enumerate(base_weights):
            out[p, j] = weight * (credits[p] / average) ** power if weight else weight
            credit_now[p] = keep * credit_now[p] + gains[p]
    return {name: out[p] for p, name in enumerate(names)}


def chosen_in_hindsight(ranks: Sequence[np.ndarray], half_life: float, depth: int = 20, default: int = 0) -> np.ndarray:
    """A feedback ``Blend`` does not have (replayed only): at each event, the rank under the
    weighting whose fused lists would have ranked the items of the events before it best
    (reciprocal ranks within ``depth``, decayed with ``half_life`` events; ``default`` first)."""
    keep = 0.5 ** (1.0 / half_life)
    credit = [0.0] * len(ranks)
    columns = [r.tolist() for r in ranks]
    chosen = np.empty(len(ranks[0]), dtype=np.int64)
    for j in range(len(chosen)):
        best = max(range(len(ranks)), key=lambda c: (credit[c], c == default))
        chosen[j] = columns[best][j]
        for c, column in enumerate(columns):
            rank = column[j]
            credit[c] = keep * credit[c] + (1.0 / (rank + 1) if 0 <= rank < depth else 0.0)
    return chosen


def part_alone(lists: PartLists, name: str) -> tuple[float, float]:
    """A part's own list judged as it is (its own order, ties as it broke them)."""
    hit = lists.items[name][:, : lists.k] == lists.target[:, None]
    rank = np.where(hit.any(axis=1), hit.argmax(axis=1), -1)
    return hr_mrr(rank, lists.k)


# The README's backtests themselves (the judged data, test file included): recorded only to
# confirm a weighting chosen on the train logs, never to choose one.
YOOCHOOSE_DIR = "../shared/datasets/yoochoose-clicks-sample"
JUDGED = ("yc-full", "yc-next", "ml100k-full", "mlsmall-full")


def judge_readme(log: str, model):
    """``log`` of ``JUDGED`` run as the README's backtest runs it (``streamrec backtest``)."""
    from online_models.evaluation import next_item, next_item_split, prequential
    from stream.logs import read_log

    if log == "yc-full":  # streamrec backtest ../shared/datasets/yoochoose-clicks-sample -f yoochoose
        return prequential(model, read_log(YOOCHOOSE_DIR, "yoochoose").events, 10)
    if log.endswith("-full"):  # streamrec backtest PATH -f movielens, whole logs
        return prequential(model, read_log(ML100K if log == "ml100k-full" else ML_SMALL, "movielens").events, 10)
    prefix = f"{YOOCHOOSE_DIR}/yoochoose-clicks-100k_"  # ... --protocol next-item --k 20
    split = next_item_split(read_log(f"{prefix}train_full.txt", "yoochoose").events,
                            read_log(f"{prefix}test.txt", "yoochoose").events)
    return next_item(model, split, 20)


def _path(log: str) -> Path:
    return RESULTS / f"{log}.npz"


def save(lists: PartLists, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, k=lists.k, names=np.array(lists.names), target=lists.target,
                        **{f"items/{n}": lists.items[n] for n in lists.names},
                        **{f"scores/{n}": lists.scores[n] for n in lists.names},
                        **{f"context/{c}": v for c, v in lists.context.items()})


def load(path: Path) -> PartLists:
    d = np.load(path)
    names = [str(n) for n in d["names"]]
    return PartLists(int(d["k"]), names, d["target"], {n: d[f"items/{n}"] for n in names},
                     {n: d[f"scores/{n}"] for n in names},
                     {key.split("/", 1)[1]: d[key] for key in d.files if key.startswith("context/")})


def report(log: str, lists: PartLists) -> None:
    """The figures behind the README's blend paragraph, for one log."""
    replay = Replay(lists)
    k = lists.k
    line = lambda label, hm: print(f"{log:9s} {label:62s} HR@{k} {hm[0]:.4f}  MRR@{k} {hm[1]:.4f}", flush=True)
    for name in lists.names:
        line(f"{name} alone (its list in the blend, as ranked)", part_alone(lists, name))
    base = dict(DEFAULT_WEIGHTS)
    line("blend, fixed weights", hr_mrr(replay.ranks(base), k))
    line("blend, feedback (half-life 10k, power 3; every item ranked)", hr_mrr(replay.ranks(feedback_weights(lists)), k))
    for power in (5.0, 8.0):
        line(f"blend, feedback power {power:g}", hr_mrr(replay.ranks(feedback_weights(lists, power=power)), k))
    for half_life in (1000.0, 3000.0):
        line(f"blend, feedback half-life {half_life:g}",
             hr_mrr(replay.ranks(feedback_weights(lists, half_life=half_life)), k))
    times = (0.25, 0.5, 0.71, 1.0, 1.41, 2.0, 2.83, 4.0, 5.66, 8.0, 16.0, 32.0)
    by_times = [replay.ranks({**base, "sequence": base["sequence"] * t}) for t in times]
    for t, ranks in zip(times, by_times):
        if t in (0.25, 0.5, 2.0, 4.0, 8.0, 16.0, 32.0):
            line(f"blend, fixed weights, sequence's x{t:g}", hr_mrr(ranks, k))
    line("blend, sequence's factor chosen in hindsight (half-life 10k)",
         hr_mrr(chosen_in_hindsight(by_times, 10_000.0, default=times.index(1.0)), k))
    # the most any weighting by context could gain: the best fixed weighting per bucket of
    # users with as many events before, chosen on these same events (in sample)
    grid = [{**base, "sequence": base["sequence"] * s, "embeddings": base["embeddings"] * e}
            for s in (0.25, 0.5, 1, 2, 4, 8, 16, 32) for e in (0.25, 0.5, 1, 2)]
    hits = np.array([(r >= 0) & (r < k) for r in (replay.ranks(w) for w in grid)])
    bucket = np.digitize(lists.context["history"], [1, 2, 3, 4, 6, 11, 21, 51])
    best_per = sum(hits[:, bucket == b].sum(axis=1).max() for b in np.unique(bucket)) / len(lists)
    print(f"{log:9s} {'ceiling: best of 32 fixed weightings per history bucket (in sample)':62s} HR@{k} {best_per:.4f}",
          flush=True)
    # feedback that Blend does not have: per context, crediting advantages, candidates bounded
    history = np.digitize(lists.context["history"], [2, 4, 11])  # 1, 2-3, 4-10, 11+ events before
    for power in (3.0, 5.0):
        line(f"blend, feedback per history bucket (1, 2-3, 4-10, 11+), power {power:g}",
             hr_mrr(replay.ranks(feedback_weights(lists, power=power, context=history)), k))
    for power in (1.0, 3.0):
        line(f"blend, feedback crediting advantages, power {power:g}",
             hr_mrr(replay.ranks(feedback_weights(lists, power=power, credit="advantage")), k))
    feedback = feedback_weights(lists)
    line("blend, feedback, only sequence's first 100 ranked",
         hr_mrr(replay.ranks(feedback, candidates_of="sequence"), k))
    times = (1.0, 4.0, 16.0)
    bounded = [replay.ranks({**feedback, "sequence": feedback["sequence"] * t}, candidates_of="sequence")
               for t in times]
    line("  and sequence's feedback weight x1, 4, 16 chosen (the default)",
         hr_mrr(chosen_in_hindsight(bounded, 10_000.0, default=0), k))


def main() -> None:
    import torch

    from online_models import make_model

    torch.set_num_threads(1)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=("record", "report", "run"),
                        help="run: the real blend with --params on the logs (no lists kept)")
    parser.add_argument("--params", default="{}", help="JSON hyperparameters of the blend (run)")
    parser.add_argument("--models", default="blend", help="models to run (run)")
    parser.add_argument("--only", default=",".join(LOGS),
                        help=f"logs among {', '.join(LOGS)} (train only), or {', '.join(JUDGED)} (the README's "
                             "yoochoose backtests: to confirm a choice made on the train logs)")
    args = parser.parse_args()
    for log in args.only.split(","):
        if log not in LOGS + JUDGED:
            parser.error(f"unknown log {log!r}")
        run = judge_readme if log in JUDGED else judge
        if args.command == "run":
            for name in args.models.split(","):
                started = time.perf_counter()
                result = run(log, make_model(name, **(json.loads(args.params) if name == "blend" else {})))
                print(f"{log:12s} {name:9s} {args.params if name == 'blend' else ''} HR@{result.k} {result.hr:.4f}  "
                      f"MRR@{result.k} {result.mrr:.4f}  NDCG@{result.k} {result.ndcg:.4f}  {result.evaluated:,} judged  "
                      f"{time.perf_counter() - started:.0f}s", flush=True)
        elif args.command == "record":
            started = time.perf_counter()
            lists, result = record(make_model("blend"), lambda model, _log=log, _run=run: _run(_log, model))
            save(lists, _path(log))
            print(f"{log:9s} blend (the default) HR@{result.k} {result.hr:.4f}  MRR@{result.k} {result.mrr:.4f}  "
                  f"{len(lists):,} judged  {time.perf_counter() - started:.0f}s -> {_path(log)}", flush=True)
        else:
            report(log, load(_path(log)))


if __name__ == "__main__":
    main()
