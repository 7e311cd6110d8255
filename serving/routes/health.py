"""Liveness and readiness probes."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from core.kafka import kafka_reachable
from serving.deps import SettingsDep, StoreDep

router = APIRouter(tags=["health"])


@router.get("/healthz", summary="The process is up")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", summary="Kafka and Redis are reachable", responses={503: {"description": "not ready"}})
def readyz(settings: SettingsDep, store: StoreDep) -> JSONResponse:
    checks = {"redis": store.ping(), "kafka": kafka_reachable(settings.kafka_bootstrap)}
    ready = all(checks.values())
    return JSONResponse({"ready": ready, **checks}, status_code=200 if ready else 503)
