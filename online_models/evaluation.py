"""Prequential (test-then-learn) evaluation: the protocol every streamrec backtest follows.

For each interaction in time order: if its user was seen before, ask the model for the
user's top-``k`` *before* it learns the interaction (excluding the user's earlier items
when ``exclude_seen``); a hit is the interaction's item in that list. Then the model
learns the interaction. The model never sees the interaction it is judged on.

Models with a rating method (``predict_one(user_id, item_id)``) are also judged on the
ratings themselves, River-style progressive validation: the rating (``value``) of every
interaction is predicted before it is learnt, giving MAE and RMSE.

This module is pure: metric functions and the loop, no files, no printing. Progress is
reported through a callback so that the caller decides how (``streamrec.backtest``).
"""

from __future__ import annotations

import math
import time
from array import array
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from itertools import chain
from typing import Any

import numpy as np

from online_models._arrays import SeenItems
from online_models.base import Interaction, Recommender
from online_models.capabilities import UsesPopularity
from online_models.trending import Trending

# -- metric functions ------------------------------------------------------------------
# ``recommended`` is a ranked list of item ids, best first; ``relevant`` the items that
# count as right answers (one item in the prequential protocol).


def _top(recommended: Sequence[str], k: int) -> Sequence[str]:
    if k <= 0:
        raise ValueError("k must be positive")
    return recommended[:k]


def hit_at_k(recommended: Sequence[str], relevant: Collection[str], k: int) -> float:
    """1.0 when any relevant item is in the top ``k``, else 0.0.

    >>> hit_at_k(["a", "b", "c"], {"c"}, 3), hit_at_k(["a", "b", "c"], {"c"}, 2)
    (1.0, 0.0)
    """
    return 1.0 if any(item in relevant for item in _top(recommended, k)) else 0.0


def precision_at_k(recommended: Sequence[str], relevant: Collection[str], k: int) -> float:
    """Relevant items in the top ``k``, divided by ``k`` (a short list is not rewarded).

    >>> precision_at_k(["a", "b"], {"b"}, 10)
    0.1
    """
    return sum(item in relevant for item in _top(recommended, k)) / k


def recall_at_k(recommended: Sequence[str], relevant: Collection[str], k: int) -> float:
    """Share of the relevant items found in the top ``k`` (0 when nothing is relevant).

    >>> recall_at_k(["a", "b", "c"], {"a", "z"}, 3)
    0.5
    """
    if not relevant:
        return 0.0
    return sum(item in relevant for item in _top(recommended, k)) / len(relevant)


def f1_at_k(recommended: Sequence[str], relevant: Collection[str], k: int) -> float:
    """Harmonic mean of precision@k and recall@k.

    >>> round(f1_at_k(["a", "b"], {"a"}, 10), 6)  # 2 * 0.1 * 1 / 1.1
    0.181818
    """
    p, r = precision_at_k(recommended, relevant, k), recall_at_k(recommended, relevant, k)
    return 2 * p * r / (p + r) if p + r else 0.0


def ndcg_at_k(recommended: Sequence[str], relevant: Collection[str], k: int) -> float:
    """Binary-relevance NDCG@k: DCG over the ideal DCG; one target at rank r gives 1/log2(r+2).

    >>> ndcg_at_k(["a", "b", "c"], {"c"}, 3) == 1 / math.log2(4)
    True
    """
    dcg = sum(1.0 / math.log2(rank + 2) for rank, item in enumerate(_top(recommended, k)) if item in relevant)
    ideal = sum(1.0 / math.log2(rank + 2) for rank in range(min(len(relevant), k)))
    return dcg / ideal if ideal else 0.0


def reciprocal_rank(recommended: Sequence[str], relevant: Collection[str], k: int | None = None) -> float:
    """1 / (rank of the first relevant item), ranks from 1; 0 when none is in the top ``k``.

    >>> reciprocal_rank(["a", "b", "c"], {"b", "c"})
    0.5
    """
    for rank, item in enumerate(recommended if k is None else _top(recommended, k)):
        if item in relevant:
            return 1.0 / (rank + 1)
    return 0.0


def coverage(recommended_items: Iterable[str], catalogue: Collection[str]) -> float:
    """Share of the catalogue that was recommended at least once.

    >>> coverage(["a", "a", "b", "zz"], {"a", "b", "c", "d"})
    0.5
    """
    if not catalogue:
        return 0.0
    return len(set(recommended_items) & set(catalogue)) / len(catalogue)


