"""The Docker Compose file: validated by Compose itself where a Compose CLI is installed."""

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

COMPOSE_FILE = Path(__file__).parent.parent / "docker-compose.yml"
KAFKA_CHECKPOINTS_FILE = COMPOSE_FILE.with_name("docker-compose.kafka-checkpoints.yml")


def compose_cli() -> list[str] | None:
    if shutil.which("docker") and subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0:
        return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    return None


def test_compose_file_is_accepted_by_compose():
    cli = compose_cli()
    if cli is None:
        pytest.skip("no Docker Compose CLI installed (.ci/run installs Debian's docker-compose)")
    result = subprocess.run([*cli, "-f", str(COMPOSE_FILE), "config", "-q"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_every_service_has_a_healthcheck_or_waits_for_healthy_ones():
    services = yaml.safe_load(COMPOSE_FILE.read_text())["services"]
    assert {"kafka", "redis", "worker", "api"} <= services.keys()
    for name in ("kafka", "redis", "api"):
        assert "healthcheck" in services[name], name
    for name in ("worker", "api"):
        conditions = {dep: spec["condition"] for dep, spec in services[name]["depends_on"].items()}
        assert conditions == {"kafka": "service_healthy", "redis": "service_healthy"}


def test_the_kafka_checkpoints_variant_drops_the_shared_worker_volume():
    base = yaml.safe_load(COMPOSE_FILE.read_text())["services"]["worker"]
    variant = yaml.safe_load(KAFKA_CHECKPOINTS_FILE.read_text())["services"]["worker"]
    assert variant["environment"]["STREAMREC_CHECKPOINT_STORE"] == "kafka"
    # Compose merges mounts by their path in the container: the variant's replaces the shared one
    shared_target = next(v.split(":")[1] for v in base["volumes"] if v.startswith("worker-state:"))
    assert variant["volumes"] == [shared_target]
    cli = compose_cli()
    if cli is None:
        pytest.skip("no Docker Compose CLI installed to merge the files")
    result = subprocess.run([*cli, "-f", str(COMPOSE_FILE), "-f", str(KAFKA_CHECKPOINTS_FILE), "config"],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    merged = yaml.safe_load(result.stdout)["services"]["worker"]
    assert all("worker-state" not in str(volume) for volume in merged["volumes"]), merged["volumes"]
    assert merged["environment"]["STREAMREC_CHECKPOINT_STORE"] == "kafka"
