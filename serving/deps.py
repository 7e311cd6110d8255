"""FastAPI dependencies: what a route needs, injected with ``Annotated[..., Depends(...)]``.

They are ``async`` (they only read ``app.state``): FastAPI awaits them on the event loop
instead of sending each one to the thread pool, which matters on the hot GET route.
"""

from __future__ import annotations

import secrets
from typing import Annotated

from fastapi import Depends, Header, HTTPException, Request

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


def read_refusal(settings: Settings, given: str | None, reveals_history: bool) -> str | None:
    """Why a read of a user's data is refused, or None when it is allowed.

    With ``read_api_key`` set, every such read needs a key; without it, a read that reveals
    the user's history (their seen items, the reasons naming them) needs one whenever the
    write key ``api_key`` is set. Either key is accepted.

    >>> from pydantic import SecretStr
    >>> open_reads = Settings(_env_file=None, api_key=SecretStr("w"))
    >>> read_refusal(open_reads, None, False) is None, read_refusal(open_reads, "w", True) is None
    (True, True)
    >>> read_refusal(open_reads, None, True)
    "missing X-API-Key: this read shows a user's data"
    """
    keys = [key.get_secret_value().encode() for key in (settings.read_api_key, settings.api_key) if key is not None]
    if settings.read_api_key is None and not (reveals_history and keys):
        return None
    if given is not None and any(secrets.compare_digest(given.encode(), key) for key in keys):
        return None
    return "missing X-API-Key: this read shows a user's data" if given is None else "wrong X-API-Key"


async def require_read_key(settings: SettingsDep, x_api_key: Annotated[str | None, Header()] = None) -> None:
    """For routes that show a user's history (the dashboard's user panel)."""
    refusal = read_refusal(settings, x_api_key, reveals_history=True)
    if refusal is not None:
        raise HTTPException(status_code=401, detail=refusal)


ReadAllowed = Depends(require_read_key)