def gini(values: Iterable[float]) -> float:
    """Gini index of non-negative amounts (exposure per item): 0 equal, (n-1)/n all on one.

    >>> gini([5, 5, 5, 5]), gini([0, 0, 0, 8]), round(gini([1, 2, 3, 4]), 4)
    (0.0, 0.75, 0.25)
    """
    x = np.sort(np.asarray(list(values) if not isinstance(values, np.ndarray) else values, dtype=np.float64))
    n = len(x)
    total = x.sum()
    if n == 0 or total <= 0:
        return 0.0
    if x[0] < 0:
        raise ValueError("gini needs non-negative values")
    index = np.arange(1, n + 1, dtype=np.float64)
    return float(((2 * index - n - 1) * x).sum() / (n * total))


def sliding_rate(hits: Sequence[int] | bytes, window: int) -> np.ndarray:
    """Mean of ``hits`` over a trailing window, one value per position (shorter at the start).

    >>> sliding_rate(bytes([1, 0, 1, 1]), 2).tolist()
    [1.0, 0.5, 0.5, 1.0]
    """
    h = np.frombuffer(bytes(hits), dtype=np.uint8).astype(np.float64) if isinstance(hits, (bytes, bytearray)) \
        else np.asarray(hits, dtype=np.float64)
    if len(h) == 0:
        return h
    window = max(1, int(window))
    csum = np.concatenate(([0.0], np.cumsum(h)))
    ends = np.arange(1, len(h) + 1)
    starts = np.maximum(0, ends - window)
    return (csum[ends] - csum[starts]) / (ends - starts)


# -- the prequential loop --------------------------------------------------------------


@dataclass
class PrequentialResult:
    model: str
    k: int
    events: int
    evaluated: int
    hr: float
    ndcg: float
    mrr: float
    events_per_s: float
    precision: float = 0.0
    recall: float = 0.0
    f1: float = 0.0
    coverage: float = 0.0
    gini: float = 0.0
    catalogue: int = 0
    elapsed_s: float = 0.0
    rated: int = 0
    mae: float | None = None
    rmse: float | None = None
    hits: bytearray = field(default_factory=bytearray, repr=False)
    """One byte per evaluated event, 1 on a hit: the raw series behind ``hr``."""
    hit_ts: array = field(default_factory=lambda: array("d"), repr=False)
    """The timestamp of each evaluated event, aligned with ``hits``."""

    def as_dict(self) -> dict:
        """The summary numbers (no per-event series), ready for JSON."""
        out = asdict(self)
        del out["hits"], out["hit_ts"]
        return out


_FLUSH_EXPOSURE = 2048


class _Judged:
    """What both protocols tally of the lists they judge: hits, NDCG and reciprocal ranks,
    and each judgement's hit and time (for HR over time)."""

    __slots__ = ("hits", "ndcg", "rr", "hit_seq", "ts_seq")

    def __init__(self) -> None:
        self.hits = 0
        self.ndcg = self.rr = 0.0
        self.hit_seq = bytearray()
        self.ts_seq = array("d")

    def judge(self, ids: list[str], item: str, ts: float) -> None:
        """One judged list ``ids`` (best first) against the event's ``item``."""
        if item in ids:
            rank = ids.index(item)
            self.hits += 1
            self.ndcg += 1.0 / math.log2(rank + 2)
            self.rr += 1.0 / (rank + 1)
            self.hit_seq.append(1)
        else:
            self.hit_seq.append(0)
        self.ts_seq.append(ts)

    def result(self, model: Any, k: int, events: int, elapsed: float, **measures: Any) -> PrequentialResult:
        """The result, with the catalogue and rating ``measures`` the protocol took itself."""
        evaluated = len(self.hit_seq)
        n = max(evaluated, 1)
        hr = self.hits / n
        return PrequentialResult(
            model=getattr(model, "name", type(model).__name__), k=k, events=events, evaluated=evaluated,
            hr=hr, ndcg=self.ndcg / n, mrr=self.rr / n, events_per_s=events / elapsed if elapsed else 0.0,
            precision=hr / k, recall=hr, f1=2 * hr / (k + 1),  # one target: P = HR/k, R = HR
            elapsed_s=elapsed, hits=self.hit_seq, hit_ts=self.ts_seq, **measures,
        )


