"""Events through real Kafka, a real worker and real Redis, read back through the HTTP API."""

from __future__ import annotations

import random
import time

import orjson
import pytest
from fastapi.testclient import TestClient

from core.kafka import EventProducer
from core.schema import Event
from serving.app import create_app
from tests.helpers import read_topic, running_worker, served, store_of, wait_for

pytestmark = pytest.mark.integration

GROUP_A = [f"a{i}" for i in range(6)]
GROUP_B = [f"b{i}" for i in range(6)]


def planted_stream(n_users: int = 40, per_user: int = 5, seed: int = 7) -> list[Event]:
    """Users who each stay inside one of two disjoint item groups."""
    rng = random.Random(seed)
    events = []
    for u in range(n_users):
        group = GROUP_A if u % 2 == 0 else GROUP_B
        for item in rng.sample(group, per_user):
            events.append(Event(user_id=f"user{u}", item_id=item, type="click", ts=time.time(), event_id=f"e{len(events)}"))
    return events


def test_events_become_live_recommendations(settings):
    history = planted_stream()
    probe = [Event(user_id="probe", item_id=i, type="view", ts=time.time(), event_id=f"p{i}") for i in ("a0", "a1")]
    with TestClient(create_app(settings)) as api, running_worker(settings) as worker:
        started = time.monotonic()
        with EventProducer(settings.kafka_bootstrap, settings.topic) as producer:
            producer.send_many(history + probe)

        def probe_list():
            body = api.get("/users/probe/recommendations", params={"k": 4}).json()
            return body if body["source"] == "personal" and worker.totals.applied == len(history) + 2 else None

        body = wait_for(probe_list, 60, "the probe user's personal list")
        waited = time.monotonic() - started
        items = [entry["item_id"] for entry in body["items"]]
        assert body["model"] == settings.model and body["updated_at"] > 0
        assert not {"a0", "a1"} & set(items), "already-seen items must be excluded"
        assert set(items) <= set(GROUP_A), f"co-occurring items first, got {items}"
        assert worker.totals.consumed == worker.totals.applied == len(history) + 2

        newcomer = api.get("/users/newcomer/recommendations").json()
        assert newcomer["source"] == "popular" and len(newcomer["items"]) == 10
        assert api.get("/readyz").json() == {"ready": True, "redis": True, "kafka": True}
    print(f"\n{len(history) + 2} events, first personal list after {waited:.2f} s")


def test_bad_input_goes_to_the_dead_letter_topic(settings):
    good = [Event(user_id=f"u{i % 5}", item_id=f"i{i % 7}", type="view", ts=time.time(), event_id=f"g{i}")
            for i in range(50)]
    bad = {
        b"{not json": "not valid JSON",
        orjson.dumps({"user_id": "u1", "type": "click"}): "missing field 'item_id'",
        orjson.dumps({"user_id": "u1", "item_id": "i1", "type": "like"}): "unknown event type",
        orjson.dumps({"user_id": 1.5, "item_id": "i1", "type": "click"}): "'user_id' must be a string",
        orjson.dumps({"user_id": "", "item_id": "i1", "type": "click"}): "'user_id' is empty",
        orjson.dumps({"user_id": "u" * 300, "item_id": "i1", "type": "click"}): "longer than 256",
        orjson.dumps({"user_id": "u1", "item_id": "i1", "type": "click", "pad": "x" * 70_000}): "byte limit",
    }
    with running_worker(settings) as worker, EventProducer(settings.kafka_bootstrap, settings.topic) as producer:
        bad_payloads = list(bad)
        for i, event in enumerate(good):
            producer.send(event)
            if i % 7 == 0 and bad_payloads:
                producer.send_raw(bad_payloads.pop())
        producer.flush()
        total = len(good) + len(bad)
        wait_for(lambda: worker.totals.consumed == total, 60, f"{total} records consumed")

        dead = read_topic(settings.kafka_bootstrap, settings.dlq_topic, len(bad))
        assert len(dead) == len(bad)
        for record in dead:
            reason = dict(record.headers)["reason"].decode()
            assert bad[record.value] in reason
            assert dict(record.headers)["source"].decode().startswith(settings.topic + "/")

        # the worker keeps going after bad input
        producer.send(Event(user_id="late", item_id="i1", type="click", ts=time.time(), event_id="late"))
        producer.flush()
        wait_for(lambda: served(worker) == len(good) + 1, 30, "the event after the bad ones")
        with TestClient(create_app(settings)) as api:
            assert api.get("/users/late/recommendations").status_code == 200
            scrape = api.get("/metrics").text
        assert f"streamrec_events_applied_total {len(good) + 1}.0" in scrape
        assert f"streamrec_events_dead_lettered_total {len(bad)}.0" in scrape
        assert "streamrec_consumer_lag 0.0" in scrape and "streamrec_workers 1.0" in scrape
        assert 'streamrec_freshness_seconds_bucket{le="+Inf"}' in scrape
        assert 'streamrec_request_seconds_count{method="GET",route="/users/{user_id}/recommendations"} 1.0' in scrape
        counters = store_of(worker.settings).counters()
        assert counters == {"consumed": total + 1, "applied": len(good) + 1, "dead_lettered": len(bad),
                            "deduplicated": 0}
        assert counters["consumed"] == counters["applied"] + counters["dead_lettered"]
