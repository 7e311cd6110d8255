"""Every registered model passes the conformance suite (``online_models.checks``): the
contract, and each capability it declares. A model added to the registry joins by itself."""

from __future__ import annotations

import copy

import pytest
import torch

from online_models import MODELS, make_model
from online_models.checks import yield_checks

torch.set_num_threads(1)

# small, fast settings where the defaults are sized for real logs
FAST: dict[str, dict] = {
    "embeddings": {"n_factors": 8, "batch_size": 8, "n_negatives": 16, "seed": 3},
    "purchase-rerank": {"min_purchases": 1, "n_candidates": 20},
    "blend": {"models": {"cooc": {}, "embeddings": {"n_factors": 8, "batch_size": 8, "n_negatives": 16}}},
}

CASES = [(name, check) for name in sorted(MODELS)
         for check in yield_checks(make_model(name, **copy.deepcopy(FAST.get(name, {}))))]


@pytest.mark.parametrize(("name", "check"), CASES, ids=[f"{name}-{check.__name__[6:]}" for name, check in CASES])
def test_model_passes(name, check) -> None:
    check(make_model(name, **copy.deepcopy(FAST.get(name, {}))))


def test_every_model_declares_what_the_worker_needs() -> None:
    """Declared capabilities, as the models stand: a change here is a change of behaviour."""
    from online_models.capabilities import ForgetsItems, ForgetsUsers, HandsOverUsers, SharesItems

    for name in MODELS:
        model = make_model(name, **copy.deepcopy(FAST.get(name, {})))
        for capability in (ForgetsUsers, ForgetsItems, HandsOverUsers, SharesItems):
            assert isinstance(model, capability), f"{name} lost {capability.__name__}"
