"""FastAPI dependencies: what a route needs, injected with ``Annotated[..., Depends(...)]``.

They are ``async`` (they only read ``app.state``): FastAPI awaits them on the event loop
instead of sending each one to the thread pool, which matters on the hot GET route.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from core.settings import Settings
from serving.store import PopularCache, RecommendationStore


async def get_settings(request: Request) -> Settings:
    return request.app.state.settings


async def get_store(request: Request) -> RecommendationStore:
    return request.app.state.store


async def get_popular_cache(request: Request) -> PopularCache:
    return request.app.state.popular_cache


SettingsDep = Annotated[Settings, Depends(get_settings)]
StoreDep = Annotated[RecommendationStore, Depends(get_store)]
PopularCacheDep = Annotated[PopularCache, Depends(get_popular_cache)]
