"""Property tests: every mutated or random recipe has one expected outcome, and gets it.

Each example is either accepted, and then the loaded recipe holds exactly the values the file
wrote (and ``adaptkit validate`` exits 0), or refused with ``RecipeError`` whose every message
starts ``<file>:<line>: <key>: `` on a key the mutation touched (and the CLI exits 2). Never a
traceback, never a mutation that loads unchecked. Three generators, 670 examples in all:
mutated recipes (wrong types, unknown keys, huge and negative numbers, missing sections), raw
bytes (bad YAML, binary, empty files: never a recipe), and mutated data files (missing columns,
ragged rows, empty splits, one class, labels not in the list, binary bytes, bad JSON Lines),
whose verdict an independent reading of the file decides; their errors name the data file and line.
"""
from __future__ import annotations

import copy
import csv
import io
import json
import re
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, TypeAdapter

from adaptkit.cli import main
from adaptkit.errors import RecipeError
from adaptkit.recipe.loading import load_recipe
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
# Values near the edge of what each key accepts: about half load, and must load as written.
PLAUSIBLE = {
    ("training", "epochs"): [1, 3, "2", 2.0, True, 0, 2**31 - 1, 2**31, 2.5],
    ("training", "learning_rate"): [1e-5, "3e-4", 1, False, 0.0, 1e300],
    ("training", "batch_size"): [1, 16, "8", 2**31 - 1, 2**31, None],
    ("training", "mixed_precision"): ["no", "bf16", "fp8", True],
    ("training", "warmup_ratio"): [0, 0.5, 0.999, 1, True],
    ("strategy", "r"): [1, 8, "16", True, 0, 2**64],
    ("strategy", "alpha"): [1, 32, 0.5, True, "8"],
    ("strategy", "target_modules"): [["query"], ["query", "value"], "query", ["qery"]],
    ("task", "max_length"): [8, 512, "64", True, 0],
    ("task", "text_column"): ["text", "label", "", 5],
    ("data", "max_train_samples"): [1, 4, "2", True, 0],
    ("data", "eval"): ["train.csv", "missing.csv", None],
    ("data", "columns"): [{}, {"text": "text"}, {"a": "b"}],
    ("model", "init"): ["random", "pretrained", "scratch"],
    ("output", "dir"): ["out2", "a/b/c", "", ".", "/proc/x", "x" * 300],
    ("output", "merge"): [True, False, 1, "yes"],
}
VALUES = st.recursive(SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                        st.dictionaries(st.text(max_size=8), inner, max_size=3)),
                      max_leaves=6)


@st.composite
def mutated_recipes(draw):
    """(YAML bytes, the dict they hold, the sections a mutation touched)."""
    recipe = copy.deepcopy(BASE)
    touched: set[str] = set()
    for _ in range(draw(st.integers(min_value=1, max_value=4))):
        section, key = draw(st.sampled_from(PATHS))
        action = draw(st.sampled_from(["set", "delete", "extra", "section", "plausible", "plausible"]))
        touched.add(section)
        if action == "plausible" and (section, key) in PLAUSIBLE and isinstance(recipe.get(section), dict):
            recipe[section][key] = draw(st.sampled_from(PLAUSIBLE[(section, key)]))
            continue
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
    return yaml.safe_dump(recipe, allow_unicode=True).encode("utf-8"), recipe, touched


RAW = st.one_of(st.binary(max_size=200), st.text(max_size=200).map(lambda t: t.encode("utf-8")))


def _messages(message: str, path) -> list[str]:
    """One message per error (pydantic reports several); a key may itself hold a newline."""
    return re.split(r"\n(?=" + re.escape(str(path)) + ":)", message)


# Whole-file problems name no key: they follow the line number directly.
FILE_PROBLEMS = ("invalid YAML: ", "recipe is empty", "recipe is not UTF-8", "recipe contains NUL",
                 "a recipe is a mapping", "the recipe's aliases", "values nested more than", "an alias (*name)")


def _key_of(message: str, path) -> str:
    """The key path an error message names after ``<file>:<line>: ``; fails the test if there is none."""
    assert "Traceback" not in message, message
    match = re.match(re.escape(str(path)) + r":\d+: (.*)", message, re.S)
    assert match, f"no file:line in {message!r}"
    rest = match.group(1)
    if rest.startswith(FILE_PROBLEMS):
        return ""
    # odd keys are shown quoted as Python writes them, a quote inside escaped: task.'\'"'
    key = re.match(r"((?:[^\s:'\"]+|'(?:[^'\\\n]|\\.)*'|\"(?:[^\"\\\n]|\\.)*\")+): ", rest)
    assert key, f"no key in {message!r}"
    return key.group(1)


def _same(written, loaded) -> bool:
    """Whether a loaded value is what the YAML said (pydantic may turn "3" or 3.0 into 3, a str into a Path)."""
    if isinstance(loaded, BaseModel):
        loaded = loaded.model_dump(mode="json")
    if isinstance(loaded, Path):
        return isinstance(written, str) and Path(written) == loaded
    if isinstance(written, bool):
        return loaded is written  # true is never a number here
    if isinstance(loaded, bool):  # a bool field reads 1, "yes", "on" as pydantic does
        return TypeAdapter(bool).validate_python(written) is loaded
    if isinstance(loaded, (int, float)) and isinstance(written, str):
        return float(written) == loaded
    return loaded == written  # numbers (a NaN is never equal: it must not load), strings, lists, dicts, None


def _held(recipe, section: str, key: str):
    if section in ("strategy", "task"):
        if key in ("name", "type", "distribution"):
            return getattr(getattr(recipe, section), key)
        return getattr(getattr(recipe, f"{section}_options"), key)
    return getattr(getattr(recipe, section), key)


