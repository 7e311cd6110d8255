"""Blend: several online models, their top candidates fused with tuned weights."""

from __future__ import annotations

import inspect
import weakref
from collections.abc import Collection, Iterable, Mapping, Sequence
from itertools import chain, islice
from typing import Any

import numpy as np

from online_models import tables
from online_models._arrays import IdIndex, RankedRows, per_row
from online_models.base import Interaction, Ranking, Recommender
from online_models.capabilities import (
    Explains,
    ExplainsRows,
    LearnsItems,
    RanksRows,
    SimilarItems,
    UsesPopularity,
    declare_from_parts,
    largest_sizes,
    undeclared,
)
from online_models.fusion import CandidateFusion, RowMap, fuse_top_k
from online_models.parts import make_part

DEFAULT_MODELS: dict[str, dict[str, Any]] = {"cooc": {}, "embeddings": {}, "sequence": {}}
DEFAULT_WEIGHTS: dict[str, float] = {"cooc": 1.0, "embeddings": 0.5, "sequence": 1000.0}
DEFAULT_CALIBRATED: tuple[str, ...] = ("sequence",)
DEFAULT_WEIGHT_CHOICES: dict[str, tuple[float, ...]] = {"sequence": (1.0, 4.0, 16.0)}

# Each blend's shared item rows for fusing its parts' lists: derived from the parts'
# indexes, so kept beside the model rather than in its (checkpointed) state.
_ROW_MAPS: weakref.WeakKeyDictionary[Blend, RowMap] = weakref.WeakKeyDictionary()
# Each blend's last fused batch (users, rows, the part each item owes most to, the parts'
# names), for explain_rows: derived, kept beside the model like the row maps.
_LAST_FUSED: weakref.WeakKeyDictionary[Blend, tuple] = weakref.WeakKeyDictionary()
# Each blend's part that answers similar_items (its parts never change).
_SIMILAR_PART: weakref.WeakKeyDictionary[Blend, Recommender] = weakref.WeakKeyDictionary()


