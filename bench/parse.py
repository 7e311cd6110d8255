"""Event parse cost: ``core.schema.parse_event`` per event, against the hand-written validator
of an earlier version (``--baseline REV``, read from git) measured in the same run.

    python -m bench.parse [--baseline 4d47658]
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import tempfile
import timeit
from pathlib import Path

EVENTS = [
    b'{"user_id": "u123", "item_id": "i9876", "type": "click", "ts": 1700000000.5}',
    b'{"user_id": "u123", "item_id": "i9876", "type": "purchase", "ts": 1700000000, "event_id": "e-1", "value": 9.99}',
    b'{"user_id": 42, "item_id": 7, "type": "view", "ts": "2024-01-02T03:04:05+00:00", "context": {"recomm_id": "r1"}}',
]


def per_event_us(parse, repeat: int = 5, number: int = 20_000) -> float:
    def run():
        for raw in EVENTS:
            parse(raw)
    return min(timeit.repeat(run, number=number, repeat=repeat)) / number / len(EVENTS) * 1e6


def load_baseline(rev: str, path: str = "stream/schema.py"):
    """The schema module as it was at ``rev`` (its imports of the time rewritten to today's)."""
    source = subprocess.run(["git", "show", f"{rev}:{path}"], capture_output=True, text=True, check=True).stdout
    source = source.replace("from streamrec.errors import", "from core.errors import")
    folder = Path(tempfile.mkdtemp())
    (folder / "baseline_schema.py").write_text(source)
    spec = importlib.util.spec_from_file_location("baseline_schema", folder / "baseline_schema.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", default="4d47658", help="git revision of the baseline validator")
    args = parser.parse_args(argv)
    from core.schema import parse_event

    now = per_event_us(parse_event)
    result = {"parse_us_per_event": round(now, 2)}
    try:
        baseline = per_event_us(load_baseline(args.baseline).parse_event)
        result |= {"baseline_us_per_event": round(baseline, 2), "ratio_vs_baseline": round(now / baseline, 3)}
    except subprocess.CalledProcessError:
        print(f"no baseline: revision {args.baseline} is not in this clone", file=sys.stderr)
    print(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
