"""The serving baseline: a bare FastAPI endpoint that returns one Redis key as it is.

Same framework, same server, same Redis client and the same route style as
``serving.routes.recommendations`` (an ``async`` handler calling the sync client); no
validation, no decoding, no popular fallback, no response model. Run with
``uvicorn --factory bench.bare_app:create_app``.
"""

from __future__ import annotations

from fastapi import FastAPI, Response

from core.keys import make_client
from core.settings import Settings
from serving.store import RecommendationStore


def create_app() -> FastAPI:
    settings = Settings()
    client = make_client(settings.redis_url, retries=2, socket_timeout_s=0.5)
    store = RecommendationStore(client, settings.redis_prefix)  # only for its key layout
    app = FastAPI()

    @app.get("/bare/{user_id}")
    async def bare(user_id: str) -> Response:
        return Response(client.get(store.user_key(user_id)), media_type="application/json")

    return app
