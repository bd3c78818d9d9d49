"""Property test: hundreds of mutated and random recipes end in exit 2 and one clear message.

Whatever the input, the recipe loader either accepts it or raises ``RecipeError`` whose
message names the recipe file; the CLI turns that into exit status 2. Never a traceback.
Three generators, 670 examples in all: mutated recipes (wrong types, unknown keys, huge and
negative numbers, missing sections), raw bytes (bad YAML, binary, empty files), and mutated
data files (missing columns, ragged rows, empty splits, one class, labels not in the list,
binary bytes, bad JSON Lines), whose errors also name the data file and its line.
"""
from __future__ import annotations

import copy
import csv
import io
import json
import re

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from adaptkit.cli import main
from adaptkit.errors import RecipeError
from adaptkit.recipe import load_recipe
from conftest import sentiment_rows, write_table

BASE = {
    "model": {"name": "sentence-transformers/all-MiniLM-L6-v2"},
    "task": {"type": "sequence_classification", "text_column": "text", "label_column": "label"},
    "data": {"train": "train.csv"},
    "strategy": {"name": "lora", "r": 4},
    "training": {"epochs": 1, "learning_rate": 0.001, "batch_size": 8},
    "output": {"dir": "out"},
}
PATHS = [(section, key) for section, body in BASE.items() for key in body] + [
    ("training", "warmup_ratio"), ("training", "mixed_precision"), ("data", "eval"), ("data", "max_train_samples"),
    ("strategy", "alpha"), ("strategy", "target_modules"), ("model", "init"), ("task", "max_length"),
    ("data", "columns"), ("output", "merge"), ("requires", None)]

SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-10**30, max_value=10**30),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=30),
    st.sampled_from(["", "-1", "1e999", "nan", "train.csv", "missing.csv", "lora", "full", "../../etc/passwd",
                     "sequence_classification", "fp16", "random"]),
    st.sampled_from([-1, 0, -(2**63), 2**64, 10**400, 1e308, -1e-320, "\x00", "\ufeff", "0" * 500]),
)
VALUES = st.recursive(SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                        st.dictionaries(st.text(max_size=8), inner, max_size=3)),
                      max_leaves=6)


@st.composite
def mutated_recipes(draw):
    recipe = copy.deepcopy(BASE)
    for _ in range(draw(st.integers(min_value=1, max_value=4))):
        section, key = draw(st.sampled_from(PATHS))
        action = draw(st.sampled_from(["set", "delete", "extra", "section"]))
        if action == "section":
            recipe[section] = draw(VALUES)
        elif action == "extra":
            target = recipe.setdefault(section, {})
            if isinstance(target, dict):
                target[draw(st.text(min_size=1, max_size=12))] = draw(VALUES)
        elif isinstance(recipe.get(section), dict) and key is not None:
            if action == "delete":
                recipe[section].pop(key, None)
            else:
                recipe[section][key] = draw(VALUES)
    return yaml.safe_dump(recipe, allow_unicode=True).encode("utf-8")


RAW = st.one_of(st.binary(max_size=200), st.text(max_size=200).map(lambda t: t.encode("utf-8")))


def _check(tmp_path, content: bytes) -> None:
    path = tmp_path / "recipe.yaml"
    path.write_bytes(content)
    try:
        load_recipe(path)
    except RecipeError as exc:
        message = str(exc)
        assert str(path) in message or "recipe.yaml" in message, message
        assert "Traceback" not in message
        assert main(["validate", str(path)]) == 2


@settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))
@given(content=mutated_recipes())
def test_mutated_recipes_fail_cleanly(tmp_path_factory, content):
    tmp_path = tmp_path_factory.mktemp("fuzz")
    write_table(tmp_path / "train.csv", sentiment_rows(8))
    _check(tmp_path, content)


@settings(max_examples=120, deadline=None, suppress_health_check=list(HealthCheck))
@given(content=RAW)
def test_random_bytes_fail_cleanly(tmp_path_factory, content):
    _check(tmp_path_factory.mktemp("raw"), content)


# ---------------------------------------------------------------------------- data files

CELLS = st.one_of(st.sampled_from(["0", "1", "2", "", " ", "pos", "neg", "1.0", "-1", "9" * 40, "a,b", '"']),
                  st.text(max_size=12))
HEADERS = st.sampled_from([["text", "label"]] * 4 + [["label", "text"], ["text"], ["sentence", "label"],
                           ["text", "label", "extra"], ["Text", "Label"], []])


@st.composite
def data_files(draw):
    """(file name, bytes, task.labels): a CSV/TSV/JSONL file, well formed or mutated."""
    kind = draw(st.sampled_from(["csv", "csv", "tsv", "jsonl"]))
    header = draw(HEADERS)
    rows = draw(st.lists(st.lists(CELLS, min_size=0, max_size=4), min_size=draw(st.sampled_from([0, 1, 1, 1])),
                         max_size=8))
    if draw(st.integers(0, 3)):  # mostly well formed: the width of the header
        rows = [(row + ["x"] * len(header))[: len(header)] for row in rows]
    if "label" in header and draw(st.booleans()):  # plausible labels: one class, two, or one stray
        column = header.index("label")
        choices = draw(st.sampled_from([["0"], ["0", "1"], ["pos", "neg"], ["0", "1", "7"]]))
        for number, row in enumerate(rows):
            if column < len(row):
                row[column] = choices[number % len(choices)]
    if kind == "jsonl":
        lines = [json.dumps(dict(zip(header, row))) for row in rows]
        lines += draw(st.lists(st.sampled_from(["{", "[1, 2]", "null", '"text"', "{}", ""]), max_size=2))
        body = "\n".join(lines).encode("utf-8")
    else:
        buffer = io.StringIO()
        writer = csv.writer(buffer, delimiter="\t" if kind == "tsv" else ",")
        if header:
            writer.writerow(header)
        writer.writerows(rows)
        body = buffer.getvalue().encode("utf-8")
    damage = draw(st.sampled_from(["none"] * 5 + ["binary", "truncate", "nul", "empty"]))
    if damage == "binary":
        at = draw(st.integers(0, len(body)))
        body = body[:at] + draw(st.binary(min_size=1, max_size=8)) + body[at:]
    elif damage == "truncate":
        body = body[: draw(st.integers(0, len(body)))]
    elif damage == "nul":
        body = body.replace(b",", b"\x00", 1)
    elif damage == "empty":
        body = b""
    labels = draw(st.sampled_from([None, ["0", "1"], ["pos", "neg"], [0, 1, 2]]))
    return f"train.{kind}", body, labels


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=data_files())
def test_bad_data_files_fail_cleanly_with_file_and_line(tmp_path_factory, data):
    name, body, labels = data
    tmp_path = tmp_path_factory.mktemp("data")
    (tmp_path / name).write_bytes(body)
    recipe = copy.deepcopy(BASE)
    recipe["data"]["train"] = name
    if labels is not None:
        recipe["task"]["labels"] = labels
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    try:
        load_recipe(path)
    except RecipeError as exc:
        message = str(exc)
        assert "Traceback" not in message, message
        assert re.match(re.escape(str(path)) + r":\d+: data\.train: ", message), message
        if ": row " in message or "label" in message and "lacks" not in message:
            assert re.search(re.escape(name) + r"(:\d+)?: ", message), message
        assert main(["validate", str(path)]) == 2
