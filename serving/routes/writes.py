"""Write endpoints, for clients that cannot speak Kafka: events in, users forgotten.

Both publish to Kafka and answer 202 once the broker has acknowledged the record; the
worker applies them like any other. Each needs the ``X-API-Key`` from the settings.
"""

from __future__ import annotations

import secrets
from typing import Annotated

import orjson
from fastapi import APIRouter, Depends, Header, HTTPException, Request
from kafka.errors import KafkaError
from pydantic import BaseModel

from core.errors import InvalidEvent, StoreUnavailable
from core.kafka import EventProducer
from core.schema import event_json_schema, parse_event
from serving.deps import SettingsDep, StoreDep
from serving.routes.recommendations import UserId

router = APIRouter(tags=["writes"])
ACK_TIMEOUT_S = 10.0


def require_api_key(settings: SettingsDep, x_api_key: Annotated[str | None, Header()] = None) -> None:
    if settings.api_key is None:
        raise HTTPException(status_code=403, detail="writes are disabled: the server has no STREAMREC_API_KEY")
    if x_api_key is None or not secrets.compare_digest(x_api_key, settings.api_key.get_secret_value()):
        raise HTTPException(status_code=401, detail="missing or wrong X-API-Key header")


def get_producer(request: Request) -> EventProducer:
    """The process's producer (connected on first need: the API starts without Kafka)."""
    publisher = request.app.state.publisher
    producer = publisher.wait()
    if producer is None:
        raise HTTPException(status_code=503, detail=f"Kafka is unavailable: {publisher.last_error}")
    return producer


Producer = Annotated[EventProducer, Depends(get_producer)]
WriteAllowed = Depends(require_api_key)


class Accepted(BaseModel):
    event_id: str


class Forgetting(BaseModel):
    user_id: str
    status: str


def _acknowledged(future) -> None:
    try:
        future.get(timeout=ACK_TIMEOUT_S)
    except KafkaError as exc:
        raise HTTPException(status_code=503, detail=f"Kafka did not acknowledge: {exc}") from exc


@router.post(
    "/events", status_code=202, dependencies=[WriteAllowed], response_model=Accepted,
    summary="Publish one event",
    openapi_extra={"requestBody": {"required": True, "content": {"application/json": {
        "schema": event_json_schema()}}}},
    responses={401: {"description": "no or wrong API key"}, 403: {"description": "writes disabled"},
               422: {"description": "the event is invalid; `detail` says why"}},
)
async def publish_event(request: Request, producer: Producer, settings: SettingsDep) -> Accepted:
    body = await request.body()
    try:
        event = parse_event(body, max_bytes=settings.max_event_bytes)
    except InvalidEvent as exc:
        raise HTTPException(status_code=422, detail=exc.reason) from exc
    _acknowledged(producer.send(event))
    return Accepted(event_id=event.event_id)


@router.delete(
    "/users/{user_id}", status_code=202, dependencies=[WriteAllowed], response_model=Forgetting,
    summary="Forget a user (right to be forgotten)",
    description="Removes the user's list at once and tells the worker, through the control topic, "
    "to drop the user's vectors and history; later reads answer as for a new user.",
    responses={401: {"description": "no or wrong API key"}, 403: {"description": "writes disabled"}},
)
def forget_user(user_id: UserId, producer: Producer, store: StoreDep, settings: SettingsDep) -> Forgetting:
    command = orjson.dumps({"action": "forget_user", "user_id": user_id})
    _acknowledged(producer.send_raw(command, key=user_id.encode(), topic=settings.control_topic))
    try:
        store.delete_user(user_id)
    except StoreUnavailable:
        pass  # the worker deletes the list too when it applies the command
    return Forgetting(user_id=user_id, status="forgetting")
