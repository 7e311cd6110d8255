"""The FastAPI app: a thin layer over the Redis store.

Run it with ``streamrec api`` (or ``uvicorn --factory serving.app:create_app``).
"""

from __future__ import annotations

from contextlib import asynccontextmanager

from fastapi import FastAPI

from core import __version__
from core.keys import make_client
from core.settings import Settings
from serving.metrics import (
    ImpressionCollector,
    PipelineCollector,
    RequestTimer,
    make_registry,
)
from serving.publisher import ImpressionQueue, Publisher
from serving.routes import dashboard, health, items, metrics, recommendations, writes
from serving.store import PopularCache, RecommendationStore


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        app.state.settings = settings
        # few retries and a cooldown: a request should fail fast rather than hang while Redis
        # is away (the recommendations route runs on the event loop)
        app.state.store = RecommendationStore(
            make_client(settings.redis_url, retries=2, socket_timeout_s=0.5),
            settings.redis_prefix,
            cooldown_s=1.0,
        )
        app.state.popular_cache = PopularCache(app.state.store)
        app.state.publisher = Publisher(settings.kafka_bootstrap, settings.topic)
        # impressions: sent after the answers, in batches, by a producer of their own
        app.state.impressions = (ImpressionQueue(settings.kafka_bootstrap, settings.impressions_topic)
                                 if settings.publish_impressions else None)
        collectors = [PipelineCollector(app.state.store)]
        if app.state.impressions is not None:
            collectors.append(ImpressionCollector(app.state.impressions))
        for collector in collectors:
            registry.register(collector)
        yield
        for collector in collectors:
            registry.unregister(collector)
        if app.state.impressions is not None:
            app.state.impressions.close()
        app.state.store.close()
        app.state.publisher.close()

    app = FastAPI(
        title="streamrec",
        version=__version__,
        description="Live recommendations, learned from every event.",
        lifespan=lifespan,
    )
    registry, request_seconds = make_registry()
    app.state.metrics_registry = registry
    app.add_middleware(RequestTimer, histogram=request_seconds)
    recommendations.add_route(app)  # first, and on the app itself (see there)
    app.include_router(health.router)
    app.include_router(metrics.router)
    app.include_router(items.router)
    app.include_router(writes.router)
    app.include_router(dashboard.router)
    return app
