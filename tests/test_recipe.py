"""Recipes: a valid one loads with defaults filled in; each bad one gets one clear message."""
from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from adaptkit.cli import main
from adaptkit.errors import RecipeError
from adaptkit.recipe import load_recipe, json_schema
from conftest import sentiment_rows, write_table

GOOD = textwrap.dedent("""\
    model:
      name: sentence-transformers/all-MiniLM-L6-v2
    task:
      type: sequence_classification
      text_column: text
      label_column: label
    data:
      train: train.csv
    strategy:
      name: lora
      r: 4
    training:
      epochs: 1
      learning_rate: 0.001
    output:
      dir: out
    """)


@pytest.fixture
def recipe_dir(tmp_path):
    write_table(tmp_path / "train.csv", sentiment_rows(20))
    write_table(tmp_path / "other.csv", [{"sentence": "x", "label": 1}, {"sentence": "y", "label": 0}])
    return tmp_path


def test_good_recipe_loads_with_plugin_options(recipe_dir):
    path = recipe_dir / "recipe.yaml"
    path.write_text(GOOD)
    recipe = load_recipe(path)
    assert recipe.strategy.name == "lora"
    assert recipe.strategy_options.r == 4 and recipe.strategy_options.alpha == 16
    assert recipe.task_options.max_length == 128
    assert recipe.resolve_path(recipe.data.train) == recipe_dir / "train.csv"
    resolved = recipe.resolved_dict()
    assert resolved["strategy"]["r"] == 4 and resolved["training"]["batch_size"] == 32


# (replace this, with that) -> fragments the single error message must contain
BAD_RECIPES = [
    pytest.param(("model:", "modle:"), [":1:", "modle", "unknown section", "did you mean 'model'"], id="misspelt-section"),
    pytest.param(("  learning_rate:", "  lerning_rate:"),
                 [":14:", "training.lerning_rate", "unknown key", "did you mean 'learning_rate'"], id="misspelt-key"),
    pytest.param(("epochs: 1", "epochs: three"), [":13:", "training.epochs", "'three'"], id="wrong-type"),
    pytest.param(("epochs: 1", "epochs: -4"), [":13:", "training.epochs", "greater than 0"], id="negative-number"),
    pytest.param(("train: train.csv", "train: missing.csv"), [":8:", "data.train", "file not found"], id="missing-data-file"),
    pytest.param(("name: lora", "name: lroa"), [":10:", "strategy.name", "unknown strategy 'lroa'", "did you mean 'lora'"],
                 id="unknown-strategy"),
    pytest.param(("  r: 4", "  rr: 4"), [":11:", "strategy.rr", "unknown key", "did you mean 'r'"], id="misspelt-strategy-option"),
    pytest.param(("  r: 4", "  r: four"), [":11:", "strategy.r", "'four'"], id="strategy-option-type"),
    pytest.param(("  dir: out\n", "  merge: true\n"), [":15:", "output.dir", "required key is missing"], id="missing-required-key"),
    pytest.param(("output:\n  dir: out\n", ""), ["output", "required key is missing"], id="missing-section"),
    pytest.param(("  epochs: 1", "  epochs: [1"), ["invalid YAML"], id="invalid-yaml"),
    pytest.param(("  epochs: 1", "  epochs: 1\n  epochs: 2"), [":14:", "training.epochs", "twice"], id="duplicate-key"),
    pytest.param(("type: sequence_classification", "type: sequence_clasification"),
                 [":4:", "task.type", "unknown task", "did you mean 'sequence_classification'"], id="unknown-task"),
    pytest.param(("train: train.csv", "train: other.csv"), [":8:", "data.train", "lacks column", "'text'"], id="missing-column"),
    pytest.param(("train: train.csv", "train: train.xlsx"), [":8:", "unsupported file type"], id="unsupported-format"),
    pytest.param(("name: sentence-transformers/all-MiniLM-L6-v2", "revision: main"), ["model", "model.name"], id="no-model-source"),
    pytest.param(("  epochs: 1", "  mixed_precision: fp8"), [":13:", "training.mixed_precision", "'fp8'"], id="bad-literal"),
    pytest.param(("  learning_rate: 0.001", "  learning_rate: 1e999999"), [":14:", "training.learning_rate"], id="huge-number"),
]


@pytest.mark.parametrize("change, fragments", BAD_RECIPES)
def test_bad_recipe_gets_one_clear_error(recipe_dir, change, fragments):
    if change[0] == "train: train.csv" and change[1] == "train: train.xlsx":
        (recipe_dir / "train.xlsx").write_bytes(b"PK\x03\x04")
    old, new = change
    assert old in GOOD
    path = recipe_dir / "recipe.yaml"
    path.write_text(GOOD.replace(old, new, 1))
    with pytest.raises(RecipeError) as caught:
        load_recipe(path)
    message = str(caught.value)
    assert str(path) in message
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    assert "Traceback" not in message


@pytest.mark.parametrize("content, fragment", [
    (b"", "recipe is empty"),
    (b"- just\n- a list\n", "not a list"),
    (b"\x00\x01\x02binary", "NUL bytes"),
    (b"model: \xff\xfe\n", "not UTF-8"),
])
def test_unreadable_recipes(tmp_path, content, fragment):
    path = tmp_path / "recipe.yaml"
    path.write_bytes(content)
    with pytest.raises(RecipeError, match=fragment):
        load_recipe(path)


@pytest.mark.parametrize("requirement, fragment", [
    ("adaptkit-no-such-plugin>=1.0", "install it with: pip install 'adaptkit-no-such-plugin>=1.0'"),
    ("adaptkit>=99", "adaptkit 0.1.0 is installed; upgrade with"),
    ("not a !! specifier", "is not a requirement specifier"),
])
def test_requires_checks_plugin_distributions_first(recipe_dir, requirement, fragment):
    path = recipe_dir / "recipe.yaml"
    # the strategy is unknown too: the missing requirement must be what the user hears about
    path.write_text(GOOD.replace("name: lora", "name: from_that_plugin") + f"requires:\n  - {requirement}\n")
    with pytest.raises(RecipeError) as caught:
        load_recipe(path)
    assert ":18:" in str(caught.value) and "requires[0]" in str(caught.value)
    assert fragment in str(caught.value)


def test_requires_satisfied_passes(recipe_dir):
    path = recipe_dir / "recipe.yaml"
    path.write_text(GOOD + "requires:\n  - adaptkit>=0.1\n  - peft\n")
    assert load_recipe(path).requires == ["adaptkit>=0.1", "peft"]


def test_cli_exit_status_2_and_message_on_stderr(recipe_dir, capsys):
    path = recipe_dir / "recipe.yaml"
    path.write_text(GOOD.replace("  r: 4", "  rank: 4"))
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "strategy.rank: unknown key" in err and "did you mean 'r'" in err
    assert main(["validate", str(recipe_dir / "nope.yaml")]) == 2


def test_validate_does_not_import_torch(recipe_dir):
    path = recipe_dir / "recipe.yaml"
    path.write_text(GOOD)
    code = ("import sys; from adaptkit.cli import main; rc = main(['validate', %r]); "
            "sys.exit(rc if 'torch' not in sys.modules else 99)" % str(path))
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "valid" in done.stdout


def test_schema_lists_installed_strategies_and_their_options():
    schema = json_schema()
    text = str(schema)
    assert "lora" in text and "full" in text
    lora = next(d for name, d in schema["$defs"].items() if name.startswith("lora"))
    assert {"r", "alpha", "dropout", "target_modules"} <= set(lora["properties"])
    assert lora.get("additionalProperties") is False