class Blend(Recommender):
    """A weighted fusion of the candidates of several registered models.

    Every component learns every event. To rank, each component gives its top
    ``n_candidates`` (honouring ``exclude``); each list's scores are min-max scaled to
    [0, 1] (the list's last item scores 0, like the items outside it), and an item's blend
    score is the weighted sum over components (calibrated components are not scaled: see
    ``calibrated``). The default weights of cooc and embeddings were tuned on the MovieLens
    100K prequential backtest (see the project's model report). By default the weights
    then follow feedback (``feedback_half_life``): each part's weight is multiplied by how
    well its recent lists held the items users went on to pick, against the other parts;
    only ``sequence``'s candidates are ranked (``candidates_from``), and its weight is
    times 1, 4 or 16, whichever fused lists held the users' next items best
    (``weight_choices``).

    Parameters
    ----------
    models
        Registry name to hyperparameters of each component.
    weights
        Registry name to weight; a missing name weighs 1.
    n_candidates
        Candidates each component contributes.
    rank_offset
        ``None`` fuses min-max scaled scores; a number ``c`` fuses reciprocal ranks instead,
        ``(c + 1) / (c + 1 + rank)`` (rank 0 scores 1).
    calibrated
        Components whose scores are probabilities (``sequence``'s chance that an item comes
        next): fused as ``weight * score ** calibrated_power``, not scaled per list. Where
        such a component is sure (a session that repeats or follows a strong transition:
        top chances near 0.2 on the yoochoose sample), it leads; where its chances are
        spread thin (near 0.02 on MovieLens), the scaled lists do. ``None``:
        ``DEFAULT_CALIBRATED``.
    calibrated_power
        The power that sharpens calibrated scores (2 separates those cases best; the
        weight 1,000 and the power were tuned on a split of the yoochoose train log, the
        last day's sessions judged, and the first 30,000 MovieLens 100K events).
    feedback_half_life
        Learn the parts' weights from feedback (``None``: the weights as given). Each
        event of a user ranked recently credits every part with the reciprocal rank of
        the event's item in that part's last list for the user (0 outside its first
        ``feedback_depth``); a part's mean credit, decayed so that the credit of
        ``feedback_half_life`` events ago weighs half, multiplies its weight by
        ``(its mean credit / the parts' mean) ** feedback_power``. Session clicks come to
        favour ``sequence``, MovieLens 100K ratings ``cooc``. Each worker learns these
        factors from the users it ranks (they are not item state, so not in ``item_delta``).
        The defaults (half-life 10,000, prior 1, power 3, depth 20) were chosen on the
        yoochoose train log split by time (its last day's sessions judged by the
        next-item protocol), its prequential backtest, and the first 30,000 events of
        both MovieLens logs.
    feedback_prior
        Credit every part starts with, never decayed: the weights stay near ``weights``
        until the parts' credits outweigh it.
    feedback_power
        How strongly the parts' credit reshapes their weights (0: not at all).
    feedback_depth
        How deep in each part's list an event's item earns credit.
    feedback_users
        The last lists are kept for this many recently ranked users at most (the oldest
        ranked go first), which bounds the memory feedback takes.
    candidates_from
        A part whose list is each user's candidates (``None``: every part's items): only
        the items in its first ``n_candidates`` are ranked, the other parts' scores only
        reorder them (``fusion.CandidateFusion``). A name that is not a part of the blend
        (or weighs 0) bounds nothing. ``sequence`` by default, with ``weight_choices``:
        chosen by replaying the parts' lists on the train logs (``bench.blend_replay``),
        then confirmed by the README's backtests.
    weight_choices
        ``{part: factors}`` (one part; ``None``: ``DEFAULT_WEIGHT_CHOICES``, ``{}``: none):
        that part's weight times one of ``factors``, chosen by feedback: the factor whose
        fused lists would have ranked the users' next items highest (each credited event
        adds the item's reciprocal rank in the user's last fused list under each factor,
        0 outside its first ``feedback_depth``, decayed with ``feedback_half_life``); the
        first factor on a tie, before any credit, and without ``feedback_half_life``. Each
        user's first ``feedback_depth`` items under every factor are kept with the parts'
        lists.

    Examples
    --------
    >>> from core.schema import Event
    >>> model = Blend(models={"cooc": {}, "trending": {"half_life_s": None}}, weights={"trending": 0.5})
    >>> for user, items in {"a": "xy", "b": "xy", "c": "xz"}.items():
    ...     for item in items:
    ...         model.learn_one(Event(user_id=user, item_id=item, type="view", ts=0))
    >>> [item for item, _ in model.recommend("d", k=2)]
    ['x', 'y']
    """

    name = "blend"

    def __init__(
        self,
        models: Mapping[str, Mapping[str, Any]] | None = None,
        weights: Mapping[str, float] | None = None,
        n_candidates: int = 100,
        rank_offset: float | None = None,
        calibrated: Collection[str] | None = None,
        calibrated_power: float = 2.0,
        feedback_half_life: float | None = 10_000.0,
        feedback_prior: float = 1.0,
        feedback_power: float = 3.0,
        feedback_depth: int = 20,
        feedback_users: int = 10_000,
        candidates_from: str | None = "sequence",
        weight_choices: Mapping[str, Sequence[float]] | None = None,
    ):
        self.models = models
        self.weights = weights
        self.n_candidates = n_candidates
        self.rank_offset = rank_offset
        self.calibrated = calibrated
        self.calibrated_power = calibrated_power
        self.feedback_half_life = feedback_half_life
        self.feedback_prior = feedback_prior
        self.feedback_power = feedback_power
        self.feedback_depth = feedback_depth
        self.feedback_users = feedback_users
        self.candidates_from = candidates_from
        self.weight_choices = weight_choices
        if weight_choices is not None and (len(weight_choices) > 1 or any(
                not len(factors) or min(factors) <= 0 for factors in weight_choices.values())):
            raise ValueError("weight_choices: positive factors for one part, e.g. {'sequence': [1, 4, 16]}")
        self._choices = _frozen_choices(weight_choices)  # a copy: the credits are sized to it
        if feedback_prior <= 0:
            raise ValueError("feedback_prior must be positive: a part with no credit would never be ranked again")
        self._calibrated = frozenset(DEFAULT_CALIBRATED if calibrated is None else calibrated)
        specs = DEFAULT_MODELS if models is None else models
        self._models = {name: make_part(name, params) for name, params in specs.items()}
        # feedback (feedback_half_life): each part's decayed credit
        # (then each factor's of weight_choices), and each recently ranked user's part lists
        # (then its fused lists under each factor; item ids, best first)
        self._credit = [0.0] * (len(self._models) + len(self._factors()))
        self._shown: dict[str, tuple[tuple[str, ...], ...]] = {}
        declare_from_parts(self, self._models.values())

    def __getstate__(self) -> dict[str, Any]:
        state = undeclared(self.__dict__)
        state.pop("_last_lists", None)  # the last ranking, kept for explanations: not learned state
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        state = {"_credit": [0.0] * len(state["_models"]), "_shown": {}, **state}  # a pickle from before feedback
        self.__dict__.update(undeclared(state))
        for name, param in inspect.signature(Blend).parameters.items():  # hyperparameters added since
            self.__dict__.setdefault(name, param.default)
        self.__dict__.setdefault("_choices", _frozen_choices(self.weight_choices))
        self._credit = self._credit + [0.0] * (len(self._models) + len(self._factors()) - len(self._credit))
        declare_from_parts(self, self._models.values())

    def _base_weight(self, name: str) -> float:
        weights = DEFAULT_WEIGHTS if self.weights is None else self.weights
        return float(weights.get(name, 1.0))

    def _weight(self, name: str, chosen: bool = True) -> float:
        """The part's weight, times what feedback learned of it (and, ``chosen``, times the
        factor of ``weight_choices`` chosen now)."""
        weight = self._base_weight(name)
        if self.feedback_half_life is None or not weight:
            return weight
        weight = weight * self.feedback_factors().get(name, 1.0)
        if chosen and name == self._choosing():
            weight = weight * self._factors()[self.chosen_factor()]
        return weight

    def _factors(self) -> tuple[float, ...]:
        """The factors of ``weight_choices`` (none without it)."""
        return next(iter(self._choices.values()), ())

    def _choosing(self) -> str | None:
        """The part whose weight's factor feedback chooses (``None``: no choice to make)."""
        if not self._choices or self.feedback_half_life is None:
            return None
        name = next(iter(self._choices))
        return name if name in self._models and self._base_weight(name) else None

    def chosen_factor(self) -> int:
        """Which of ``weight_choices``' factors is chosen now: the best credited, the first
        on a tie (0 without ``weight_choices`` or feedback).

        >>> model = Blend(models={"cooc": {}, "sequence": {}}, weight_choices={"sequence": [1, 4, 16]})
        >>> model.chosen_factor(), model._weight("sequence")
        (0, 1000.0)
        >>> model._credit[2:] = [0.5, 0.75, 0.75]  # x4 and x16 ranked the next items better: the first
        >>> model.chosen_factor(), model._weight("sequence")
        (1, 4000.0)
        """
        credits = self._credit[len(self._models):]
        if not credits or self._choosing() is None:
            return 0
        return max(range(len(credits)), key=credits.__getitem__)  # max keeps the first on a tie

    def feedback_factors(self) -> dict[str, float]:
        """What feedback multiplies each part's weight by (all 1 without ``feedback_half_life``).

        >>> model = Blend(models={"cooc": {}, "trending": {}}, feedback_half_life=100, feedback_prior=0.1,
        ...               feedback_power=1)
        >>> model._credit = [0.7, 0.1]  # cooc listed the items higher
        >>> {name: round(f, 3) for name, f in model.feedback_factors().items()}
        {'cooc': 1.6, 'trending': 0.4}
        """
        names = list(self._models)
        if self.feedback_half_life is None or not names:
            return dict.fromkeys(names, 1.0)
        # each part's mean credit over the same events: the common denominator cancels out
        credits = [credit + self.feedback_prior for credit in self._credit[: len(names)]]
        average = sum(credits) / len(credits)
        return {name: (credit / average) ** self.feedback_power for name, credit in zip(names, credits)}

    def _take_feedback(self, interactions: Sequence[Interaction]) -> None:
        """Credit each part for where each event's item stood in its last list for the user
        (and each factor of ``weight_choices`` for where it stood in the fused list under it)."""
        shown = self._shown
        if not shown or self.feedback_half_life is None:
            return
        keep = 0.5 ** (1.0 / self.feedback_half_life)
        credit = self._credit
        for interaction in interactions:
            lists = shown.get(interaction.user_id)
            if lists is None:
                continue
            item = interaction.item_id
            if type(lists) is _Kept:  # a batch's lists, on rows: the item's row looked for instead
                lists, item = lists.rows_and(item)
            for p, items in enumerate(lists):
                credit[p] = keep * credit[p] + (1.0 / (items.index(item) + 1) if item in items else 0.0)

    def _remember_shown(self, user_ids: Sequence[str], lists: Sequence[Sequence[tuple[str, ...]]] | _KeptBatch
                        ) -> None:
        """Keep each user's part lists (``lists[p][j]``: part ``p``'s for ``user_ids[j]``; or
        a batch's, on rows), the least recently ranked users dropped beyond ``feedback_users``."""
        shown = self._shown
        if isinstance(lists, _KeptBatch):
            per_user = [_Kept(lists, j) for j in range(len(user_ids))]
        else:
            per_user = list(zip(*lists)) if lists else [()] * len(user_ids)
        if len(set(user_ids)) == len(user_ids):
            pop = shown.pop
            for user_id in user_ids:
                pop(user_id, None)  # to the end: ranked most recently
            shown.update(zip(user_ids, per_user))
        else:  # a user twice: kept where its last list puts it
            for user_id, kept in zip(user_ids, per_user):
                shown.pop(user_id, None)
                shown[user_id] = kept
        excess = len(shown) - self.feedback_users
        if excess > 0:  # one pass: each next(iter(shown)) would step over the keys deleted before
            for user_id in list(islice(shown, excess)):
                del shown[user_id]

    def learn_one(self, interaction: Interaction) -> None:
        self._take_feedback((interaction,))
        for model in self._models.values():
            model.learn_one(interaction)

    def learn_many(self, interactions: Iterable[Interaction]) -> None:
        """Each component's ``learn_many`` (each equals its own ``learn_one`` loop)."""
        interactions = list(interactions)
        self._take_feedback(interactions)
        for model in self._models.values():
            model.learn_many(interactions)

    def _power_of(self, name: str) -> float | None:
        """The power a calibrated part's scores are raised to (``None``: scaled per list)."""
        return self.calibrated_power if name in self._calibrated else None

    def _scaled(self, ranking: Ranking, weight: float, name: str = "") -> tuple[tuple[str, ...], list[float]]:
        """A component's items and their weighted scaled scores (what each adds to the fusion)."""
        items, scores = zip(*ranking)
        if name in self._calibrated:  # probabilities: comparable across users and logs as they are
            power = self.calibrated_power
            return items, [weight * score**power for score in scores]
        if self.rank_offset is not None:  # reciprocal rank fusion
            top = self.rank_offset + 1
            return items, [weight * top / (top + pos) for pos in range(len(items))]
        high, low = scores[0], scores[-1]  # min-max scaled scores
        span = high - low
        if span <= 0:
            return items, [weight] * len(items)
        scale = weight / span
        return items, [(score - low) * scale for score in scores]

    def _parts_of(self, lists: Mapping[str, Ranking], item_ids: Sequence[str]) -> dict[str, str]:
        """For each item, the component whose scaled score added most to its blend score."""
        best: dict[str, tuple[float, str]] = {item: (-1.0, "") for item in item_ids}
        for name, ranking in lists.items():
            weight = self._weight(name)
            if not ranking or weight == 0:
                continue
            for item, value in zip(*self._scaled(ranking, weight, name)):
                held = best.get(item)
                if held is not None and value > held[0]:
                    best[item] = (value, name)
        return {item: name for item, (_, name) in best.items() if name}

    def _fuse(self, lists: Mapping[str, Ranking], k: int) -> Ranking:
        fused: dict[str, float] = {}  # item -> blend score
        used: list[tuple[str, ...]] = []  # the items of each list taken, for ties
        for name, ranking in lists.items():
            weight = self._weight(name)
            if not ranking or weight == 0:
                continue
            items, scaled_scores = self._scaled(ranking, weight, name)
            used.append(items)
            if not fused and len(set(items)) == len(items):  # the first list: built at C speed
                fused = dict(zip(items, scaled_scores))
                continue
            get = fused.get
            for item, scaled in zip(items, scaled_scores):
                fused[item] = get(item, 0.0) + scaled
        ranked = sorted(fused, key=fused.__getitem__, reverse=True)  # stable: equal scores stay in first-seen order
        scores = [fused[item] for item in ranked[: k + 1]]
        if len(set(scores)) < len(scores):  # a tie among the best: the better position in any list first
            order: dict[str, int] = {}
            for items in used:
                for pos, item in enumerate(items):
                    if order.get(item, pos + 1) > pos:
                        order[item] = pos
            best: list[str] = []
            start = 0
            while len(best) < k and start < len(ranked):
                score, end = fused[ranked[start]], start + 1
                while end < len(ranked) and fused[ranked[end]] == score:
                    end += 1
                best += sorted(ranked[start:end], key=order.__getitem__)
                start = end
            ranked, scores = best, [fused[item] for item in best]
        return [(item, float(score)) for item, score in zip(ranked[:k], scores)]

    def _bounds_or_chooses(self) -> bool:
        """Whether ``candidates_from`` or ``weight_choices`` takes part in the fusion."""
        return self.candidates_from in self._models or self._choosing() is not None

    def _fuse_rows(self, parts: list[tuple], names: list[str], k: int, depth: int):
        """``parts`` (``fuse_top_k``'s, each weight before the chosen factor) of the parts
        ``names`` fused with ``candidates_from`` and ``weight_choices``: the rows, scores and
        sources of each user's ``k`` best, and, with a choice to make and a ``depth``, each
        factor's first ``depth`` rows (one candidate lookup shared by all factors)."""
        lead = names.index(self.candidates_from) if self.candidates_from in names else None
        choosing = self._choosing()
        at = names.index(choosing) if choosing in names else None
        factors = self._factors() if at is not None else (1.0,)
        chosen = self.chosen_factor() if at is not None else 0
        fusion = CandidateFusion(parts, lead, self.rank_offset) if lead is not None and at in (None, lead) else None

        def fused(factor: float, width: int, with_sources: bool):
            if fusion is not None:
                return fusion.top(width, parts[lead][2] * factor, with_sources)
            weighted = [(p[0], p[1], p[2] * factor, *p[3:]) if i == at else p for i, p in enumerate(parts)]
            if lead is None:
                return fuse_top_k(weighted, width, self.rank_offset, with_sources=with_sources)
            return CandidateFusion(weighted, lead, self.rank_offset).top(width, weighted[lead][2], with_sources)

        rows, scores, sources = fused(factors[chosen], max(k, depth) if at is not None else k, True)
        tops = []
        if at is not None and depth:  # the other factors' lists only as deep as feedback reads them
            tops = [rows[:, :depth] if c == chosen else fused(f, depth, False)[0] for c, f in enumerate(factors)]
        return rows[:, :k], scores[:, :k], sources[:, :k], tops

    def recommend(self, user_id: str, k: int = 10, exclude: Collection[str] | None = None) -> Ranking:
        n = max(k, self.n_candidates)
        lists = {name: m.recommend(user_id, n, exclude) for name, m in self._models.items()}
        self._last_lists = {name: {user_id: ranking} for name, ranking in lists.items()}
        feedback = self.feedback_half_life is not None
        depth = self.feedback_depth
        shown = [[tuple(item for item, _ in ranking[:depth]) if self._base_weight(name) else ()]
                 for name, ranking in lists.items()] if feedback else []
        if self._bounds_or_chooses():
            fused, factors_shown = self._fuse_bounded(lists, n, k, depth if feedback else 0)
        else:
            fused, factors_shown = self._fuse(lists, k), []
        if feedback:
            self._remember_shown([user_id], shown + factors_shown)
        return fused

    def _fuse_bounded(self, lists: Mapping[str, Ranking], n: int, k: int, depth: int
                      ) -> tuple[Ranking, list[list[tuple[str, ...]]]]:
        """One user's ``lists`` on arrays, fused as ``recommend_rows`` fuses them (bounded,
        the factor chosen), and each factor's list ``depth`` deep (for feedback)."""
        index = IdIndex()
        parts, used = [], []
        for name, ranking in lists.items():
            weight = self._weight(name, chosen=False)
            if weight:
                ranked = RankedRows.of_rankings([ranking], index, n)
                parts.append((ranked.rows, ranked.scores, weight, self._power_of(name)))
                used.append(name)
        if not parts:
            return [], []
        rows, scores, _, tops = self._fuse_rows(parts, used, k, depth)
        ids = index.ids
        return ([(ids[r], score) for r, score in zip(rows[0].tolist(), scores[0].tolist()) if r >= 0],
                [[tuple(ids[r] for r in top[0].tolist() if r >= 0)] for top in tops])

    def recommend_many(
        self, user_ids: Sequence[str], k: int = 10, exclude: Mapping[str, Collection[str]] | None = None
    ) -> dict[str, Ranking]:
        """``recommend`` for each user, fused on arrays (``recommend_rows``).

        The components' lists are kept until the next call, for ``explain_items``."""
        user_ids = list(user_ids)
        return self.recommend_rows(user_ids, k, exclude).rankings(user_ids)

    def recommend_rows(
        self, user_ids: Sequence[str], k: int = 10, exclude: Mapping[str, Collection[str]] | None = None
    ) -> RankedRows:
        """Each part's lists for all users as arrays (its ``recommend_rows``, else its
        ``recommend_many``), moved to one shared row space and fused by ``fuse_top_k``:
        per-row scaling, weighted sums and one top-``k`` per user, no per-user Python.
        The parts' lists are kept until the next call (``explain_items`` reads them)."""
        user_ids = list(user_ids)
        row_map = _ROW_MAPS.get(self)
        if row_map is None:
            row_map = _ROW_MAPS[self] = RowMap(IdIndex())
        shared = row_map.shared
        n = max(k, self.n_candidates)
        parts, used, last, shown = [], [], {}, []  # used: the names of parts, as fuse_top_k's sources count them
        depth = self.feedback_depth
        feedback = self.feedback_half_life is not None
        for name, model in self._models.items():
            weight = self._weight(name, chosen=False)
            if weight == 0:  # adds nothing to the fusion nor to an explanation
                last[name] = _ListsByUser(user_ids, None)
                shown.append(None)
                continue
            if isinstance(model, RanksRows):
                lists = model.recommend_rows(user_ids, n, exclude)
                mapping = row_map(lists.index)
                listed = lists.rows >= 0
                rows = np.where(listed, mapping[np.where(listed, lists.rows, 0)] if len(mapping) else -1, -1)
                parts.append((rows, lists.scores, weight, self._power_of(name)))
                shown.append(rows)
            else:
                got = model.recommend_many(user_ids, n, exclude)
                lists = RankedRows.of_rankings([got[u] for u in user_ids], shared, n)
                parts.append((lists.rows, lists.scores, weight, self._power_of(name)))
                shown.append(lists.rows)
            used.append(name)
            last[name] = _ListsByUser(user_ids, lists)
        self._last_lists = last
        tops = []
        if not parts:
            rows = np.zeros((len(user_ids), 0), dtype=np.int64)
            scores, sources = rows.astype(np.float64), rows
        elif self._bounds_or_chooses():
            rows, scores, sources, tops = self._fuse_rows(parts, used, k, depth if feedback else 0)
        else:
            rows, scores, sources = fuse_top_k(parts, k, self.rank_offset, with_sources=True)
        if feedback:  # the lists kept on rows, made into ids only where read
            kept = np.full((len(shown) + len(tops), len(user_ids), depth), -1, dtype=np.int32)
            for at, part_rows in enumerate([*shown, *tops]):
                if part_rows is not None:
                    width = min(depth, part_rows.shape[1])
                    kept[at, :, :width] = part_rows[:, :width]
            self._remember_shown(user_ids, _KeptBatch(kept, shared))
        if not parts:
            return RankedRows(rows, scores, shared)
        _LAST_FUSED[self] = (user_ids, rows, sources, used)
        return RankedRows(rows, scores, shared)

    def explain_items(self, user_id: str, item_ids: Sequence[str]) -> list[tuple[str, str | None]]:
        """Each item explained by the component that ranked it: whose scaled score added most
        to the item's blend score in the last ranking (ranked again if the user was not in it).

        >>> from core.schema import Event
        >>> model = Blend(models={"cooc": {}, "trending": {"half_life_s": None}}, weights={"trending": 0.5})
        >>> for user, items in {"a": "xy", "b": "xy", "c": "xz"}.items():
        ...     for item in items:
        ...         model.learn_one(Event(user_id=user, item_id=item, type="view", ts=0))
        >>> ranking = model.recommend("c", k=2, exclude={"x", "z"})
        >>> model.explain_items("c", [item for item, _ in ranking])
        [('cooc', 'often viewed with x, which you viewed')]
        """
        last = self.__dict__.get("_last_lists") or {}
        if all(user_id in lists for lists in last.values()) and last.keys() == self._models.keys():
            ranked_by = self._parts_of({name: lists[user_id] for name, lists in last.items()}, item_ids)
        else:
            n = max(len(item_ids), self.n_candidates)
            ranked_by = self._parts_of({name: m.recommend(user_id, n) for name, m in self._models.items()}, item_ids)
        by_part: dict[str, list[int]] = {}
        for position, item in enumerate(item_ids):
            by_part.setdefault(ranked_by.get(item, ""), []).append(position)
        explained: list[tuple[str, str | None]] = [(self.name, None)] * len(item_ids)
        for name, positions in by_part.items():
            model = self._models.get(name)
            reasons = (model.explain_items(user_id, [item_ids[p] for p in positions])
                       if isinstance(model, Explains) else None)
            for position, reason in zip(positions, reasons or [(name or self.name, None)] * len(positions)):
                explained[position] = reason
        return explained

    def explain_rows(self, user_ids: Sequence[str], rows: np.ndarray, index: IdIndex
                     ) -> list[list[tuple[str, str | None]]]:
        """``explain_items`` for every listed item of the last ``recommend_rows`` (or of a
        cut of each of its lists), all users at once: each part explains the items it added
        most to (``fuse_top_k``'s sources), with its own ``explain_rows`` where it has one.
        Rows that are not such a cut are explained one user at a time."""
        user_ids = list(user_ids)
        last = _LAST_FUSED.get(self)
        width = rows.shape[1]
        listed = rows >= 0
        if (last is None or last[0] != user_ids or last[1].shape[1] < width
                or not np.array_equal(np.where(listed, last[1][:, :width], -1), rows)):
            ids = index.ids
            return [self.explain_items(user_id, [ids[r] for r in row if r >= 0])
                    for user_id, row in zip(user_ids, rows.tolist())]
        sources = np.where(listed, last[2][:, :width], -1)
        cell = np.full(rows.shape, -1, dtype=np.int64)
        cell[listed] = np.arange(int(listed.sum()))
        explained = np.empty(int(listed.sum()), dtype=object)  # placed by cell, not one by one in Python
        for p, name in enumerate(last[3]):
            chosen = sources == p
            if not chosen.any():
                continue
            part = self._models[name]
            mine = np.where(chosen, rows, -1)
            if isinstance(part, ExplainsRows):
                said = part.explain_rows(user_ids, mine, index)
            elif isinstance(part, Explains):
                ids = index.ids
                said = [part.explain_items(user_id, [ids[r] for r in row if r >= 0])
                        for user_id, row in zip(user_ids, mine.tolist())]
            else:
                said = [[(name, None)] * count for count in chosen.sum(axis=1).tolist()]
            # fromiter keeps each (strategy, reason) tuple whole, one object per cell
            explained[cell[chosen]] = np.fromiter(chain.from_iterable(said), dtype=object)
        return per_row(explained.tolist(), listed)

    # -- capabilities, declared when the components make them sound (declare_from_parts) --
    def _learn_item(self, item_id: str, metadata: Mapping[str, Any]) -> None:
        """Pass an item's metadata to the components that use it."""
        for model in self._models.values():
            if isinstance(model, LearnsItems):
                model.learn_item(item_id, metadata)

    def _forget_user(self, user_id: str) -> None:
        """Every component forgets the user."""
        for model in self._models.values():
            model.forget_user(user_id)
        self._shown.pop(user_id, None)

    def _use_popularity(self, popularity: Any) -> bool:
        """Hand ``popularity`` to every component that ranks with one."""
        return any([m.use_popularity(popularity) for m in self._models.values() if isinstance(m, UsesPopularity)])

    def _forget_items(self, item_ids: Collection[str]) -> None:
        """Every component forgets the items."""
        for model in self._models.values():
            model.forget_items(item_ids)
        gone = set(item_ids)
        for batch in {id(kept.batch): kept.batch for kept in self._shown.values() if type(kept) is _Kept}.values():
            batch.gone |= gone  # left out where its lists are read
        for user_id, lists in self._shown.items():
            if type(lists) is not _Kept and any(not gone.isdisjoint(items) for items in lists):
                self._shown[user_id] = tuple(tuple(i for i in items if i not in gone) for items in lists)

    def _state_sizes(self) -> dict[str, int]:
        return largest_sizes(self._models.values())

    def _export_users(self, user_ids: Collection[str]) -> dict[str, Any]:
        """Each component's export, its keys prefixed with the component's name and ``/``."""
        return tables.prefixed({name: model.export_users(user_ids) for name, model in self._models.items()})

    def _import_users(self, state: Mapping[str, Any]) -> None:
        _, parts = tables.split(state, self._models)
        for name, model in self._models.items():
            model.import_users(parts[name])

    def _item_delta(self) -> dict[str, Any]:
        """Each component's delta, its keys prefixed with the component's name and ``/``."""
        return tables.prefixed({name: model.item_delta() for name, model in self._models.items()})

    def _merge_item_delta(self, delta: Mapping[str, Any]) -> None:
        _, parts = tables.split(delta, self._models)
        for name, model in self._models.items():
            model.merge_item_delta(parts[name])

    def _similar_items(self, item_id: str, k: int = 10) -> Ranking:
        """The first component's item similarity that has one."""
        part = _SIMILAR_PART.get(self)
        if part is None:  # found once: isinstance of a Protocol costs microseconds, per item
            part = _SIMILAR_PART[self] = next(m for m in self._models.values() if isinstance(m, SimilarItems))
        return part.similar_items(item_id, k)


