"""Pure learning code, no I/O: online recommenders under one contract, and their evaluation.

Every model follows :class:`online_models.base.Recommender`; the registry maps the names
the CLI, the settings and the reports use to model classes.
"""

from online_models.base import EVENT_WEIGHTS, Recommender
from online_models.embeddings import set_torch_threads
from online_models.registry import MODELS, make_model

__all__ = ["EVENT_WEIGHTS", "MODELS", "Recommender", "make_model", "set_torch_threads"]
