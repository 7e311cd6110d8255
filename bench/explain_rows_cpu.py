"""The explanations' own CPU on the ingest bench's stream, without Kafka or Redis: the
default model's pipeline (``bench.ingest_cpu``'s events and batches) with the process CPU
time spent in ``Blend.explain_rows`` and, within it, in ``TorchEmbeddings.explain_rows``,
and a digest of every batch's explanations (equal digests: the same reasons). Compare two
trees by running this file under each in turn (a script path, so that PYTHONPATH's tree
is the one imported; GC pauses land on either tree's calls, so run each a few times):

    PYTHONPATH=/work/main python bench/explain_rows_cpu.py; PYTHONPATH=$PWD python bench/explain_rows_cpu.py
"""

from __future__ import annotations

import argparse
import hashlib
import time

from bench.ingest_cpu import batches_of
from core.settings import Settings
from online_models import make_model
from online_models.blend import Blend
from online_models.embeddings import TorchEmbeddings
from stream.pipeline import Pipeline


def timed(cls: type, cpu: dict[str, float], key: str, digest=None) -> None:
    """Wrap ``cls.explain_rows`` to add its CPU time to ``cpu[key]`` (and its output to ``digest``)."""
    explain_rows = cls.explain_rows

    def wrapper(self, user_ids, rows, index):
        started = time.process_time()
        said = explain_rows(self, user_ids, rows, index)
        cpu[key] += time.process_time() - started
        if digest is not None:
            digest.update(repr(said).encode())
        return said

    cls.explain_rows = wrapper


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=20_000)
    args = parser.parse_args()
    cpu = {"blend": 0.0, "embeddings": 0.0}
    digest = hashlib.sha256()
    timed(Blend, cpu, "blend", digest)
    timed(TorchEmbeddings, cpu, "embeddings")
    settings = Settings(_env_file=None)
    batch = settings.max_poll_records
    pipeline = Pipeline(settings, make_model(settings.model, **settings.model_params))
    started = time.process_time()
    for records_of_batch in batches_of(args.events + batch, batch):
        pipeline.process(records_of_batch)
    total = time.process_time() - started
    print(f"pipeline {total:.2f} CPU-s, Blend.explain_rows {cpu['blend']:.3f} (TorchEmbeddings.explain_rows "
          f"{cpu['embeddings']:.3f}, the rest {cpu['blend'] - cpu['embeddings']:.3f}), digest {digest.hexdigest()[:16]}")


if __name__ == "__main__":
    main()
