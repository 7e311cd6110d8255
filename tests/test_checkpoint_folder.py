"""CheckpointFolder's file format and checksum (pure unit tests: a temporary folder, no services)."""

from __future__ import annotations

import hashlib
import logging
import pickle

import numpy as np

from stream.checkpoint import MAGIC, CheckpointFolder


def _state(seed: int) -> dict:
    rng = np.random.default_rng(seed)
    # a big array (pickled out of the frames) and many small objects (pickled in frames)
    return {"table": rng.standard_normal((500, 64), dtype=np.float32),
            "users": {f"u{i}": (i, float(i) / 3) for i in range(5_000)}, "offsets": {0: seed}}


def test_a_saved_file_is_magic_checksum_then_summary_then_state(tmp_path) -> None:
    folder = CheckpointFolder(tmp_path)
    state = _state(1)
    folder.save(state, summary={"partitions": {0: 1}})
    [path] = tmp_path.glob("checkpoint-*.bin")
    data = path.read_bytes()
    assert data.startswith(MAGIC)
    rest = data[len(MAGIC) + 32:]
    assert data[len(MAGIC):len(MAGIC) + 32] == hashlib.sha256(rest).digest()
    head = int.from_bytes(rest[:8], "big")
    assert pickle.loads(rest[8:8 + head]) == {"partitions": {0: 1}}
    loaded = pickle.loads(rest[8 + head:])
    assert np.array_equal(loaded["table"], state["table"]) and loaded["users"] == state["users"]
    assert folder.summary() == {"partitions": {0: 1}}
    assert not list(tmp_path.glob("*.tmp"))


def test_a_corrupt_state_byte_is_caught_and_the_checkpoint_before_is_loaded(tmp_path, caplog) -> None:
    folder = CheckpointFolder(tmp_path)
    folder.save(_state(1), summary={})
    folder.save(_state(2), summary={})
    newest = max(tmp_path.glob("checkpoint-*.bin"))
    data = bytearray(newest.read_bytes())
    data[len(data) // 2] ^= 0xFF  # inside the state, far past the header
    newest.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING, logger="streamrec.checkpoint"):
        loaded = folder.load()
    assert "checksum mismatch" in caplog.text
    assert loaded["offsets"] == {0: 1} and np.array_equal(loaded["table"], _state(1)["table"])
