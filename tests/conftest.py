"""Fixtures that give tests real Kafka and Redis.

Where the services come from, in order:
1. ``STREAMREC_KAFKA_BOOTSTRAP`` / ``STREAMREC_REDIS_URL`` name running ones (CI starts them);
2. else, when a Docker engine answers, testcontainers starts ``apache/kafka`` and ``redis``;
3. else the local launcher starts the official Kafka jars and Debian's ``redis-server``.
Every test gets its own topic, consumer group and Redis key prefix, so tests never share state.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import pytest

from core.settings import Settings

KAFKA_IMAGE = "apache/kafka:4.1.1"
REDIS_IMAGE = "redis:7.2"


@dataclass(frozen=True)
class Services:
    kafka_bootstrap: str
    redis_url: str
    origin: str


def _docker_answers() -> bool:
    try:
        import docker

        docker.from_env(timeout=3).ping()
        return True
    except Exception:  # no engine, no socket, no permission: all mean "no Docker here"
        return False


def _from_testcontainers(stack: ExitStack) -> Services:
    from testcontainers.kafka import KafkaContainer
    from testcontainers.redis import RedisContainer

    kafka = stack.enter_context(KafkaContainer(KAFKA_IMAGE).with_kraft())
    redis = stack.enter_context(RedisContainer(REDIS_IMAGE))
    redis_url = f"redis://{redis.get_container_host_ip()}:{redis.get_exposed_port(6379)}/0"
    return Services(kafka.get_bootstrap_server(), redis_url, "testcontainers")


def _from_local(stack: ExitStack, state_dir: Path, kafka: str | None, redis: str | None) -> Services:
    from streamrec.services import LocalKafka, LocalRedis, free_port

    if redis is None:
        local_redis = LocalRedis(state_dir)
        redis = local_redis.start(port=free_port())  # any port: test runs may overlap
        stack.callback(local_redis.stop)
    if kafka is None:
        # the jars are shared with `streamrec services`; the broker's data is this session's own
        local_kafka = LocalKafka(state_dir, libs_dir=Settings(_env_file=None).state_dir / "kafka" / "libs")
        kafka = local_kafka.start(port=free_port())
        stack.callback(local_kafka.stop)
    return Services(kafka, redis, "local")


@pytest.fixture(scope="session")
def services(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Services]:
    kafka = os.environ.get("STREAMREC_KAFKA_BOOTSTRAP")
    redis = os.environ.get("STREAMREC_REDIS_URL")
    with ExitStack() as stack:
        if kafka and redis:
            yield Services(kafka, redis, "environment")
        elif kafka is None and redis is None and _docker_answers():
            yield _from_testcontainers(stack)
        else:
            yield _from_local(stack, tmp_path_factory.mktemp("services"), kafka, redis)


@pytest.fixture
def settings(services: Services, tmp_path: Path) -> Settings:
    """Settings pointing at the test services, with a topic, group and key prefix of this test's own."""
    run = uuid.uuid4().hex[:10]
    return Settings(
        _env_file=None,
        kafka_bootstrap=services.kafka_bootstrap,
        redis_url=services.redis_url,
        topic=f"test-{run}",
        group_id=f"group-{run}",
        redis_prefix=f"test:{run}",
        poll_timeout_ms=100,
        popular_refresh_s=0.0,
        state_dir=tmp_path / "state",
    )