def _frozen_choices(weight_choices: Mapping[str, Sequence[float]] | None) -> dict[str, tuple[float, ...]]:
    """``weight_choices`` (its default for None) as a copy of floats, so that changing the
    caller's mapping later cannot resize what feedback credits."""
    choices = DEFAULT_WEIGHT_CHOICES if weight_choices is None else weight_choices
    return {name: tuple(float(f) for f in factors) for name, factors in choices.items()}


class _KeptBatch:
    """A batch's lists kept for feedback, on arrays: ``rows[p, j]``, list ``p`` of the
    batch's user ``j`` (rows of ``index``, whose ids are never freed; ``-1`` after the list);
    ``gone``: items forgotten since, left out where the lists are read. Pickled with only
    the ids it lists, so that it does not hold on to the blend's shared index."""

    __slots__ = ("_compact", "gone", "index", "rows")

    def __init__(self, rows: np.ndarray, index: IdIndex, gone: Collection[str] = ()) -> None:
        self.rows, self.index, self.gone = rows, index, set(gone)
        self._compact: tuple[np.ndarray, IdIndex] | None = None

    def __reduce__(self):
        if self._compact is None:  # made once: the rows never change, nor the ids of their index
            listed = self.rows >= 0
            present = np.zeros(len(self.index.ids), dtype=bool)
            present[self.rows[listed]] = True
            used = np.flatnonzero(present)  # the rows listed, ascending
            renumbered = np.cumsum(present, dtype=np.int32) - 1  # each listed row's place in ``used``
            rows = np.full(self.rows.shape, -1, dtype=np.int32)
            rows[listed] = renumbered[self.rows[listed]]  # nothing to gather where nothing is listed
            index = IdIndex()
            index.add_new([self.index.ids[row] for row in used.tolist()])
            self._compact = (rows, index)
        return _KeptBatch, (*self._compact, sorted(self.gone))


