"""The model contract every streamrec recommender follows, in River's spirit.

- Hyperparameters are stored verbatim from ``__init__`` (``_get_params`` reads them back,
  ``clone`` rebuilds an unfitted twin).
- Learned state lives apart, in attributes created lazily as new users and items arrive.
- ``learn_one`` learns from one interaction and leaves it unchanged; ``learn_many`` takes a
  micro-batch and gives the same result as ``learn_one`` in order unless a model says why not.
- ``recommend`` ranks items for one user; the caller says what to ``exclude`` (the worker
  and the evaluator track what each user has already seen, by their own policy).

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


def largest_sizes(models: Iterable[Recommender]) -> dict[str, int]:
    """``state_sizes`` of a model made of ``models``: they learn from the same users and
    items, so the whole holds as many of each as its largest part."""
    sizes = [model.state_sizes() for model in models]
    return {key: max((s.get(key, 0) for s in sizes), default=0) for key in ("users", "items")}


class Recommender(abc.ABC):
    """Base class of online recommenders; see the module docstring for the contract."""

    name: ClassVar[str]

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

    # -- learning ----------------------------------------------------------------------
    @abc.abstractmethod
    def learn_one(self, interaction: Interaction) -> None:
        """Update the model with one interaction."""

    def learn_item(self, item_id: str, metadata: Mapping[str, Any]) -> None:
        """Take an item's metadata (title, description, category); models that use no
        content features have nothing to learn from it."""

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

    def explain_items(self, user_id: str, item_ids: Sequence[str]) -> list[tuple[str, str | None]] | None:
        """For each of the user's recommended items: the strategy that chose it and a reason
        in words (``None`` where there is none). ``None``: the model does not explain (for
        any user)."""
        return None

    def similar_items(self, item_id: str, k: int = 10) -> Ranking:
        """Items most like ``item_id``, for models with item vectors or co-occurrence."""
        raise NotImplementedError(f"{type(self).__name__} has no item similarity")

    def forget_user(self, user_id: str) -> None:
        """Drop everything learned about one user (idle expiry, right to be forgotten).

        Item state learned from the user's events stays: it is no longer theirs alone.
        """
        raise NotImplementedError(f"{type(self).__name__} cannot forget a user")

    def forget_items(self, item_ids: Collection[str]) -> None:
        """Drop everything learned about these items (idle expiry on a churning catalogue).

        Their table rows are freed for new ids, and no user state points at them any more;
        an item that comes back starts afresh. Items go in batches because purging users'
        references to them costs one pass over the users, however many items go.
        """
        raise NotImplementedError(f"{type(self).__name__} cannot forget an item")

    def state_sizes(self) -> dict[str, int]:
        """How many users and items the learned state holds (what idle expiry bounds)."""
        return {}

    # -- scale-out: user state moves between workers, item state is shared -------------
    def export_users(self, user_ids: Collection[str]) -> dict[str, Any]:
        """Everything learned about these users, for ``import_users`` in the worker that
        takes over their partition. Items are named by id, never by table row. Unknown ids
        are left out. The model keeps the users (the worker forgets them when it hands
        them over)."""
        raise NotImplementedError(f"{type(self).__name__} cannot hand users over")

    def import_users(self, state: Mapping[str, Any]) -> None:
        """Adopt users exported by a model with the same hyperparameters, replacing what
        this model knew of them. Items they reference that this model has not met are
        created with no learned state."""
        raise NotImplementedError(f"{type(self).__name__} cannot take users over")

    def item_delta(self) -> dict[str, Any]:
        """What this model's own learning changed in its item state since the last call,
        and starts a new tally.

        Flat: numpy arrays (item ids as ``str`` arrays) and numbers, so it travels without
        pickle. A replica adds it with ``merge_item_delta``: counts add, and learned vectors
        take the other replica's step (parameter averaging in the style of an asynchronous
        parameter server). What was merged in from peers is never part of it. Every array
        of an unchanged model's delta is empty.
        """
        raise NotImplementedError(f"{type(self).__name__} cannot share its item state")

    def merge_item_delta(self, delta: Mapping[str, Any]) -> None:
        """Add a peer replica's ``item_delta`` to this model's item state, creating the
        items it has not met."""
        raise NotImplementedError(f"{type(self).__name__} cannot share its item state")

    # -- checkpoints -------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The learned state (a deep copy), without the hyperparameters."""
        params = self._get_params()
        return copy.deepcopy({k: v for k, v in vars(self).items() if k not in params})

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Replace the learned state with one from ``state_dict``."""
        params = self._get_params()
        for key in [k for k in vars(self) if k not in params]:
            delattr(self, key)
        for key, value in copy.deepcopy(dict(state)).items():
            setattr(self, key, value)


def make_part(name: str, params: Mapping[str, Any] | None = None) -> Recommender:
    """A composite model's part (blend's, the agent's, purchase-rerank's base) by registry name.

    The registry imports every model, the composites among them, so this is the one place
    a model imports it, and lazily.
    """
    from online_models.registry import make_model

    return make_model(name, **dict(params or {}))
