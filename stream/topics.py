"""Topic administration and broker reachability."""

from __future__ import annotations

import socket

from kafka import KafkaAdminClient
from kafka.admin import NewTopic
from kafka.errors import TopicAlreadyExistsError


def ensure_topics(bootstrap: str, topics: dict[str, int], configs: dict[str, dict[str, str]] | None = None) -> None:
    """Create each topic (name -> partitions, with its ``configs``) unless it exists already."""
    configs = configs or {}
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10_000)
    try:
        existing = set(admin.list_topics())
        missing = [NewTopic(name, n, 1, topic_configs=configs.get(name, {}))
                   for name, n in topics.items() if name not in existing]
        if missing:
            try:
                admin.create_topics(missing)
            except TopicAlreadyExistsError:
                pass  # created by another process meanwhile
    finally:
        admin.close()


def kafka_reachable(bootstrap: str, timeout_s: float = 1.0) -> bool:
    """True when at least one bootstrap broker accepts a TCP connection."""
    for address in bootstrap.split(","):
        host, _, port = address.strip().rpartition(":")
        try:
            with socket.create_connection((host or "localhost", int(port)), timeout=timeout_s):
                return True
        except (OSError, ValueError):
            continue
    return False
