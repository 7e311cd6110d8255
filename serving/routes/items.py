"""Item-to-item: the items most like a given one, as the worker last computed them."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Path, Query
from pydantic import BaseModel

from core.errors import StoreUnavailable
from core.schema import MAX_ID_CHARS
from serving.deps import StoreDep
from serving.routes.recommendations import ID_PATTERN, ScoredItem

router = APIRouter(tags=["items"])
ItemId = Annotated[str, Path(min_length=1, max_length=MAX_ID_CHARS, pattern=ID_PATTERN)]


class SimilarItems(BaseModel):
    item_id: str
    items: list[ScoredItem]
    model: str
    updated_at: float


@router.get(
    "/items/{item_id}/similar", response_model=SimilarItems, summary="Items similar to an item",
    responses={404: {"description": "nothing is known of this item yet"}, 503: {"description": "store unavailable"}},
)
def similar_items(item_id: ItemId, store: StoreDep, k: Annotated[int, Query(ge=1, le=1000)] = 10) -> SimilarItems:
    try:
        stored = store.similar_list(item_id)
    except StoreUnavailable as exc:
        raise HTTPException(status_code=503, detail=f"similar items are unavailable: {exc}") from exc
    if stored is None:
        raise HTTPException(status_code=404, detail=f"no similar items known for item {item_id!r} yet")
    return SimilarItems(item_id=item_id, items=[ScoredItem(item_id=i, score=s) for i, s in stored.items[:k]],
                        model=stored.model, updated_at=stored.updated_at)
