"""Impressions leave the request path but not the topic: each answer's impression arrives,
in the format the worker reads (a JSON array per batch); without Kafka they are dropped, never waited on."""

from __future__ import annotations

import asyncio

import orjson
import pytest
import redis
from fastapi.testclient import TestClient
from kafka.errors import KafkaTimeoutError

from core.kafka import ensure_topics
from core.keys import encode_list
from serving.app import create_app
from serving.publisher import ImpressionQueue
from serving.store import RecommendationStore
from tests.helpers import read_topic


@pytest.mark.integration
def test_each_answer_is_published_as_before(settings):
    ensure_topics(settings.kafka_bootstrap, {settings.impressions_topic: 1})
    client = redis.Redis.from_url(settings.redis_url)
    store = RecommendationStore(client, settings.redis_prefix)
    explained = [("cooc", None), ("new-items", "new this week"), ("cooc", "liked “x”")]
    store.client.set(store.user_key("ü"), encode_list([("a", 0.9), ("b", 0.5), ("c", 0.1)], "agent", 1.0,
                                                      explained, [False, True, False]))
    with TestClient(create_app(settings)) as api:
        answers = [api.get("/users/ü/recommendations", params={"k": 1, "offset": 1}).json(),
                   api.get("/users/ü/recommendations", params={"exclude_seen": "false"}).json(),
                   api.get("/users/nobody/recommendations").json()]  # nothing served: nothing published
    # one record per batch of answers: both may share one, or not
    records = read_topic(settings.kafka_bootstrap, settings.impressions_topic, 2, timeout_s=5, allow_fewer=True)
    published = {i["recomm_id"]: i for r in records for i in orjson.loads(r.value)}
    assert len(published) == 2 and answers[2]["recomm_id"] not in published
    first = published[answers[0]["recomm_id"]]
    assert first["user_id"] == "ü" and first["ts"] > 0
    assert first["items"] == [{"item_id": "c", "position": 1, "strategy": "cooc"}]
    second = published[answers[1]["recomm_id"]]
    assert second["items"] == [{"item_id": i, "position": n, "strategy": x}
                               for n, (i, x) in enumerate([("a", "cooc"), ("b", "new-items"), ("c", "cooc")])]
    client.close()


class _FailingProducer:
    def __init__(self):
        self.calls = 0

    def partitions_for(self, topic):
        return {0, 1, 2}

    def send(self, topic, value=None, key=None, partition=None):
        self.calls += 1
        raise KafkaTimeoutError("buffer full")


class _Publisher:
    last_error = None

    def __init__(self, producer):
        self.producer = producer

    def nowait(self):
        return self.producer

    def connected(self):
        return self.producer

    def close(self):
        pass


def test_a_failing_kafka_costs_one_try_then_a_pause():
    async def scenario():
        producer = _FailingProducer()
        queue = ImpressionQueue("", "t.impressions", interval_s=0.001, pause_s=60,
                                publisher=_Publisher(producer))
        page = [{"item_id": "a", "strategy": "cooc"}]
        for n in range(5):
            queue.put(f"r{n}", "u", 0, page)
        await asyncio.sleep(0.05)
        assert producer.calls == 1 and queue.dropped == 5 and queue.sent == 0
        for n in range(3):
            queue.put(f"s{n}", "u", 0, page)
        await asyncio.sleep(0.05)
        assert producer.calls == 1 and queue.dropped == 8  # paused: Kafka is not asked again

    asyncio.run(scenario())


def test_impressions_wait_for_the_producer_but_not_without_bound():
    async def scenario():
        queue = ImpressionQueue("", "t.impressions", interval_s=0.001, max_queued=3, publisher=_Publisher(None))
        for n in range(5):
            queue.put(f"r{n}", "u", 0, [{"item_id": "a", "strategy": "cooc"}])
        await asyncio.sleep(0.02)
        assert len(queue._queue) == 3 and queue.dropped == 2

    asyncio.run(scenario())


@pytest.mark.integration
def test_metrics_count_impressions(settings):
    with TestClient(create_app(settings)) as api:
        text = api.get("/metrics").text
    assert "streamrec_impressions_sent_total 0.0" in text and "streamrec_impressions_dropped_total 0.0" in text


def test_the_worker_reads_arrays_and_single_impressions(tmp_path):
    from core.settings import Settings
    from stream.pipeline import Record
    from stream.worker import Worker
    from tests.doubles import Nothing

    settings = Settings(_env_file=None, state_dir=tmp_path, topic="t")
    worker = Worker(settings, consumer=Nothing(), dlq_producer=Nothing(), sink=Nothing())
    item = {"item_id": "a", "position": 0, "strategy": "cooc"}
    values = [orjson.dumps([{"recomm_id": "r1", "items": [item]}, {"recomm_id": "r2", "items": []}]),
              orjson.dumps({"recomm_id": "r3", "items": [item]}),  # one impression per record, as before
              b"not json"]
    worker.pipeline.remember_impressions([Record(settings.impressions_topic, 0, n, 0, b"", v) for n, v in enumerate(values)])
    assert worker.pipeline.impressions == {"r1": {"a": ("cooc", 0)}, "r2": {}, "r3": {"a": ("cooc", 0)}}
    assert worker.pipeline.control_offsets[settings.impressions_topic] == {0: 3}