def prequential(
    model: Recommender,
    interactions: Iterable[Interaction],
    k: int = 10,
    *,
    exclude_seen: bool = True,
    warmup: int = 0,
    stride: int = 1,
    ratings: bool = True,
    progress: Callable[[int], object] | None = None,
    progress_every: int = 4096,
) -> PrequentialResult:
    """Judge ``model`` on ``interactions`` (already in time order), test-then-learn.

    Parameters
    ----------
    warmup
        The first ``warmup`` interactions train the model without being evaluated.
    stride
        Evaluate every ``stride``-th eligible interaction (for very long logs).
    ratings
        Also predict each ``value`` before learning it when the model has ``predict_one``.
    progress
        Called with the number of interactions processed since its last call.

    Examples
    --------
    >>> from core.schema import Event
    >>> from online_models.trending import Trending
    >>> log = [Event(user_id=u, item_id=i, type="view", ts=t)
    ...        for t, (u, i) in enumerate([("a", "x"), ("b", "x"), ("a", "y"), ("b", "y")])]
    >>> r = prequential(Trending(half_life_s=None), log, k=1)
    >>> r.evaluated, r.hr
    (2, 0.5)
    """
    if k <= 0:
        raise ValueError("k must be positive")
    if stride < 1:
        raise ValueError("stride must be at least 1")
    predict = getattr(model, "predict_one", None) if ratings else None
    if not callable(predict):
        predict = None
    recommend, learn = model.recommend, model.learn_one
    # one popularity, owned here and learned before the model, for a model that ranks with one
    popularity = Trending() if isinstance(model, UsesPopularity) else None
    if popularity is not None and model.use_popularity(popularity):
        learn_model, learn_popularity = learn, popularity.learn_one

        def learn(event: Interaction) -> None:
            learn_popularity(event)
            learn_model(event)
    judged = _Judged()
    judge = judged.judge

    seen: dict[str, SeenItems] = {}  # append-only: models convert only new ids to rows
    catalogue: set[str] = set()
    add_item = catalogue.add
    exposure: Counter[str] = Counter()
    pending: list[list[str]] = []
    events = eligible = rated = 0
    abs_err = sq_err = 0.0
    every = max(1, int(progress_every))
    next_progress = every

    start = time.perf_counter()
    for event in interactions:
        user = event.user_id
        item = event.item_id
        user_items = seen.get(user)
        if events >= warmup:
            if user_items is not None:
                eligible += 1
                if stride == 1 or (eligible - 1) % stride == 0:
                    ranked = recommend(user, k, user_items if exclude_seen else None)
                    ids = [pair[0] for pair in ranked[:k]]
                    pending.append(ids)
                    judge(ids, item, event.ts)
                    if len(pending) >= _FLUSH_EXPOSURE:
                        exposure.update(chain.from_iterable(pending))
                        pending.clear()
            if predict is not None and event.value is not None:
                predicted = predict(user, item)
                if predicted is not None:
                    err = float(predicted) - event.value
                    abs_err += abs(err)
                    sq_err += err * err
                    rated += 1
        learn(event)
        if user_items is None:
            user_items = seen[user] = SeenItems()
        user_items.add(item)
        add_item(item)
        events += 1
        if progress is not None and events >= next_progress:
            progress(every)
            next_progress += every
    elapsed = time.perf_counter() - start
    if progress is not None and events > next_progress - every:
        progress(events - (next_progress - every))
    exposure.update(chain.from_iterable(pending))

    exposed = [exposure.get(i, 0) for i in catalogue]
    exposed.extend(c for i, c in exposure.items() if i not in catalogue)
    return judged.result(
        model, k, events, elapsed, coverage=coverage(exposure.keys(), catalogue), gini=gini(exposed),
        catalogue=len(catalogue), rated=rated,
        mae=abs_err / rated if rated else None, rmse=math.sqrt(sq_err / rated) if rated else None,
    )


# -- the next-item (session) protocol ---------------------------------------------------


@dataclass
class NextItemSplit:
    """A train log and the test clicks the next-item protocol judges, in time order."""

    train: list
    test: list
    dropped_unknown_items: int = 0
    """Test clicks left out because their item never occurs in train."""
    dropped_short_sessions: int = 0
    """Test sessions (users) left out because fewer than 2 clicks remained."""
    predictions: int = 0
    """How many clicks will be judged: each remaining test click but the first of its session."""


