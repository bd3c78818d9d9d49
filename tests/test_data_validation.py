"""Data files that used to load wrongly or be blamed on the wrong line (issue 14, item 8).

A missing label stored as NaN (Parquet, JSON) is an error, not a class called "nan"; a CSV that
Excel saved with a UTF-8 byte-order mark reads like any other; bytes that are not UTF-8 are
reported at their own line, however far into the file they are.
"""
from __future__ import annotations

import copy
import re

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from adaptkit.cli import main
from adaptkit.engine.data import check_table, load_table
from adaptkit.recipe.datafiles import scan_rows
from adaptkit.errors import DataError, RecipeError
from adaptkit.recipe.loading import load_recipe
from adaptkit_tasks.sequence_classification import SequenceClassification, SequenceClassificationOptions

RECIPE = {
    "model": {"name": "sentence-transformers/all-MiniLM-L6-v2"},
    "task": {"type": "sequence_classification", "text_column": "text", "label_column": "label"},
    "data": {"train": "train.csv"},
    "strategy": {"name": "lora"},
    "output": {"dir": "out"},
}
OPTIONS = SequenceClassification(SequenceClassificationOptions(text_column="text", label_column="label")).label_rules()


def _recipe(tmp_path, train: str):
    recipe = copy.deepcopy(RECIPE)
    recipe["data"]["train"] = train
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


def test_nan_label_in_parquet_is_a_missing_label_not_a_class(tmp_path):
    path = tmp_path / "train.parquet"
    pq.write_table(pa.table({"text": ["a", "b", "c", "d"], "label": pa.array([1.0, 0.0, float("nan"), 1.0])}), path)
    table = load_table(path)
    with pytest.raises(DataError, match=r"train\.parquet: row 3: the label column 'label' holds nan \(a missing value\)"):
        check_table(table, path, OPTIONS, is_train=True)


def test_nan_label_in_json_lines_is_reported_at_its_line(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text('{"text": "a", "label": 1.5}\n{"text": "b", "label": 0.5}\n{"text": "c", "label": NaN}\n')
    recipe = _recipe(tmp_path, "train.jsonl")
    with pytest.raises(RecipeError) as caught:
        load_recipe(recipe)
    assert re.search(r"recipe\.yaml:\d+: data\.train: .*train\.jsonl:3: the label column 'label' holds nan",
                     str(caught.value)), str(caught.value)
    assert main(["validate", str(recipe)]) == 2


def test_nan_label_in_json_lines_is_refused_when_a_run_loads_it(tmp_path):
    # what load_splits checks at run start: datasets' JSON reader keeps the NaN of a float column
    path = tmp_path / "train.jsonl"
    path.write_text('{"text": "a", "label": 1.5}\n{"text": "b", "label": NaN}\n{"text": "c", "label": 0.5}\n')
    with pytest.raises(DataError, match="row 2: the label column 'label' holds nan"):
        check_table(load_table(path), path, OPTIONS, is_train=True)


def test_csv_with_a_byte_order_mark_validates_and_loads(tmp_path):
    rows = "text,label\nlovely film,1\nawful film,0\ngreat plot,1\n"
    (tmp_path / "train.csv").write_bytes(b"\xef\xbb\xbf" + rows.encode("utf-8"))
    recipe = load_recipe(_recipe(tmp_path, "train.csv"))  # used to fail: lacks column 'text' (columns: text, label)
    assert recipe.data.train.name == "train.csv"
    table = load_table(tmp_path / "train.csv")
    assert table.column_names == ["text", "label"] and table["text"][0] == "lovely film"


def test_json_lines_with_a_byte_order_mark_validates(tmp_path):
    body = '{"text": "lovely", "label": "pos"}\n{"text": "awful", "label": "neg"}\n'
    (tmp_path / "train.jsonl").write_bytes(b"\xef\xbb\xbf" + body.encode("utf-8"))
    assert load_recipe(_recipe(tmp_path, "train.jsonl")).data.train.name == "train.jsonl"


@pytest.mark.parametrize("bad_line", [2, 700, 1500])
def test_bytes_that_are_not_utf8_are_reported_at_their_own_line(tmp_path, bad_line):
    # ~20 bytes a line: line 1500 lies past the text reader's first 8 KiB blocks
    lines = ["text,label"] + [f"row number {i:05d},{i % 2}" for i in range(2, 2001)]
    body = "\n".join(lines).encode("utf-8") + b"\n"
    parts = body.split(b"\n")
    parts[bad_line - 1] = parts[bad_line - 1].replace(b"row", b"r\xff\xfew", 1)
    path = tmp_path / "train.csv"
    path.write_bytes(b"\n".join(parts))
    with pytest.raises(DataError) as caught:
        scan_rows(path, "csv", ["text", "label"], {}, OPTIONS)
    assert f"train.csv:{bad_line}: not UTF-8 text" in str(caught.value)


@pytest.mark.parametrize("first", ["{", "[1, 2]", "not json"])
def test_json_lines_with_a_broken_first_line_is_scanned_not_skipped(tmp_path, first):
    # the header check could not read line 1 and used to skip every row check with it
    (tmp_path / "train.jsonl").write_text(first + '\n{"text": "a", "label": "pos"}\n{"text": "b", "label": "neg"}\n')
    with pytest.raises(RecipeError, match=r"data\.train: .*train\.jsonl:1: "):
        load_recipe(_recipe(tmp_path, "train.jsonl"))


def test_a_valid_csv_with_a_150_kb_cell_is_read(tmp_path, monkeypatch):
    """Python's csv module stops at 131,072 characters a field by default: a valid file with one long
    document was called "malformed CSV: field larger than field limit" (issue 22, item 14)."""
    import csv

    from adaptkit.recipe import datafiles

    path = tmp_path / "train.csv"
    long_text = "word " * 30_000  # 150,000 characters
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "label"])
        writer.writerows([[long_text, 0], ["short and good", 1], ["bad", 0]])
    scan_rows(path, "csv", ["text", "label"], {}, None)
    assert load_table(path)["text"][0] == long_text
    previous = csv.field_size_limit(1000)  # the bound that remains, made small to test its message
    monkeypatch.setattr(datafiles, "MAX_CSV_FIELD", 1000)
    try:
        with pytest.raises(DataError, match=r"train.csv:\d+: a cell is longer than 1,000 characters, the most"):
            scan_rows(path, "csv", ["text", "label"], {}, None)
    finally:
        csv.field_size_limit(previous)
