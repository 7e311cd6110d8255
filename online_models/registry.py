"""Model names as the CLI, the settings and the reports use them."""

from __future__ import annotations

from typing import Any

from online_models.agent import Agent
from online_models.base import Recommender
from online_models.blend import Blend
from online_models.content import Content
from online_models.cooc import Cooc
from online_models.embeddings import TorchEmbeddings
from online_models.river_models import PurchaseRerank, RiverMF
from online_models.sasrec import SASRec
from online_models.sequence import Sequential
from online_models.trending import Trending

MODELS: dict[str, type[Recommender]] = {cls.name: cls for cls in (Trending, Cooc, TorchEmbeddings, RiverMF, PurchaseRerank, Sequential, Blend, Content, Agent, SASRec)}


def make_model(name: str, **params: Any) -> Recommender:
    """A fresh model by its registry name; a clear error for unknown names."""
    try:
        cls = MODELS[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(sorted(MODELS))}") from None
    return cls(**params)
