"""The single (non-composite) models by name: what composite models are made of.

Blend, the agent and purchase re-ranking build their parts with :func:`make_part`; the
registry (``online_models.registry``) is these parts plus the composites, so no model
imports the registry. A new single model is registered here, and is then in ``MODELS`` too.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from online_models.base import Recommender
from online_models.content import Content
from online_models.cooc import Cooc
from online_models.embeddings import TorchEmbeddings
from online_models.river_models import RiverMF
from online_models.sasrec import SASRec
from online_models.sequence import Sequential
from online_models.trending import Trending

PARTS: dict[str, type[Recommender]] = {cls.name: cls for cls in (Trending, Cooc, Sequential, TorchEmbeddings, RiverMF, Content, SASRec)}


def make_part(name: str, params: Mapping[str, Any] | None = None) -> Recommender:
    """A composite model's part by name, with its hyperparameters; a clear error for unknown names.

    >>> make_part("trending", {"half_life_s": None})
    Trending(half_life_s=None, event_weights=None)
    """
    try:
        cls = PARTS[name]
    except KeyError:
        raise ValueError(f"unknown model part {name!r}; choose one of {', '.join(sorted(PARTS))}") from None
    return cls(**dict(params or {}))
