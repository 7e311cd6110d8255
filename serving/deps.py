"""FastAPI dependencies: what a route needs, injected with ``Annotated[..., Depends(...)]``."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from serving.store import RecommendationStore
from streamrec.settings import Settings


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_store(request: Request) -> RecommendationStore:
    return request.app.state.store


SettingsDep = Annotated[Settings, Depends(get_settings)]
StoreDep = Annotated[RecommendationStore, Depends(get_store)]
