"""Live recommendations, read from Redis as the worker left them.

The route is on the hot path, so it stays lean: an ``async`` handler (no thread-pool hop per
request; the Redis GET is one sub-millisecond round trip on a local socket), async
dependencies for the store and the popular cache (awaited on the loop, not sent to the
thread pool as sync ones would be), and the answer serialised once by orjson
rather than validated and dumped through pydantic. ``Recommendations`` still documents the
shape in the OpenAPI schema. While Redis is away the popular cache's breaker answers
without waiting on Redis, so a dead store cannot stall the event loop.
"""

from __future__ import annotations

import time
import uuid
from typing import Annotated, Literal

import orjson
from fastapi import APIRouter, HTTPException, Path, Query, Request, Response
from pydantic import BaseModel, Field

from online_models.content import categories_of
from serving.deps import PopularCacheDep, StoreDep
from serving.store import StoredList
from stream.schema import MAX_ID_CHARS
from streamrec.errors import StoreUnavailable

router = APIRouter(tags=["recommendations"])

# printable characters only: the same rule the event schema applies to ids
ID_PATTERN = r"^[^\x00-\x1f\x7f]+$"
UserId = Annotated[str, Path(min_length=1, max_length=MAX_ID_CHARS, pattern=ID_PATTERN)]


class ScoredItem(BaseModel):
    item_id: str
    score: float
    strategy: str | None = Field(default=None, description="with explain=true: the strategy that chose the item")
    reason: str | None = Field(default=None, description="with explain=true: why, in words")


class Recommendations(BaseModel):
    user_id: str
    items: list[ScoredItem]
    model: str | None
    updated_at: float | None
    source: Literal["personal", "popular"]
    degraded: bool = False
    recomm_id: str = Field(description="names this answer; send it back as an event's context.recomm_id")


@router.get(
    "/users/{user_id}/recommendations",
    summary="A user's live top-k",
    description="The user's list as the worker last wrote it; a user without history gets the "
    "current popular items, with `source` set to `popular`. While Redis is unavailable the "
    "answer is the last popular list this process saw, marked `degraded`. Each answer has a "
    "`recomm_id`; the items served are published as an impression, so a click that sends the "
    "`recomm_id` back (`context.recomm_id`) is credited to the strategy that chose the item.",
    response_model=Recommendations,
    responses={503: {"description": "the store is unavailable and no popular list is cached"}},
)
async def recommendations(
    user_id: UserId,
    request: Request,
    store: StoreDep,
    popular: PopularCacheDep,
    k: Annotated[int, Query(ge=1, le=1000)] = 10,
    offset: Annotated[int, Query(ge=0, le=1000, description="skip this many items (pagination)")] = 0,
    category: Annotated[str | None, Query(min_length=1, max_length=MAX_ID_CHARS, pattern=ID_PATTERN,
                                          description="only items of this category")] = None,
    explain: Annotated[bool, Query(description="add each item's strategy and reason")] = False,
    exclude_seen: Annotated[bool, Query(description="leave out items the user already interacted with "
                                                    "(through the event types in STREAMREC_SEEN_TYPES)")] = True,
) -> Response:
    degraded = False
    try:
        fallback = popular.get()
        stored, source = store.user_list(user_id), "personal"
        if stored is None:
            stored, source = fallback, "popular"
        # without a category filter only the page is needed: build no more entries than that
        entries = _entries(stored, exclude_seen, None if category is not None else offset + k)
        if category is not None:
            metadata = store.item_metadata([e["item_id"] for e in entries])
            entries = [e for e, m in zip(entries, metadata) if m is not None and category in categories_of(m)]
    except StoreUnavailable as exc:
        if popular.last is None:
            raise HTTPException(status_code=503, detail=f"recommendations are unavailable: {exc}") from exc
        stored, source, degraded = popular.last, "popular", True
        entries = [] if category is not None else _entries(stored, exclude_seen, offset + k)  # no metadata
    page = entries[offset : offset + k]
    recomm_id = uuid.uuid4().hex
    _publish_impression(request, recomm_id, user_id, page, offset)
    if not explain:
        page = [{"item_id": e["item_id"], "score": e["score"]} for e in page]
    answer = {
        "user_id": user_id,
        "items": page,
        "model": stored.model if stored else None,
        "updated_at": stored.updated_at if stored else None,
        "source": source,
        "degraded": degraded,
        "recomm_id": recomm_id,
    }
    return Response(orjson.dumps(answer), media_type="application/json")


def _entries(stored: StoredList | None, exclude_seen: bool, limit: int | None = None) -> list[dict]:
    """The stored list as entries, without the user's seen items if asked; at most ``limit``."""
    if stored is None:
        return []
    items, explained = stored.items, stored.explained or [(stored.model, None)] * len(stored.items)
    if exclude_seen and stored.seen:
        kept = [n for n, is_seen in enumerate(stored.seen) if not is_seen]
        items, explained = [items[n] for n in kept], [explained[n] for n in kept]
    return [{"item_id": i, "score": s, "strategy": x, "reason": r}
            for (i, s), (x, r) in zip(items[:limit], explained[:limit])]


def _publish_impression(request: Request, recomm_id: str, user_id: str, page: list[dict], offset: int) -> None:
    """What was shown, to the impressions topic (keyed by user); skipped while Kafka is away."""
    settings = request.app.state.settings
    producer = request.app.state.publisher.nowait() if page and settings.publish_impressions else None
    if producer is None:
        return
    impression = {
        "recomm_id": recomm_id, "user_id": user_id, "ts": time.time(),
        "items": [{"item_id": e["item_id"], "position": offset + n, "strategy": e["strategy"]}
                  for n, e in enumerate(page)],
    }
    producer.send_raw(orjson.dumps(impression), key=user_id.encode(), topic=settings.impressions_topic)
