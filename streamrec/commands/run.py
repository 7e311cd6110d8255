"""``streamrec worker``, ``streamrec api`` and ``streamrec up`` (everything, in the foreground)."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request

from core.errors import ServiceError
from core.settings import Settings
from streamrec.commands.registry import command


def _logging(verbose: bool = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("kafka").setLevel(logging.WARNING)


def _worker_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", help="model to serve (default: STREAMREC_MODEL)")
    p.add_argument("-v", "--verbose", action="store_true")


@command("worker", "consume events, update the model, write fresh lists to Redis", _worker_arguments)
def worker(args: argparse.Namespace) -> int:
    from stream.worker import Worker

    _logging(args.verbose)
    settings = Settings()
    if args.model:
        settings = settings.model_copy(update={"model": args.model})
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    w = Worker(settings)
    try:
        totals = w.run(stop)
    finally:
        w.close()
    logging.getLogger("streamrec.worker").info(
        "stopped: %d consumed, %d applied, %d dead-lettered", totals.consumed, totals.applied, totals.dead_lettered
    )
    return 0


def _api_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", help="bind address (default: STREAMREC_API_HOST)")
    p.add_argument("--port", type=int, help="port (default: STREAMREC_API_PORT)")


@command("api", "serve live recommendations over HTTP", _api_arguments)
def api(args: argparse.Namespace) -> int:
    import uvicorn

    settings = Settings()
    uvicorn.run("serving.app:create_app", factory=True, host=args.host or settings.api_host,
                port=args.port or settings.api_port, log_level="info", access_log=False)
    return 0


def _wait_http(url: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except OSError:
            time.sleep(0.2)
    raise ServiceError(f"{url} did not answer within {timeout_s:.0f} s")


@command("up", "start Kafka, Redis, the worker and the API in the foreground; Ctrl-C stops all")
def up(args: argparse.Namespace) -> int:
    from streamrec.commands.services import start_services

    _logging()
    settings = Settings()
    started = time.monotonic()
    env, started_services = start_services(settings)
    os.environ.update(env)
    settings = Settings()
    cli = [sys.executable, "-m", "streamrec"]
    children = [subprocess.Popen(cli + ["worker"]), subprocess.Popen(cli + ["api"])]
    base = f"http://{settings.api_host}:{settings.api_port}"
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        _wait_http(f"{base}/healthz", 60)
        print(
            f"\nstreamrec is up ({time.monotonic() - started:.1f} s)\n"
            f"  send events : streamrec publish --user u1 --item i9 --type click"
            f"   (Kafka {settings.kafka_bootstrap}, topic {settings.topic})\n"
            f"  get recs    : curl '{base}/users/u1/recommendations?k=10'\n"
            f"  dashboard   : {base}/dashboard\n"
            f"  API docs    : {base}/docs\n"
            f"Ctrl-C stops everything.\n",
            flush=True,
        )
        while not stop.is_set():
            if any(child.poll() is not None for child in children):
                return 1  # a child died on its own
            stop.wait(0.5)
        return 0
    finally:
        for child in children:
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        for child in children:
            try:
                child.wait(timeout=15)
            except subprocess.TimeoutExpired:
                child.kill()
        for service in started_services:
            service.stop()


@command("openapi", "print the API's OpenAPI document (for client generation and API fuzzing)")
def openapi(args: argparse.Namespace) -> int:
    import json

    from serving.app import create_app

    print(json.dumps(create_app().openapi(), indent=2))
    return 0
