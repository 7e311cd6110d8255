"""Live recommendations, read from Redis as the worker left them.

The route is the hot path, and it is written for it: an ``async`` handler (no thread-pool hop;
the Redis GET is one sub-millisecond round trip on a local socket) that takes only the
``Request``. FastAPI's per-parameter handling cost about 60 µs a request for these six
parameters, about as much as the rest of the request, so the handler checks them itself:
the user id with one regex search, the query with the pydantic model ``RecommendationQuery``,
whose result is cached per query string (clients send the same few). Invalid input gets the
same 422 answer FastAPI gave, and the OpenAPI document lists the parameters as before (built
from the same model). The answer is
serialised once by orjson rather than validated and dumped through pydantic;
``Recommendations`` documents its shape. The impression is queued for a background thread
(``serving.publisher.ImpressionQueue``) rather than sent to Kafka on the request path. While
Redis is away the popular cache's breaker answers without waiting on Redis, so a dead store
cannot stall the event loop.
"""

from __future__ import annotations

import os
import re
from typing import Annotated, Literal
from urllib.parse import parse_qsl

import orjson
from fastapi import FastAPI, HTTPException, Path, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from core.errors import StoreUnavailable
from core.keys import StoredList
from core.schema import MAX_ID_CHARS
from online_models.content import categories_of
from serving.deps import read_refusal

# printable characters only: the same rule the event schema applies to ids
ID_PATTERN = r"^[^\x00-\x1f\x7f]+$"
UserId = Annotated[str, Path(min_length=1, max_length=MAX_ID_CHARS, pattern=ID_PATTERN)]
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_USER_ID = TypeAdapter(Annotated[str, Field(min_length=1, max_length=MAX_ID_CHARS, pattern=ID_PATTERN)])


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


class RecommendationQuery(BaseModel):
    """The query parameters of ``GET /users/{user_id}/recommendations``."""

    model_config = ConfigDict(frozen=True)  # validated once per distinct query string, then shared
    k: int = Field(default=10, ge=1, le=1000)
    offset: int = Field(default=0, ge=0, le=1000, description="skip this many items (pagination)")
    category: str | None = Field(default=None, min_length=1, max_length=MAX_ID_CHARS, pattern=ID_PATTERN,
                                 description="only items of this category")
    explain: bool = Field(default=False, description="add each item's strategy and reason")
    exclude_seen: bool = Field(default=True, description="leave out items the user already interacted with "
                                                         "(through the event types in STREAMREC_SEEN_TYPES)")


def _openapi_parameters() -> list[dict]:
    """The path and query parameters, documented as FastAPI would from a typed signature."""
    user_id = _USER_ID.json_schema()
    params = [{"name": "user_id", "in": "path", "required": True, "schema": {**user_id, "title": "User Id"}}]
    for name, schema in RecommendationQuery.model_json_schema()["properties"].items():
        param = {"name": name, "in": "query", "required": False, "schema": schema}
        if "description" in schema:
            param["description"] = schema["description"]
        params.append(param)
    params.append({"name": "X-API-Key", "in": "header", "required": False, "schema": {"type": "string"},
                   "description": "the read key (STREAMREC_READ_API_KEY) or the write key"})
    return params


_VALIDATION_ERROR = {"description": "Validation Error", "content": {"application/json": {
    "schema": {"$ref": "#/components/schemas/HTTPValidationError"}}}}
_QUERIES: dict[bytes, RecommendationQuery] = {}
_MAX_CACHED_QUERIES = 1024


def _query(raw: bytes) -> RecommendationQuery | list[dict]:
    """The validated query, or FastAPI's errors for it."""
    query = _QUERIES.get(raw)
    if query is None:
        # like FastAPI: blank values kept, the last of a repeated parameter wins
        values = dict(parse_qsl(raw.decode("latin-1"), keep_blank_values=True))
        try:
            query = RecommendationQuery.model_validate(values)
        except ValidationError as exc:
            return _located(exc, "query")
        if len(_QUERIES) >= _MAX_CACHED_QUERIES:
            _QUERIES.clear()  # a client sending endless distinct queries only costs a re-validation
        _QUERIES[raw] = query
    return query


