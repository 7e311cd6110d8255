"""Live recommendations, read from Redis as the worker left them."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, HTTPException, Path, Query
from pydantic import BaseModel

from serving.deps import PopularCacheDep, StoreDep
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
    responses={503: {"description": "the store is unavailable and no popular list is cached"}},
)
def recommendations(
    user_id: UserId, store: StoreDep, popular: PopularCacheDep, k: Annotated[int, Query(ge=1, le=1000)] = 10
) -> Recommendations:
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
    if stored is None:
        return Recommendations(user_id=user_id, items=[], model=None, updated_at=None, source="popular")
    return Recommendations(
        user_id=user_id,
        items=[ScoredItem(item_id=i, score=s) for i, s in stored.items[:k]],
        model=stored.model,
        updated_at=stored.updated_at,
        source=source,
        degraded=degraded,
    )
