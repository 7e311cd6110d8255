"""Prequential (test-then-learn) evaluation: the protocol every streamrec backtest follows.

For each interaction in time order: if its user was seen before, ask the model for the
user's top-``k`` *before* it learns the interaction (excluding the user's earlier items
when ``exclude_seen``); a hit is the interaction's item in that list. Then the model
learns the interaction. The model never sees the interaction it is judged on.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass

from online_models.base import Interaction, Recommender


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

    def as_dict(self) -> dict:
        return asdict(self)


def prequential(
    model: Recommender,
    interactions: Iterable[Interaction],
    k: int = 10,
    *,
    exclude_seen: bool = True,
    warmup: int = 0,
    stride: int = 1,
) -> PrequentialResult:
    """Judge ``model`` on ``interactions`` (already in time order), test-then-learn.

    Parameters
    ----------
    warmup
        The first ``warmup`` interactions train the model without being evaluated.
    stride
        Evaluate every ``stride``-th eligible interaction (for very long logs).

    Examples
    --------
    >>> from stream.schema import Event
    >>> from online_models.trending import Trending
    >>> log = [Event(user_id=u, item_id=i, type="view", ts=t)
    ...        for t, (u, i) in enumerate([("a", "x"), ("b", "x"), ("a", "y"), ("b", "y")])]
    >>> r = prequential(Trending(half_life_s=None), log, k=1)
    >>> r.evaluated, r.hr
    (2, 0.5)
    """
    seen: dict[str, set[str]] = {}
    events = evaluated = hits = eligible = 0
    ndcg = rr = 0.0
    start = time.perf_counter()
    for event in interactions:
        user_items = seen.get(event.user_id)
        if user_items is not None and events >= warmup:
            eligible += 1
            if (eligible - 1) % stride == 0:
                evaluated += 1
                ranked = model.recommend(event.user_id, k, user_items if exclude_seen else None)
                for rank, (item, _) in enumerate(ranked[:k]):
                    if item == event.item_id:
                        hits += 1
                        ndcg += 1.0 / math.log2(rank + 2)
                        rr += 1.0 / (rank + 1)
                        break
        model.learn_one(event)
        if user_items is None:
            user_items = seen[event.user_id] = set()
        user_items.add(event.item_id)
        events += 1
    elapsed = time.perf_counter() - start
    n = max(evaluated, 1)
    return PrequentialResult(
        model=getattr(model, "name", type(model).__name__), k=k, events=events, evaluated=evaluated,
        hr=hits / n, ndcg=ndcg / n, mrr=rr / n, events_per_s=events / elapsed if elapsed else 0.0,
    )
