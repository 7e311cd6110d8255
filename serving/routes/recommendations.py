"""Live recommendations, read from Redis as the worker left them.

The route is on the hot path, so it stays lean: an ``async`` handler (no thread-pool hop per
request; the Redis GET is one sub-millisecond round trip on a local socket), the store and
the popular cache read from ``app.state`` rather than through sync dependencies (each of
which FastAPI would run in the thread pool), and the answer serialised once by orjson
rather than validated and dumped through pydantic. ``Recommendations`` still documents the
shape in the OpenAPI schema. While Redis is away the popular cache's breaker answers
without waiting on Redis, so a dead store cannot stall the event loop.
"""

from __future__ import annotations

from typing import Annotated, Literal

import orjson
from fastapi import APIRouter, HTTPException, Path, Query, Request, Response
from pydantic import BaseModel

from serving.store import PopularCache, RecommendationStore, StoredList
from stream.schema import MAX_ID_CHARS
from streamrec.errors import StoreUnavailable

router = APIRouter(tags=["recommendations"])

# printable characters only: the same rule the event schema applies to ids
ID_PATTERN = r"^[^\x00-\x1f\x7f]+$"
UserId = Annotated[str, Path(min_length=1, max_length=MAX_ID_CHARS, pattern=ID_PATTERN)]


class ScoredItem(BaseModel):
    item_id: str
    score: float


class Recommendations(BaseModel):
    user_id: str
    items: list[ScoredItem]
    model: str | None
    updated_at: float | None
    source: Literal["personal", "popular"]
    degraded: bool = False


@router.get(
    "/users/{user_id}/recommendations",
    summary="A user's live top-k",
    description="The user's list as the worker last wrote it; a user without history gets the "
    "current popular items, with `source` set to `popular`. While Redis is unavailable the "
    "answer is the last popular list this process saw, marked `degraded`.",
    response_model=Recommendations,
    responses={503: {"description": "the store is unavailable and no popular list is cached"}},
)
async def recommendations(
    user_id: UserId, request: Request, k: Annotated[int, Query(ge=1, le=1000)] = 10
) -> Response:
    store: RecommendationStore = request.app.state.store
    popular: PopularCache = request.app.state.popular_cache
    degraded = False
    try:
        fallback = popular.get()
        stored, source = store.user_list(user_id), "personal"
        if stored is None:
            stored, source = fallback, "popular"
    except StoreUnavailable as exc:
        if popular.last is None:
            raise HTTPException(status_code=503, detail=f"recommendations are unavailable: {exc}") from exc
        stored, source, degraded = popular.last, "popular", True
    return Response(_answer(user_id, stored, source, degraded, k), media_type="application/json")


def _answer(user_id: str, stored: StoredList | None, source: str, degraded: bool, k: int) -> bytes:
    if stored is None:
        return orjson.dumps({"user_id": user_id, "items": [], "model": None, "updated_at": None,
                             "source": "popular", "degraded": degraded})
    return orjson.dumps({
        "user_id": user_id,
        "items": [{"item_id": i, "score": s} for i, s in stored.items[:k]],
        "model": stored.model,
        "updated_at": stored.updated_at,
        "source": source,
        "degraded": degraded,
    })
