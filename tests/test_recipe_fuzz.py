"""Property test: hundreds of mutated and random recipes end in exit 2 and one clear message.

Whatever the input, the recipe loader either accepts it or raises ``RecipeError`` whose
message names the recipe file; the CLI turns that into exit status 2. Never a traceback.
"""
from __future__ import annotations

import copy

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


@settings(max_examples=450, deadline=None, suppress_health_check=list(HealthCheck))
@given(content=mutated_recipes())
def test_mutated_recipes_fail_cleanly(tmp_path_factory, content):
    tmp_path = tmp_path_factory.mktemp("fuzz")
    write_table(tmp_path / "train.csv", sentiment_rows(8))
    _check(tmp_path, content)


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(content=RAW)
def test_random_bytes_fail_cleanly(tmp_path_factory, content):
    _check(tmp_path_factory.mktemp("raw"), content)
