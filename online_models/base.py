"""The model contract every streamrec recommender follows, in River's spirit.

- Hyperparameters are stored verbatim from ``__init__`` (``_get_params`` reads them back,
  ``clone`` rebuilds an unfitted twin).
- Learned state lives apart, in attributes created lazily as new users and items arrive.
- ``learn_one`` learns from one interaction and leaves it unchanged; ``learn_many`` takes a
  micro-batch and gives the same result as ``learn_one`` in order unless a model says why not.
- ``recommend`` ranks items for one user; the caller says what to ``exclude`` (the worker
  and the evaluator track what each user has already seen, by their own policy).
- Anything more (forgetting, explaining, similar items, scale-out, item metadata, a shared
  popularity) is an optional capability a model declares by defining its methods, named by
  the Protocols of :mod:`online_models.capabilities` and checked with ``isinstance``.

An interaction is any object with ``user_id``, ``item_id``, ``type``, ``ts`` and ``value``
attributes; ``core.schema.Event`` is the one the worker passes.
"""

from __future__ import annotations

import abc
import copy
import inspect
from collections.abc import Collection, Iterable, Mapping, Sequence
from typing import Any, ClassVar, Protocol

EVENT_WEIGHTS: Mapping[str, float] = {"view": 1.0, "click": 2.0, "add_to_cart": 3.0, "purchase": 5.0}
"""Default strength of each event type: a purchase teaches more than a view."""

Ranking = list[tuple[str, float]]


class Interaction(Protocol):
    user_id: str
    item_id: str
    type: str
    ts: float
    value: float | None


class Recommender(abc.ABC):
    """Base class of online recommenders; see the module docstring for the contract."""

    name: ClassVar[str]
    learn_many_is_learn_one: ClassVar[bool] = True
    """Whether ``learn_many`` learns exactly what ``learn_one`` in order does (a model that
    batches differently says so here and why in its docstring)."""

    # -- hyperparameters ---------------------------------------------------------------
    def _get_params(self) -> dict[str, Any]:
        """The ``__init__`` arguments, read back from the attributes of the same name."""
        sig = inspect.signature(type(self).__init__)
        return {p: getattr(self, p) for p in sig.parameters if p != "self"}

    def clone(self) -> Recommender:
        """A new, unfitted model with the same hyperparameters."""
        return type(self)(**copy.deepcopy(self._get_params()))

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in self._get_params().items())
        return f"{type(self).__name__}({params})"

    def weight(self, interaction: Interaction) -> float:
        """How much this interaction teaches, from its event type."""
        weights = getattr(self, "event_weights", None) or EVENT_WEIGHTS
        return float(weights.get(interaction.type, 1.0))

    def weights_of(self, interactions: Sequence[Interaction]) -> list[float]:
        """``weight`` of each interaction, in order, asked once per event type present (a
        batch's ``learn_many`` reads them all; the weight depends on the type alone)."""
        weight_of = {kind: self.weight(interaction) for kind, interaction in {i.type: i for i in interactions}.items()}
        return [weight_of[interaction.type] for interaction in interactions]

    # -- learning ----------------------------------------------------------------------
    @abc.abstractmethod
    def learn_one(self, interaction: Interaction) -> None:
        """Update the model with one interaction."""

    def learn_many(self, interactions: Iterable[Interaction]) -> None:
        """Update the model with a micro-batch, in order."""
        for interaction in interactions:
            self.learn_one(interaction)

    # -- ranking -----------------------------------------------------------------------
    @abc.abstractmethod
    def recommend(self, user_id: str, k: int = 10, exclude: Collection[str] | None = None) -> Ranking:
        """The user's top-``k`` items as ``(item_id, score)``, best first, none of ``exclude``.

        An unseen user gets the model's fallback (usually popular items); a model with
        nothing learned yet returns an empty list.
        """

    def recommend_many(
        self, user_ids: Sequence[str], k: int = 10, exclude: Mapping[str, Collection[str]] | None = None
    ) -> dict[str, Ranking]:
        """``recommend`` for several users at once (the worker's batch refresh)."""
        exclude = exclude or {}
        return {u: self.recommend(u, k, exclude.get(u)) for u in user_ids}
