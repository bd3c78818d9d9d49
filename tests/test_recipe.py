"""Recipes: a valid one loads with defaults filled in; each bad one gets one clear message."""
from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from adaptkit.cli import main
from adaptkit.errors import RecipeError
from adaptkit.recipe.loading import load_recipe
from adaptkit.recipe.schema import json_schema
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
    pytest.param(("name: lora", "name: lorra"), [":10:", "strategy.name", "unknown strategy 'lorra'", "did you mean 'lora'"],
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


# ---------------------------------------------------------------------------- values that validated, then crashed
# (issue 14, item 6 and 8): each must stop `adaptkit validate` with file:line: key, exit 2.

def _recipe_with(recipe_dir, text: str):
    path = recipe_dir / "recipe.yaml"
    path.write_text(text)
    return path


# GOOD with its training section last: a line appended to it is line 16
TRAINING_LAST = GOOD.replace("training:\n  epochs: 1\n  learning_rate: 0.001\n", "") + \
    "training:\n  batch_size: 8\n"


VALUES_THAT_CRASHED = [
    pytest.param("  seed: -1\n", ":16:", "training.seed", "greater than or equal to 0", id="seed-negative"),
    pytest.param("  seed: 1180591620717411303424\n", ":16:", "training.seed", "at most 4,294,967,295", id="seed-2**70"),
    pytest.param("  seed: 4294967296\n", ":16:", "training.seed", "less than or equal to 4294967295", id="seed-2**32"),
    pytest.param("  epochs: " + "1" + "0" * 400 + "\n", ":16:", "training.epochs", "at most 2,147,483,647",
                 id="epochs-10**400"),
    pytest.param("  max_steps: 2147483648\n", ":16:", "training.max_steps", "less than or equal to 2147483647",
                 id="steps-2**31"),
    pytest.param("  num_threads: 1099511627776\n", ":16:", "training.num_threads", "less than or equal to 1024",
                 id="threads-2**40"),
    pytest.param("  epochs: true\n", ":16:", "training.epochs", "expected a number, got a boolean", id="epochs-true"),
    pytest.param("  learning_rate: false\n", ":16:", "training.learning_rate", "got a boolean", id="lr-false"),
    pytest.param("  metric_for_best: accuray\n", ":16:", "training.metric_for_best",
                 "not a metric of task 'sequence_classification'; did you mean 'accuracy'?", id="metric-misspelt"),
]


@pytest.mark.parametrize("line, where, key, fragment", VALUES_THAT_CRASHED)
def test_values_that_crashed_mid_run_fail_validation(recipe_dir, capsys, line, where, key, fragment):
    path = _recipe_with(recipe_dir, TRAINING_LAST + line)
    with pytest.raises(RecipeError) as caught:
        load_recipe(path)
    message = str(caught.value)
    assert message.startswith(f"{path}{where} {key}: "), message
    assert fragment in message and len(message) < 300, message
    assert main(["validate", str(path)]) == 2
    assert "Traceback" not in capsys.readouterr().err


def test_values_at_the_bounds_still_load(recipe_dir):
    path = _recipe_with(recipe_dir, TRAINING_LAST + "  seed: 4294967295\n  num_threads: 1024\n  epochs: 2147483647\n"
                                                    "  metric_for_best: eval_macro_f1\n  group_by_length: false\n")
    training = load_recipe(path).training
    assert (training.seed, training.num_threads, training.epochs) == (2**32 - 1, 1024, 2**31 - 1)
    assert training.metric_for_best == "eval_macro_f1" and training.group_by_length is False


@pytest.mark.parametrize("value, fragment", [
    ('""', "is empty"),
    ('"   "', "is empty"),
    (".", "is the working directory"),
    ("./", "is the working directory"),
    ("..", "a folder that holds the working directory"),
    ("/", "a folder that holds the working directory"),
    ('"run\\0x"', "contains a NUL character"),
    ("a" * 100_000, "is 100,000 bytes long"),
    ("runs/" + "b" * 240, "ends in a name of 240 bytes"),
    ("/proc/self/run", "lies under /proc"),
    ("/sys/kernel/run", "lies under /sys"),
])
def test_output_dirs_that_cannot_hold_a_run_are_refused(recipe_dir, monkeypatch, value, fragment):
    monkeypatch.chdir(recipe_dir)
    path = _recipe_with(recipe_dir, GOOD.replace("  dir: out\n", f"  dir: {value}\n"))
    with pytest.raises(RecipeError) as caught:
        load_recipe(path)
    message = str(caught.value)
    assert message.startswith(f"{path}:16: output.dir: "), message[:300]
    assert fragment in message and len(message) < 400, message[:300]
    assert main(["validate", str(path)]) == 2


def test_an_output_dir_beside_the_working_directory_loads(recipe_dir, monkeypatch):
    monkeypatch.chdir(recipe_dir)
    path = _recipe_with(recipe_dir, GOOD.replace("  dir: out\n", "  dir: runs/first\n"))
    assert str(load_recipe(path).output.dir) == "runs/first"


def test_a_plugin_option_given_true_for_a_number_is_refused(recipe_dir):
    path = _recipe_with(recipe_dir, GOOD.replace("  r: 4", "  r: true"))
    with pytest.raises(RecipeError, match=r"recipe\.yaml:11: strategy\.r: expected a number, got a boolean"):
        load_recipe(path)


@pytest.mark.parametrize("labels, index, name", [("[0, 0, 1]", 1, "'0'"), ("[neg, pos, '0', 0]", 3, "'0'")])
def test_task_labels_listed_twice_are_refused(recipe_dir, labels, index, name):
    path = _recipe_with(recipe_dir, GOOD.replace("  label_column: label\n", f"  label_column: label\n  labels: {labels}\n"))
    with pytest.raises(RecipeError) as caught:
        load_recipe(path)
    assert str(caught.value).startswith(f"{path}:7: task.labels[{index}]: label {name} is listed twice"), str(caught.value)


def test_every_builtin_task_declares_the_metrics_it_reports():
    """``metric_names`` is what validate checks metric_for_best against: it must match compute_metrics."""
    import torch

    from adaptkit.plugin.registry import get_registry

    tasks = get_registry().tasks
    logits = torch.tensor([[2.0, -1.0, 0.5], [0.1, 0.3, -2.0]])
    sequence = tasks["sequence_classification"]({"labels": ["a", "b", "c"]})
    assert set(sequence.compute_metrics(logits, torch.tensor([0, 2]))) | {"loss"} == set(sequence.metric_names)
    multi = tasks["sequence_classification"]({"labels": ["a", "b", "c"], "multi_label": True})
    reported = multi.compute_metrics(logits, torch.tensor([[1, 0, 1], [0, 1, 0]]))
    assert set(reported) | {"loss"} == set(multi.metric_names) != set(sequence.metric_names)
    causal = tasks["causal_lm"]({"text_column": "text"})
    assert set(causal.compute_metrics(torch.tensor([3.0, 1.0]), torch.tensor([2, 1]))) == set(causal.metric_names)
    image = tasks["image_classification"]()
    image.labels = ["a", "b", "c"]
    assert set(image.compute_metrics(logits, torch.tensor([0, 2]))) | {"loss"} == set(image.metric_names)
    tokens = tasks["token_classification"]()
    tokens.labels = ["O", "B-X", "I-X"]
    reported = tokens.compute_metrics(torch.tensor([[0, 1, 2]]), torch.tensor([[0, 1, -100]]),
                                      torch.tensor([1.5]), torch.tensor([2]))
    assert set(reported) == set(tokens.metric_names)


# ---------------------------------------------------------------------------- YAML bombs (issue 14, item 7)

def _alias_bomb(levels: int = 9) -> str:
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    names = "abcdefghijklmnop"
    for before, name in zip(names[: levels - 1], names[1:levels]):
        lines.append(f"{name}: &{name} [" + ",".join([f"*{before}"] * 9) + "]")
    return "\n".join(lines) + "\n"


def test_a_nine_line_alias_bomb_is_refused_at_once(tmp_path):
    import time

    path = tmp_path / "recipe.yaml"
    path.write_text(_alias_bomb())  # 9**9 values once expanded: the duplicate-key scan never finished
    started = time.perf_counter()
    with pytest.raises(RecipeError, match=r"recipe\.yaml:1: the recipe's aliases \(\*name\) expand to 4[\d,]+ values"):
        load_recipe(path)
    assert main(["validate", str(path)]) == 2
    assert time.perf_counter() - started < 1.0


@pytest.mark.parametrize("text, fragment", [
    ("a: " + "[" * 500 + "]" * 500 + "\n", ":1: values nested more than 64 levels deep"),
    ("a: " + "{b: " * 500 + "}" * 500 + "\n", ":1: values nested more than 64 levels deep"),
    ("a:\n" + "".join("  " * i + "-\n" for i in range(1, 100)), ":65: values nested more than 64 levels deep"),
    ("a0: &a0 [1]\n" + "".join(f"a{i}: &a{i} [*a{i - 1}]\n" for i in range(1, 100)), "nest values 102 levels deep"),
    ("model: &m {name: *m}\n", ":1: an alias (*name) refers to the value that holds it"),
])
def test_deep_or_self_referencing_yaml_is_a_recipe_error(tmp_path, capsys, text, fragment):
    path = tmp_path / "recipe.yaml"
    path.write_text(text)
    with pytest.raises(RecipeError) as caught:  # not RecursionError
        load_recipe(path)
    assert str(caught.value).startswith(str(path)) and fragment in str(caught.value), str(caught.value)
    assert main(["validate", str(path)]) == 2
    assert "Traceback" not in capsys.readouterr().err


def test_ordinary_aliases_still_work(recipe_dir):
    text = GOOD.replace("  text_column: text\n", "  text_column: &col text\n").replace(
        "data:\n", "data:\n  columns: {body: *col}\n")
    recipe = load_recipe(_recipe_with(recipe_dir, text))
    assert recipe.data.columns == {"body": "text"} and recipe.task_options.text_column == "text"


def test_a_local_tokenizer_folder_is_recorded_absolute_like_the_model(tmp_path, monkeypatch):
    """A run's recipe.yaml is read again by `adaptkit predict` from anywhere: a relative tokenizer folder
    (found from the working folder, as transformers finds it) must not be lost there."""
    from adaptkit.recipe.schema import Recipe
    from conftest import tiny_recipe_dict

    (tmp_path / "tok").mkdir()
    monkeypatch.chdir(tmp_path)
    recipe = tiny_recipe_dict(tmp_path, "full")
    recipe["model"]["tokenizer"] = "tok"
    resolved = Recipe.from_dict(recipe).resolved_dict()
    assert resolved["model"]["tokenizer"] == str((tmp_path / "tok").resolve())
    recipe["model"]["tokenizer"] = "sentence-transformers/all-MiniLM-L6-v2"  # a Hub id stays as written
    assert Recipe.from_dict(recipe).resolved_dict()["model"]["tokenizer"] == "sentence-transformers/all-MiniLM-L6-v2"
