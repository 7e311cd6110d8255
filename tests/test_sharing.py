"""The item-delta log: numbering, merging once, and a wire format that refuses pickle."""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
import pytest

from core.schema import Event
from core.settings import Settings
from online_models.cooc import Cooc
from online_models.trending import Trending
from stream.sharing import DeltaLog, decode, encode, headers, is_empty
from stream.worker import Worker
from tests.doubles import Nothing


def test_own_deltas_count_as_merged_and_peers_merge_once() -> None:
    log = DeltaLog("w0@1")
    source, seq, payload = log.make(b"delta")
    assert (source, seq, payload) == ("w0@1", 1, b"delta") and log.pending == (source, seq, payload)
    assert not log.take("w0@1", 1), "its own delta, read back from the topic, is not merged again"
    assert log.take("w1@5", 1) and log.take("w1@5", 2)
    assert not log.take("w1@5", 2) and not log.take("w1@5", 1), "a delta published again is merged once"


def test_a_restored_log_numbers_afresh_under_the_new_run() -> None:
    log = DeltaLog("w0@1")
    log.make(b"a")
    log.make(b"b")
    log.adopt("w0@2")
    assert log.make(b"c")[:2] == ("w0@2", 1)
    assert log.merged == {"w0@1": 2, "w0@2": 1}, "the previous run's deltas stay merged"


def test_the_wire_format_round_trips_and_refuses_pickle() -> None:
    parts = {"model": {"items": np.array(["a", "b"]), "gain": np.array([1.0, 2.5]), "t0": 3.0}, "empty": {}}
    decoded = decode(encode(parts))
    assert decoded["model"]["items"].tolist() == ["a", "b"] and decoded["model"]["t0"] == 3.0
    assert decoded["empty"] == {} and is_empty(decoded["empty"])
    buffer = io.BytesIO()
    np.savez(buffer, **{"model::x": np.array([object()], dtype=object)})
    with pytest.raises(ValueError):
        decode(buffer.getvalue())
    for junk in (b"not an npz", b"PK\x03\x04 cut short", buffer.getvalue()[:40]):
        with pytest.raises(ValueError):
            decode(junk)
    single = io.BytesIO()
    np.save(single, np.arange(3))
    with pytest.raises(ValueError):
        decode(single.getvalue())


@dataclass
class DeltaRecord:
    topic: str
    partition: int
    offset: int
    value: bytes
    headers: list
    key: bytes = b""


class RecordingProducer:
    def __init__(self) -> None:
        self.sent: list[dict] = []

    def send(self, topic, key=None, value=None, headers=None):
        self.sent.append({"topic": topic, "value": value, "headers": dict(headers or [])})

    def flush(self):
        pass


def test_the_worker_merges_a_peer_delta_once_and_dead_letters_a_bad_one(tmp_path) -> None:
    settings = Settings(_env_file=None, state_dir=tmp_path)
    dlq = RecordingProducer()
    worker = Worker(settings, model=Cooc(), consumer=Nothing(), dlq_producer=dlq, sink=Nothing())
    peer, peer_popularity = Cooc(), Trending()  # as a peer worker holds them: one popularity, learned first
    assert peer.use_popularity(peer_popularity)
    events = [Event(user_id="u", item_id=i, type="view", ts=1.0) for i in ("x", "y", "x")]
    peer_popularity.learn_many(events)
    peer.learn_many(events)
    payload = encode({"model": peer.item_delta(), "popularity": peer_popularity.item_delta(),
                      "worker": {"item_ids": np.array(["x", "y"]), "item_ts": np.array([1.0, 1.0]),
                                 "metadata_ids": np.array(["x"]), "metadata_json": np.array(['{"title": "X"}']),
                                 "first_learned_at": 0.0}})
    good = DeltaRecord(settings.item_deltas_topic, 0, 0, payload, headers(source="peer@1", seq=1))
    worker.sharing.merge([good])
    assert worker.model.recommend("new-user", 2) == peer.recommend("new-user", 2)
    assert set(worker.pipeline.item_last_active) == {"x", "y"} and worker.metrics.deltas_merged == 1

    again = DeltaRecord(settings.item_deltas_topic, 0, 1, payload, headers(source="peer@1", seq=1))
    bad = DeltaRecord(settings.item_deltas_topic, 1, 0, b"garbage", headers(source="peer@1", seq=2))
    merged, rejects = worker.sharing.merge([again, bad])
    assert merged == 0
    assert worker.model.recommend("new-user", 2) == peer.recommend("new-user", 2), "published twice, merged once"
    assert [reject.record for reject in rejects] == [bad] and rejects[0].reason.startswith("bad item delta")
    assert worker.pipeline.control_offsets[settings.item_deltas_topic] == {0: 2, 1: 1}
