"""Optional model capabilities, declared as ``typing.Protocol``s.

The contract every model follows is small (:class:`online_models.base.Recommender`:
``learn_one``, ``learn_many``, ``recommend``, ``recommend_many`` and the hyperparameter
helpers). Anything more is a capability a model declares by defining its methods; the
worker and the evaluator check it once with ``isinstance`` when they start, never by
calling and catching ``NotImplementedError``.

>>> class Counter:
...     def forget_user(self, user_id): ...
>>> isinstance(Counter(), ForgetsUsers), isinstance(Counter(), SimilarItems)
(True, False)
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

Ranking = list[tuple[str, float]]


@runtime_checkable
class ForgetsUsers(Protocol):
    """Drops everything learned about one user (idle expiry, right to be forgotten).

    Item state learned from the user's events stays: it is no longer theirs alone."""

    def forget_user(self, user_id: str) -> None: ...


@runtime_checkable
class ForgetsItems(Protocol):
    """Drops everything learned about these items (idle expiry on a churning catalogue);
    their rows are freed for new ids and an item that comes back starts afresh."""

    def forget_items(self, item_ids: Collection[str]) -> None: ...


@runtime_checkable
class Explains(Protocol):
    """For each recommended item: the strategy that chose it and a reason in words
    (``None`` where there is none)."""

    def explain_items(self, user_id: str, item_ids: Sequence[str]) -> list[tuple[str, str | None]]: ...


@runtime_checkable
class ExplainsRows(Protocol):
    """Explains a batch of ranked lists at once: per user, what ``explain_items`` gives
    for the items of the user's row of ``rows`` (item rows of the ``IdIndex`` ``index``,
    best first, ``-1`` where there is no item), without a call per user."""

    def explain_rows(self, user_ids: Sequence[str], rows: Any, index: Any) -> list[list[tuple[str, str | None]]]: ...


@runtime_checkable
class SimilarItems(Protocol):
    """Items most like an item (item vectors or co-occurrence)."""

    def similar_items(self, item_id: str, k: int = 10) -> Ranking: ...


@runtime_checkable
class HandsOverUsers(Protocol):
    """A user's learned state moves between workers (scale-out): ``export_users`` names
    items by id, never by row; ``import_users`` adopts them, replacing what it knew."""

    def export_users(self, user_ids: Collection[str]) -> dict[str, Any]: ...

    def import_users(self, state: Mapping[str, Any]) -> None: ...


@runtime_checkable
class SharesItems(Protocol):
    """Item state shared between replicas: ``item_delta`` is what this model's own
    learning changed since the last call (flat numpy arrays and numbers, so it travels
    without pickle; every array of an unchanged model's delta is empty), and
    ``merge_item_delta`` adds a peer's: counts add, learned vectors take the peer's step
    (parameter averaging in the style of an asynchronous parameter server). What was merged
    in from peers is never part of a delta."""

    def item_delta(self) -> dict[str, Any]: ...

    def merge_item_delta(self, delta: Mapping[str, Any]) -> None: ...


@runtime_checkable
class LearnsItems(Protocol):
    """Learns from item metadata (title, description, category)."""

    def learn_item(self, item_id: str, metadata: Mapping[str, Any]) -> None: ...


@runtime_checkable
class ReportsArms(Protocol):
    """A model that chooses among strategies (the agent) and reports each arm's pulls,
    rewards and share for the metrics."""

    def stats(self) -> dict[str, Any]: ...


@runtime_checkable
class ReportsSizes(Protocol):
    """Says how many users and items its learned state holds (what idle expiry bounds)."""

    def state_sizes(self) -> dict[str, int]: ...


@runtime_checkable
class UsesPopularity(Protocol):
    """Ranks with item popularity (a ``Trending``) it need not learn itself.

    Standalone, such a model owns and learns its own popularity. Whoever drives several
    (the worker, the evaluator, a composite model) owns one ``Trending``, hands it over
    once with ``use_popularity``, and learns each batch into it before the models learn
    it; from then on the model reads it and no longer learns, forgets or shares it (the
    owner does, forgetting the same items in it as in the models). A popularity learned
    with other hyperparameters (half-life, event weights) than the model's own is declined:
    ``use_popularity`` says whether it was taken."""

    def use_popularity(self, popularity: Any) -> bool: ...


# how a composite model's capability follows from its parts': a part that cannot forget a
# user would keep them, so forgetting and sharing need every part; similar items, item
# metadata and a shared popularity need one part that has them
_FROM_PARTS: dict[type, Callable[[Iterable[bool]], bool]] = {
    ForgetsUsers: all, ForgetsItems: all, HandsOverUsers: all, SharesItems: all,
    SimilarItems: any, LearnsItems: any, ReportsSizes: any, UsesPopularity: any,
}


def methods_of(capability: type) -> list[str]:
    """The method names a capability Protocol declares.

    >>> methods_of(HandsOverUsers)
    ['export_users', 'import_users']
    """
    return [name for name, value in vars(capability).items() if callable(value) and not name.startswith("_")]


def declare_from_parts(model: Any, parts: Iterable[Any]) -> None:
    """Declare on a composite ``model`` each capability its ``parts`` make sound.

    The composite implements a capability's methods under names with a leading underscore
    (``_forget_user``); each capability its parts support (all of them, or any, by the
    rule above) is bound on the instance under the public name, so that ``isinstance``
    finds it; the others stay undeclared.

    >>> class Part:
    ...     def forget_user(self, user_id): ...
    >>> class Whole:
    ...     def _forget_user(self, user_id): ...
    ...     def _similar_items(self, item_id, k=10): ...
    >>> whole = Whole(); declare_from_parts(whole, [Part()])
    >>> isinstance(whole, ForgetsUsers), isinstance(whole, SimilarItems)
    (True, False)
    """
    parts = list(parts)
    for capability, rule in _FROM_PARTS.items():
        names = methods_of(capability)
        if not all(callable(getattr(type(model), f"_{name}", None)) for name in names):
            continue  # the composite does not implement it at all
        sound = rule(isinstance(part, capability) for part in parts)
        for name in names:
            if sound:
                setattr(model, name, getattr(model, f"_{name}"))
            else:
                model.__dict__.pop(name, None)


def undeclared(state: dict[str, Any]) -> dict[str, Any]:
    """A composite's ``__dict__`` without the capabilities ``declare_from_parts`` bound
    (for pickling: they are declared again on loading)."""
    names = {name for capability in _FROM_PARTS for name in methods_of(capability)}
    return {key: value for key, value in state.items() if key not in names}


def largest_sizes(parts: Iterable[Any]) -> dict[str, int]:
    """``state_sizes`` of a model made of ``parts``: they learn from the same users and
    items, so the whole holds as many of each as its largest part."""
    sizes = [part.state_sizes() for part in parts if isinstance(part, ReportsSizes)]
    return {key: max((s.get(key, 0) for s in sizes), default=0) for key in ("users", "items")}


@runtime_checkable
class RanksRows(Protocol):
    """Ranks a batch of users on arrays: ``recommend_rows`` gives the lists
    ``recommend_many`` would, as an ``online_models._arrays.RankedRows`` (item rows and
    scores per user, and the index that names the rows), so that a fusion of several
    models never builds per-user Python lists."""

    def recommend_rows(
        self, user_ids: Sequence[str], k: int = 10, exclude: Mapping[str, Collection[str]] | None = None
    ) -> Any: ...
