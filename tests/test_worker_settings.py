"""Settings the worker applies to its process (a pure unit test: Kafka and Redis stand-ins)."""

from __future__ import annotations

import torch

from core.settings import Settings
from stream.worker import Worker
from tests.doubles import Nothing


def test_the_worker_serves_the_blend_on_the_torch_threads_it_is_given(tmp_path, monkeypatch) -> None:
    monkeypatch.delenv("STREAMREC_MODEL", raising=False)
    before = torch.get_num_threads()
    try:
        worker = Worker(Settings(_env_file=None, state_dir=tmp_path, torch_threads=3),
                        consumer=Nothing(), dlq_producer=Nothing(), sink=Nothing())
        assert worker.model.name == "blend"  # the best on the backtests (README)
        assert torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(before)
