"""A Redis Cluster behind the store, the worker and the API (``redis+cluster://`` URLs).

The cluster is ``STREAMREC_REDIS_CLUSTER_URL`` when set, else three local ``redis-server``
primaries formed into one cluster by ``redis-cli --cluster create``.
"""

from __future__ import annotations

import os
import time

import pytest
from fastapi.testclient import TestClient

from core.kafka import EventProducer
from core.keys import make_client
from core.schema import Event
from online_models.cooc import Cooc
from serving.app import create_app
from serving.store import RecommendationStore
from stream.sink import ListSink
from streamrec.services import LocalRedisCluster
from tests.helpers import running_worker, served, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.scale]


@pytest.fixture(scope="module")
def cluster_url(tmp_path_factory):
    if os.environ.get("STREAMREC_REDIS_CLUSTER_URL"):
        yield os.environ["STREAMREC_REDIS_CLUSTER_URL"]
        return
    cluster = LocalRedisCluster(tmp_path_factory.mktemp("redis-cluster"))
    try:
        yield cluster.start()
    finally:
        cluster.stop()


def test_lists_spread_over_the_shards_and_read_back(cluster_url, settings):
    client = make_client(cluster_url, retries=2)
    store = RecommendationStore(client, settings.redis_prefix)
    lists = {f"user {n}/ü": [(f"i{n}", 1.0), ("shared", 0.5)] for n in range(300)}
    ListSink(client, settings.redis_prefix).write_batch(lists, "cooc", 5.0, popular=[("p", 2.0)], counters={"applied:0": 290, "applied:1": 10},
                      similar={"shared": [("i1", 0.25)]}, worker_metrics=("w1", {"lag": 3}),
                      history={f"user {n}/ü": [(f"i{n}", "view", float(n))] for n in range(5)})

    for user, items in lists.items():
        assert store.user_list(user).items == items
    assert store.popular_list().items == [("p", 2.0)]
    assert store.similar_list("shared").items == [("i1", 0.25)]
    assert store.history("user 3/ü") == [("i3", "view", 3.0)] and store.history("user 9/ü") == []
    assert store.counters() == {"applied": 300}
    assert store.workers_metrics() == [{"lag": 3, "worker": "w1", "model": "cooc", "reported_at": 5.0}]
    shards = [client.get_redis_connection(node).dbsize() for node in client.get_primaries()]
    assert len(shards) >= 2 and sum(n > 0 for n in shards) >= 2, shards

    store.delete_user("user 7/ü")
    assert store.user_list("user 7/ü") is None
    assert client.ttl(store.user_key("user 8/ü")) > 0
    store.close()


def test_worker_and_api_on_a_cluster(cluster_url, settings):
    settings = settings.model_copy(update={"redis_url": cluster_url})
    events = [Event(user_id=f"u{n}", item_id=item, type="click", ts=time.time(), event_id=f"e{n}{item}")
              for n in range(40) for item in (["a", "b"] if n % 2 else ["c", "d"])]
    probe = Event(user_id="probe", item_id="a", type="view", ts=time.time(), event_id="probe")
    with TestClient(create_app(settings)) as api, running_worker(settings, model=Cooc()) as worker:
        with EventProducer(settings.kafka_bootstrap, settings.topic) as producer:
            producer.send_many([*events, probe])
        wait_for(lambda: served(worker) == len(events) + 1, 60, "every event applied and written")
        body = api.get("/users/probe/recommendations", params={"k": 1}).json()
        assert body["source"] == "personal" and body["items"][0]["item_id"] == "b"
        assert api.get("/users/u3/recommendations").json()["source"] == "personal"
        assert api.get("/readyz").json()["redis"] is True
