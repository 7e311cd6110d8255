"""``streamrec services start|stop|status``: the local Kafka broker and Redis server."""

from __future__ import annotations

import argparse
import os

from core.settings import SERVICES_ENV_FILE, Settings
from streamrec.commands.registry import command


def _arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", choices=["start", "stop", "status"])


def start_services(settings: Settings) -> tuple[dict[str, str], list]:
    """Start local Kafka and Redis unless the environment names existing ones.

    Returns the ``STREAMREC_*`` variables that point at the services (also recorded in
    ``.streamrec/services.env`` for later processes started from this folder), and the
    services this call started (not those found running).
    """
    from streamrec.services import LocalKafka, LocalRedis, write_env_file

    env, started = {}, []
    if "STREAMREC_REDIS_URL" not in os.environ:
        redis = LocalRedis(settings.state_dir)
        started += [] if redis.running_port() else [redis]
        env["STREAMREC_REDIS_URL"] = redis.start()
    if "STREAMREC_KAFKA_BOOTSTRAP" not in os.environ:
        kafka = LocalKafka(settings.state_dir)
        started += [] if kafka.running_port() else [kafka]
        env["STREAMREC_KAFKA_BOOTSTRAP"] = kafka.start(partitions=settings.topic_partitions)
    if env:
        write_env_file(SERVICES_ENV_FILE, env)
    return env, started


def stop_services(settings: Settings) -> None:
    from streamrec.services import LocalKafka, LocalRedis

    for service in (LocalKafka(settings.state_dir), LocalRedis(settings.state_dir)):
        if service.stop():
            print(f"stopped {service.name}")
    SERVICES_ENV_FILE.unlink(missing_ok=True)


@command("services", "start, stop or show the local Kafka broker and Redis server", _arguments)
def services(args: argparse.Namespace) -> int:
    from streamrec.services import LocalKafka, LocalRedis

    settings = Settings()
    if args.action == "start":
        for key, value in start_services(settings)[0].items():
            print(f"export {key}={value}")
    elif args.action == "stop":
        stop_services(settings)
    else:
        down = 0
        for service in (LocalKafka(settings.state_dir), LocalRedis(settings.state_dir)):
            port = service.running_port()
            print(f"{service.name}: {'running on port ' + str(port) if port else 'stopped'}")
            down += port is None
        return 1 if down else 0
    return 0
