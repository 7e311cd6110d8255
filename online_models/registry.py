"""Model names as the CLI, the settings and the reports use them."""

from __future__ import annotations

import inspect
from typing import Any

from online_models.agent import Agent
from online_models.base import Recommender
from online_models.blend import Blend
from online_models.parts import PARTS
from online_models.purchase_rerank import PurchaseRerank

MODELS: dict[str, type[Recommender]] = {**PARTS, **{cls.name: cls for cls in (PurchaseRerank, Blend, Agent)}}
"""Every model by name: the single ones (``online_models.parts``) and the composites."""


def make_model(name: str, **params: Any) -> Recommender:
    """A fresh model by its registry name; a clear error for unknown names."""
    try:
        cls = MODELS[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(sorted(MODELS))}") from None
    try:
        inspect.signature(cls).bind(**params)
    except TypeError as e:  # an unknown hyperparameter
        raise ValueError(f"model {name!r} does not take these parameters: {e}") from None
    return cls(**params)
