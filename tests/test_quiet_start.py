"""``streamrec up`` (what ``make run`` runs) prints no ERROR lines on a normal start: the
clients wait for the broker it started to answer before connecting."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from streamrec.services import free_port
from core.settings import Settings

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parent.parent


def test_up_starts_without_error_lines(tmp_path):
    libs = (REPO / Settings(_env_file=None).state_dir / "kafka" / "libs").resolve()
    if not any(libs.glob("kafka_2.13-*.jar")):
        pytest.skip(f"no Kafka jars in {libs} (make install collects them)")
    (tmp_path / ".streamrec" / "kafka").mkdir(parents=True)
    (tmp_path / ".streamrec" / "kafka" / "libs").symlink_to(libs)
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMREC_")}
    env.update(PYTHONPATH=str(REPO), STREAMREC_API_PORT=str(free_port()), STREAMREC_TOPIC="quiet-start")
    proc = subprocess.Popen([sys.executable, "-m", "streamrec", "up"], cwd=tmp_path, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    stderr: list[str] = []
    reader = threading.Thread(target=lambda: stderr.extend(proc.stderr), daemon=True)
    reader.start()
    up = False
    try:
        deadline = time.monotonic() + 180
        for line in proc.stdout:
            if "streamrec is up" in line:
                up = True
                break
            if time.monotonic() > deadline:
                break
        time.sleep(0)  # let the reader catch up with what was printed before "up"
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        reader.join(timeout=10)
    log = "".join(stderr)
    assert up, f"streamrec up did not come up:\n{log[-3000:]}"
    errors = [line for line in log.splitlines() if " ERROR " in line or "ECONNREFUSED" in line]
    assert not errors, "\n".join(errors[:20])