def _expect(tmp_path, content: bytes, written: dict, touched: set[str], record=event) -> None:
    path = tmp_path / "recipe.yaml"
    path.write_bytes(content)
    try:
        recipe = load_recipe(path)
    except RecipeError as exc:
        for message in _messages(str(exc), path):
            key = _key_of(message, path)
            # the base recipe is valid: what fails is a touched section, or the data it is checked against
            assert re.split(r"[.\[]", key)[0] in touched | {"data"}, (message, touched)
        assert main(["validate", str(path)]) == 2
        record("refused")
        return
    record("loaded")  # a fifth of the mutated recipes or so: see pytest --hypothesis-show-statistics
    for section, body in written.items():
        if section == "requires":
            assert recipe.requires == body
            continue
        assert isinstance(body, dict), f"section {section} = {body!r} loaded"
        for key, value in body.items():
            assert _same(value, _held(recipe, section, key)), (section, key, value, _held(recipe, section, key))
    assert main(["validate", str(path)]) == 0


def _mutation(section: str, key: str, value) -> tuple[bytes, dict, set[str]]:
    recipe = copy.deepcopy(BASE)
    recipe[section][key] = value
    return yaml.safe_dump(recipe, allow_unicode=True).encode("utf-8"), recipe, {section}


@settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))
@given(mutated=mutated_recipes())
@example(mutated=_mutation("training", "epochs", True))  # refused: it used to load as 1 epoch
@example(mutated=_mutation("training", "seed", 2**70))  # refused: it used to load and overflow numpy
@example(mutated=_mutation("training", "epochs", "2"))  # loads as 2
@example(mutated=_mutation("output", "merge", 1))  # loads as True
@example(mutated=_mutation("output", "dir", ""))  # refused: it used to be the working directory
def test_mutated_recipes_load_exactly_or_fail_on_a_touched_key(tmp_path_factory, mutated):
    tmp_path = tmp_path_factory.mktemp("fuzz")
    write_table(tmp_path / "train.csv", sentiment_rows(8))
    _expect(tmp_path, *mutated)


def test_the_unmutated_recipe_loads_as_written(tmp_path):
    write_table(tmp_path / "train.csv", sentiment_rows(8))
    _expect(tmp_path, yaml.safe_dump(BASE).encode("utf-8"), copy.deepcopy(BASE), set(), record=lambda _: None)


@settings(max_examples=120, deadline=None, suppress_health_check=list(HealthCheck))
@given(content=RAW)
def test_random_bytes_are_refused_with_file_and_line(tmp_path_factory, content):
    path = tmp_path_factory.mktemp("raw") / "recipe.yaml"
    path.write_bytes(content)
    with pytest.raises(RecipeError) as caught:  # 200 random bytes never hold model, data, strategy and output
        load_recipe(path)
    for message in _messages(str(caught.value), path):
        _key_of(message, path)
    assert main(["validate", str(path)]) == 2


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


def _data_verdict(kind: str, body: bytes, labels) -> str:
    """"" when a data file is fit to train on, else why not: read here with csv/json, not adaptkit.

    Fit: UTF-8 (a byte-order mark allowed), a header or first object with 'text' and 'label', every
    row as wide as the header (CSV) or a JSON object holding both (JSON Lines), at least one row,
    no empty label, labels within task.labels, and two classes at least when task.labels is absent.
    """
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        return "not UTF-8"
    text = text.removeprefix("\ufeff")
    rows: list[dict] = []
    if kind == "jsonl":
        for line in text.split("\n"):
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except json.JSONDecodeError:
                return "bad JSON"
            if not isinstance(value, dict) or not {"text", "label"} <= set(value):
                return "row is no object with text and label"
            rows.append(value)
    else:
        try:
            table = [fields for fields in csv.reader(io.StringIO(text, newline=""),
                                                     delimiter="\t" if kind == "tsv" else ",") if fields]
        except csv.Error:
            return "malformed CSV"
        if not table:
            return "empty"
        header, *body_rows = table
        if not {"text", "label"} <= set(header):
            return "lacks a column"
        if any(len(fields) != len(header) for fields in body_rows):
            return "ragged"
        rows = [dict(zip(header, fields)) for fields in body_rows]
    if not rows:
        return "no rows"
    found = [str(row["label"]) for row in rows]
    if any(not isinstance(row["label"], (list, dict)) and not str(row["label"]).strip() for row in rows):
        return "empty label"
    if labels is not None and not set(found) <= {str(label) for label in labels}:
        return "label not in task.labels"
    if labels is None and len(set(found)) < 2:
        return "one class"
    return ""


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=data_files())
def test_data_files_are_accepted_exactly_when_fit_else_named_by_file_and_line(tmp_path_factory, data):
    name, body, labels = data
    tmp_path = tmp_path_factory.mktemp("data")
    (tmp_path / name).write_bytes(body)
    recipe = copy.deepcopy(BASE)
    recipe["data"]["train"] = name
    if labels is not None:
        recipe["task"]["labels"] = labels
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    verdict = _data_verdict(name.rsplit(".", 1)[1], body, labels)
    try:
        loaded = load_recipe(path)
    except RecipeError as exc:
        message = str(exc)
        assert verdict, f"a fit file was refused: {message}"
        assert "Traceback" not in message, message
        assert re.match(re.escape(str(path)) + r":\d+: data\.train: ", message), message
        if ": row " in message or "label" in message and "lacks" not in message:
            assert re.search(re.escape(name) + r"(:\d+)?: ", message), message
        assert main(["validate", str(path)]) == 2
        event("refused")
        return
    event("loaded")
    assert not verdict, f"accepted a file that is not fit ({verdict}): {body[:200]!r}"
    assert loaded.resolve_path(loaded.data.train) == tmp_path / name
    assert main(["validate", str(path)]) == 0