class _Kept(Sequence[tuple[str, ...]]):
    """One user's kept lists of a ``_KeptBatch``, read as tuples of item ids.

    >>> index = IdIndex(); _ = index.add("a"), index.add("b")
    >>> kept = _Kept(_KeptBatch(np.array([[[1, 0]], [[0, -1]]]), index), 0)
    >>> tuple(kept), kept == (("b", "a"), ("a",)), kept.rows_and("a")
    ((('b', 'a'), ('a',)), True, ([[1, 0], [0, -1]], 0))
    >>> kept.batch.gone.add("b"); tuple(kept)
    (('a',), ('a',))
    """

    __slots__ = ("batch", "j")

    def __init__(self, batch: _KeptBatch, j: int) -> None:
        self.batch, self.j = batch, j

    def _lists(self) -> tuple[tuple[str, ...], ...]:
        ids, gone = self.batch.index.ids, self.batch.gone
        return tuple(tuple(ids[r] for r in row if r >= 0 and ids[r] not in gone)
                     for row in self.batch.rows[:, self.j].tolist())

    def rows_and(self, item_id: str) -> tuple[list[list[int]], int | None]:
        """The lists as rows, and the item's row (``None`` where it is in none): credit
        read without making ids."""
        rows_of, lists = self.batch.index.rows, self.batch.rows[:, self.j].tolist()
        if self.batch.gone:  # the index never frees an id: the forgotten items' rows are theirs still
            gone = {rows_of.get(item) for item in self.batch.gone}
            lists = [[r for r in row if r >= 0 and r not in gone] for row in lists]
        return lists, rows_of.get(item_id)

    def __getitem__(self, p):
        return self._lists()[p]

    def __len__(self) -> int:
        return len(self.batch.rows)

    def __iter__(self):
        return iter(self._lists())

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Sequence) and self._lists() == tuple(other)

    __hash__ = None

    def __repr__(self) -> str:
        return repr(self._lists())

    def __reduce__(self):
        return _Kept, (self.batch, self.j)


class _ListsByUser(Mapping[str, Ranking]):
    """One part's lists of a batch by user, as ``(item id, score)`` pairs made only for the
    users asked for (``explain_items``); ``None``: an empty list for every user."""

    def __init__(self, user_ids: Sequence[str], ranked: RankedRows | None) -> None:
        self._at = {user_id: j for j, user_id in enumerate(user_ids)}
        self._ranked = ranked

    def __getitem__(self, user_id: str) -> Ranking:
        j = self._at[user_id]
        if self._ranked is None:
            return []
        rows, scores = self._ranked.rows[j], self._ranked.scores[j]
        listed = rows >= 0
        ids = self._ranked.index.ids
        return list(zip(map(ids.__getitem__, rows[listed].tolist()), scores[listed].tolist()))

    def __iter__(self):
        return iter(self._at)

    def __len__(self) -> int:
        return len(self._at)
