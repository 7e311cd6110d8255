"""Pure learning code, no I/O: online recommenders under one contract, and their evaluation.

Every model follows :class:`online_models.base.Recommender`; the registry maps the names
the CLI, the settings and the reports use to model classes.
"""

import importlib

from online_models.base import EVENT_WEIGHTS, Recommender

# loaded on first use, so that importing one light module (the API reads item categories
# with ``online_models.content.categories_of``) does not import torch with every model
_LAZY = {"MODELS": "online_models.registry", "make_model": "online_models.registry",
         "set_torch_threads": "online_models.embeddings", "set_scoring": "online_models.embeddings_ranking"}

__all__ = ["EVENT_WEIGHTS", "MODELS", "Recommender", "make_model", "set_scoring", "set_torch_threads"]


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module 'online_models' has no attribute {name!r}")
    return getattr(importlib.import_module(_LAZY[name]), name)