def _user_id_errors(user_id: str) -> list[dict]:
    """FastAPI's errors for the path parameter (none for a valid id: one regex search)."""
    if len(user_id) > MAX_ID_CHARS or _CONTROL.search(user_id):  # never empty: the route needs a segment
        try:
            _USER_ID.validate_python(user_id)
        except ValidationError as exc:
            return _located(exc, "path", "user_id")
    return []


def _located(exc: ValidationError, *where: str) -> list[dict]:
    return [{**e, "loc": (*where, *e["loc"])} for e in exc.errors(include_url=False)]


class _RequestRoute(APIRoute):
    """A route whose endpoint takes the ``Request`` and answers a ``Response`` itself.

    FastAPI's request handler (dependency solving, body reading, response validation; the
    route needs none of it) is about 30 µs a request in FastAPI 0.16x, as much as the rest of
    the answer. Overriding ``get_route_handler`` is FastAPI's own hook for custom routes; the
    route is still an ``APIRoute``, documented in the OpenAPI schema, and its exceptions go
    to the app's handlers as before.
    """

    def get_route_handler(self):
        return self.endpoint


def add_route(app: FastAPI) -> None:
    """Register the route on the app itself rather than through an included ``APIRouter``:
    FastAPI (0.16x) walks each included router on every request, about 20 µs a request here.
    Add it before the other routes."""
    app.router.add_api_route(
        "/users/{user_id}/recommendations",
        recommendations,
        methods=["GET"],
        route_class_override=_RequestRoute,
        tags=["recommendations"],
        summary="A user's live top-k",
        description="The user's list as the worker last wrote it; a user without history gets the "
        "current popular items, with `source` set to `popular`. While Redis is unavailable the "
        "answer is the last popular list this process saw, marked `degraded`. Each answer has a "
        "`recomm_id`; the items served are published as an impression, so a click that sends the "
        "`recomm_id` back (`context.recomm_id`) is credited to the strategy that chose the item. "
        "With `STREAMREC_READ_API_KEY` set, the `X-API-Key` header must carry it (or the write key); "
        "`explain=true` and `exclude_seen=false` reveal the user's history and need a key whenever "
        "either key is set.",
        response_model=Recommendations,
        responses={401: {"description": "a key is needed for this read (see above): none or a wrong one was sent"},
                   422: _VALIDATION_ERROR,
                   503: {"description": "the store is unavailable and no popular list is cached"}},
        openapi_extra={"parameters": _openapi_parameters()},
    )


async def recommendations(request: Request) -> Response:
    user_id = request.path_params["user_id"]
    query = _query(request.scope["query_string"])
    errors = _user_id_errors(user_id)
    if errors or type(query) is list:  # both reported together, path first, as FastAPI does
        raise RequestValidationError(errors + (query if type(query) is list else []))
    k, offset, category, exclude_seen = query.k, query.offset, query.category, query.exclude_seen
    state = request.app.state
    settings = state.settings
    if settings.read_api_key is not None or settings.api_key is not None:  # else reads are open: no header lookup
        refusal = read_refusal(settings, request.headers.get("x-api-key"), query.explain or not exclude_seen)
        if refusal is not None:
            raise HTTPException(status_code=401, detail=refusal)
    popular, degraded = state.popular_cache, False
    try:
        fallback = popular.get()
        # without a category filter only the page is needed: decode no more entries than that
        limit = None if category is not None else offset + k
        stored, source = state.store.user_list(user_id, unseen_only=exclude_seen, limit=limit), "personal"
        if stored is None:
            stored, source = fallback, "popular"
        entries = _entries(stored, exclude_seen, limit)
        if category is not None:
            metadata = state.store.item_metadata([e["item_id"] for e in entries])
            entries = [e for e, m in zip(entries, metadata) if m is not None and category in categories_of(m)]
    except StoreUnavailable as exc:
        if popular.last is None:
            raise HTTPException(status_code=503, detail=f"recommendations are unavailable: {exc}") from exc
        stored, source, degraded = popular.last, "popular", True
        entries = [] if category is not None else _entries(stored, exclude_seen, offset + k)  # no metadata
    page = entries[offset : offset + k]
    recomm_id = os.urandom(16).hex()  # as uuid4().hex, without building a UUID
    if page and state.impressions is not None:
        state.impressions.put(recomm_id, user_id, offset, page)
    if not query.explain:
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
