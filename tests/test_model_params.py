"""STREAMREC_MODEL_PARAMS: the served model's hyperparameters from the environment."""

import pytest

from core.settings import Settings
from online_models import make_model


def test_model_params_come_from_the_environment_as_json(monkeypatch):
    monkeypatch.setenv("STREAMREC_MODEL_PARAMS", '{"models": {"cooc": {}, "trending": {"half_life_s": null}}}')
    settings = Settings(_env_file=None)
    model = make_model(settings.model, **settings.model_params)
    assert model.models == {"cooc": {}, "trending": {"half_life_s": None}}


def test_default_model_params_are_the_model_defaults():
    settings = Settings(_env_file=None)
    assert settings.model_params == {}
    assert make_model(settings.model, **settings.model_params).models is None


def test_an_unknown_hyperparameter_is_a_clear_error():
    with pytest.raises(ValueError, match="does not take these parameters.*n_neighbours"):
        make_model("cooc", n_neighbours=5)