def next_item_split(train: Sequence[Interaction], test: Sequence[Interaction]) -> NextItemSplit:
    """Filter ``test`` as the session-based protocol does (session-rec's evaluation).

    Test clicks whose item never occurs in ``train`` are dropped, then test sessions
    (``user_id``) left with fewer than 2 clicks. What remains is stably sorted by ``ts``.

    >>> from core.schema import Event
    >>> ev = lambda u, i, t: Event(user_id=u, item_id=i, type="click", ts=t)
    >>> split = next_item_split([ev("s0", "a", 0), ev("s0", "b", 1)],
    ...                         [ev("s1", "a", 3), ev("s1", "z", 4), ev("s2", "b", 2), ev("s2", "a", 5)])
    >>> [(e.user_id, e.item_id) for e in split.test], split.predictions
    ([('s2', 'b'), ('s2', 'a')], 1)
    >>> split.dropped_unknown_items, split.dropped_short_sessions
    (1, 1)
    """
    known = {e.item_id for e in train}
    kept = [e for e in test if e.item_id in known]
    clicks = Counter(e.user_id for e in kept)
    long_enough = [e for e in kept if clicks[e.user_id] >= 2]
    sessions = {e.user_id for e in long_enough}
    return NextItemSplit(
        train=sorted(train, key=lambda e: e.ts), test=sorted(long_enough, key=lambda e: e.ts),
        dropped_unknown_items=len(test) - len(kept),
        dropped_short_sessions=sum(1 for user in clicks if user not in sessions),
        predictions=len(long_enough) - len(sessions),
    )


def next_item(
    model: Recommender,
    split: NextItemSplit,
    k: int = 20,
    *,
    exclude_seen: bool = False,
    learn_batch: int = 1000,
    progress: Callable[[int], object] | None = None,
) -> PrequentialResult:
    """Judge ``model`` on the next-item protocol: learn the train log, then walk the test
    clicks in time order and, before each click of a session after its first, rank ``k``
    items for the session from what it learned of the session's earlier clicks; the
    model learns each test click after it is judged (streaming).

    Repeats are allowed (``exclude_seen=False``: an item already clicked in the session
    may be recommended and may be the target); with ``exclude_seen`` the session's
    earlier items are excluded. The train log is learned in micro-batches of
    ``learn_batch`` (``learn_many``, equal to ``learn_one`` in order by the contract).

    Examples
    --------
    >>> from core.schema import Event
    >>> from online_models.trending import Trending
    >>> ev = lambda u, i, t: Event(user_id=u, item_id=i, type="click", ts=t)
    >>> split = next_item_split([ev("s0", "a", 0), ev("s0", "a", 1), ev("s0", "b", 2)],
    ...                         [ev("s1", "b", 3), ev("s1", "a", 4)])
    >>> r = next_item(Trending(half_life_s=None), split, k=1)
    >>> r.evaluated, r.hr, r.mrr
    (1, 1.0, 1.0)
    """
    if k <= 0:
        raise ValueError("k must be positive")
    start = time.perf_counter()
    train = split.train
    for begin in range(0, len(train), learn_batch):
        chunk = train[begin : begin + learn_batch]
        model.learn_many(chunk)
        if progress is not None:
            progress(len(chunk))
    recommend, learn = model.recommend, model.learn_one
    prefix: dict[str, SeenItems] = {}
    exposure: Counter[str] = Counter()
    judged = _Judged()
    for n, event in enumerate(split.test, 1):
        earlier = prefix.get(event.user_id)
        if earlier is not None:
            ids = [item for item, _ in recommend(event.user_id, k, earlier if exclude_seen else None)[:k]]
            exposure.update(ids)
            judged.judge(ids, event.item_id, event.ts)
        else:
            earlier = prefix[event.user_id] = SeenItems()
        learn(event)
        earlier.add(event.item_id)
        if progress is not None and n % 1024 == 0:
            progress(1024)
    elapsed = time.perf_counter() - start
    if progress is not None and len(split.test) % 1024:
        progress(len(split.test) % 1024)
    catalogue = {e.item_id for e in train} | {e.item_id for e in split.test}
    return judged.result(
        model, k, len(train) + len(split.test), elapsed, coverage=coverage(exposure.keys(), catalogue),
        gini=gini([exposure.get(i, 0) for i in catalogue]), catalogue=len(catalogue),
    )
