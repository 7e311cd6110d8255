"""``streamrec items load``: CSV (MovieLens movies.csv as it comes: no header line, CRLF,
``|``-separated genres) or JSON lines, with column mapping; bad rows are reported, the
rest loaded."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from stream.items import read_items
from streamrec.cli import main
from tests.helpers import read_topic

MOVIES = Path(__file__).parent / "fixtures" / "movies-no-header-crlf.csv"


def test_headerless_crlf_csv_with_positional_columns():
    with open(MOVIES, newline="") as lines:
        found = dict(read_items(lines, "csv", columns=["id", "title", "genres"]))
    assert found[1] == {"item_id": "1", "title": "The Clockwork Garden (1994)",
                        "category": ["Adventure", "Animation", "Children"]}
    assert found[2]["title"] == "Harbour Lights, Part II (1996)"  # quoted comma
    assert found[3] == {"item_id": "3", "title": "Untitled Short (2001)"}  # "(no genres listed)": none
    assert found[4] == "no item id (column 'id')"
    assert found[5].startswith("row has 4 field(s), expected 3")
    assert found[6]["category"] == ["Thriller", "Crime"]


def test_header_row_and_explicit_mapping():
    lines = ["sku;name;tags;price\n", "a1;Blue shoes;shoes|sale;19.5\n"]
    lines = [line.replace(";", ",") for line in lines]
    (_, item), = read_items(lines, "csv", id_column="sku", title_column="name", category_column="tags")
    assert item == {"item_id": "a1", "title": "Blue shoes", "category": ["shoes", "sale"], "price": "19.5"}
    with pytest.raises(ValueError, match="no column 'nope'"):
        list(read_items(lines, "csv", id_column="nope"))


def test_jsonl_with_mapping_and_bad_lines():
    lines = ['{"movieId": 7, "title": "X", "genres": "A|B"}', "not json", "[1]", '{"title": "no id"}']
    found = dict(read_items(lines, "jsonl"))
    assert found[1] == {"item_id": "7", "title": "X", "category": ["A", "B"]}
    assert found[2].startswith("not JSON") and found[3] == "a line must be a JSON object"
    assert found[4] == "no item id (column 'item_id')"


@pytest.mark.integration
def test_cli_loads_good_rows_and_reports_bad_ones(settings, monkeypatch, capsys):
    monkeypatch.setenv("STREAMREC_KAFKA_BOOTSTRAP", settings.kafka_bootstrap)
    monkeypatch.setenv("STREAMREC_TOPIC", settings.topic)
    code = main(["items", "load", str(MOVIES), "--columns", "id,title,genres"])
    out, err = capsys.readouterr()
    assert code == 1  # some rows were bad
    assert "sent 4 item(s)" in out and "2 bad line(s) skipped" in out
    assert "line 4: no item id" in err and "line 5: row has 4 field(s)" in err
    events = [orjson.loads(r.value) for r in read_topic(settings.kafka_bootstrap, settings.topic, 4)]
    by_id = {e["item_id"]: e for e in events}
    assert set(by_id) == {"1", "2", "3", "6"} and all(e["type"] == "item" for e in events)
    assert by_id["1"]["context"] == {"title": "The Clockwork Garden (1994)",
                                     "category": ["Adventure", "Animation", "Children"]}
