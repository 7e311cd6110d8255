"""The FastAPI app: a thin layer over the Redis store.

Run it with ``streamrec api`` (or ``uvicorn --factory serving.app:create_app``).
"""

from __future__ import annotations

from contextlib import asynccontextmanager

from fastapi import FastAPI

from serving.metrics import PipelineCollector, RequestTimer, make_registry
from serving.routes import health, items, metrics, recommendations, writes
from serving.publisher import ImpressionQueue, Publisher
from serving.store import PopularCache, RecommendationStore, make_client
from streamrec import __version__
from streamrec.settings import Settings


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
            settings.user_list_ttl_s,
            cooldown_s=1.0,
        )
        app.state.popular_cache = PopularCache(app.state.store)
        app.state.publisher = Publisher(settings.kafka_bootstrap, settings.topic)
        # impressions: their own producer, lingering so that many answers share a produce request
        # (20 ms: longer batches are bursts of pure-Python CRC that a waiting request sits behind),
        # never blocking the event loop for long when Kafka is away
        app.state.impressions = (
            ImpressionQueue(Publisher(settings.kafka_bootstrap, settings.impressions_topic, linger_ms=20,
                                      max_block_ms=200), settings.impressions_topic)
            if settings.publish_impressions else None
        )
        pipeline_metrics = PipelineCollector(app.state.store)
        registry.register(pipeline_metrics)
        yield
        registry.unregister(pipeline_metrics)
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
    return app
