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

from collections.abc import Collection, Mapping, Sequence
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
    learning changed since the last call (flat numpy arrays and numbers), and
    ``merge_item_delta`` adds a peer's."""

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
class UsesPopularity(Protocol):
    """Ranks with item popularity (a ``Trending``) it need not learn itself.

    Standalone, such a model owns and learns its own popularity. Whoever drives several
    (the worker, the evaluator, a composite model) owns one ``Trending``, hands it over
    once with ``use_popularity``, and learns each batch into it before the models learn
    it; from then on the model reads it and no longer learns it."""

    def use_popularity(self, popularity: Any) -> None: ...


@runtime_checkable
class RanksRows(Protocol):
    """Ranks a batch of users on arrays: ``recommend_rows`` gives the lists
    ``recommend_many`` would, as an ``online_models._arrays.RankedRows`` (item rows and
    scores per user, and the index that names the rows), so that a fusion of several
    models never builds per-user Python lists."""

    def recommend_rows(
        self, user_ids: Sequence[str], k: int = 10, exclude: Mapping[str, Collection[str]] | None = None
    ) -> Any: ...
