"""benchmarks/strategies.py without training: which methods a rerun measures again (resume and skip),
the results file written at once after each method, the old format kept as a legacy section, and the
markdown table rendered from the JSON (sorted by dev accuracy, refusals listed with their reason)."""
from __future__ import annotations

import json
import sys

import pytest

from conftest import REPO

sys.path.insert(0, str(REPO / "benchmarks"))
import strategies as bench  # noqa: E402

LEGACY = {"model": bench.MODEL, "train_rows": 500, "epochs": 5, "batch_size": 16, "max_length": 128, "seed": 42,
          "results": [{"strategy": "lora", "accuracy": 0.797, "trainable_parameters": 338690, "learning_rate": 5e-4,
                       "train_seconds": 25.6, "examples_per_second": 97.5, "peak_memory_mib": 1163.2},
                      {"strategy": "full", "accuracy": 0.781, "trainable_parameters": 22713986,
                       "learning_rate": 3e-5, "train_seconds": 40.4, "examples_per_second": 61.9,
                       "peak_memory_mib": 1320.2}]}


def measured(settings, accuracy, trainable, options=None):
    return {"settings": settings, "options": options or {}, "versions": bench.versions(), "status": "measured",
            "accuracy": accuracy, "trainable_parameters": trainable, "memory_mib": 100.0 + trainable / 1e4,
            "seconds_per_epoch": 12.5, "learning_rate": 1e-3, "device": "cpu"}


@pytest.fixture(scope="module")
def settings():
    return bench.settings_for()


def test_settings_write_out_the_defaults_and_quick_changes_what_trains(settings):
    from adaptkit.judge.tuning import DEFAULT_TRIALS
    from adaptkit.recipe.schema import DEFAULT_MIN_STEPS

    assert (settings["rows"], settings["trials"], settings["min_steps"]) == (1000, DEFAULT_TRIALS, DEFAULT_MIN_STEPS)
    quick = bench.settings_for(quick=True)
    assert (quick["rows"], quick["trials"], quick["epochs"], quick["min_steps"]) == (200, 1, 1, 0)
    assert bench.settings_for(trials=5)["trials"] == 5 and bench.settings_for(trials=5) != settings
    assert bench.settings_for() == settings  # equal settings compare equal: what a rerun skips by


def test_a_rerun_skips_what_is_done_with_the_same_settings_and_retries_failures(settings):
    store = {"methods": {
        "lora": measured(settings, 0.80, 338690),
        "shadow": {"settings": settings, "options": {}, "status": "refused", "reason": "peft says: no decoder"},
        "vera": {"settings": settings, "options": {}, "status": "failed", "reason": "tuning: killed"},
        "loha": measured({**settings, "rows": 500}, 0.75, 10000),  # other settings: measured again
        "p_tuning": measured(settings, 0.6, 8000, options={"num_virtual_tokens": 10}),  # other options
    }}
    methods = ["boft", "loha", "lora", "p_tuning", "shadow", "vera"]
    options = {"p_tuning": {"num_virtual_tokens": 20}}
    todo = bench.pending(store, methods, settings, lambda m: options.get(m, {}))
    assert todo == ["boft", "loha", "p_tuning", "vera"]
    assert bench.pending(store, methods, settings, lambda m: options.get(m, {}), redo=True) == methods


def test_each_method_is_written_at_once_and_the_old_format_becomes_a_legacy_section(tmp_path, settings):
    path = tmp_path / "strategies.json"
    path.write_text(json.dumps(LEGACY))
    store = bench.load_store(path)
    assert store == {"methods": {}, "legacy": LEGACY}  # nothing measured is dropped
    store["settings"] = settings
    bench.record(store, "vera", measured(settings, 0.71, 27650), path)
    written = json.loads(path.read_text())
    assert written["legacy"] == LEGACY and written["methods"]["vera"]["accuracy"] == 0.71
    assert bench.load_store(path) == written  # the new format reads back as is
    table = path.with_suffix(".md").read_text()
    assert "## Legacy: the first table (8 first-party strategies, 500 rows, 5 epochs" in table
    assert "| lora | 0.0005 | 0.7970 | 338,690 |" in table
    assert not list(tmp_path.glob(".strategies*"))  # no temporary file left behind
    # once every legacy strategy has a figure under the new settings, the legacy table is no longer shown
    bench.record(store, "lora", measured(settings, 0.80, 338690), path)
    bench.record(store, "full", measured(settings, 0.79, 22713986), path)
    assert "Legacy" not in path.with_suffix(".md").read_text()
    assert json.loads(path.read_text())["legacy"] == LEGACY  # still in the JSON


def test_the_table_is_sorted_by_accuracy_with_families_and_the_methods_not_run(settings):
    store = {"settings": settings, "methods": {
        "vera": measured(settings, 0.71, 27650),
        "lora": measured(settings, 0.80, 338690),
        "ia3": {**measured(settings, 0.74, 16898), "tuning": {"at_edge": True}},
        "trainable_tokens": measured(settings, 0.70, 1846656, options={"token_indices": bench.TRAIN_TOKENS}),
        "shadow": {"settings": settings, "options": {}, "status": "refused",
                   "reason": "strategy 'shadow' cannot adapt this bert model: peft says: no decoder layers"},
        "boft": {"settings": settings, "options": {}, "status": "failed", "reason": "tuning: RuntimeError: boom"},
        "loha": measured({**settings, "rows": 500}, 0.99, 10000),
    }}
    text = bench.render(store)
    current = text.split("## Measured under earlier settings")[0]
    rows = [line for line in current.splitlines() if line.startswith("| ") and not line.startswith("| method")]
    assert [row.split(" | ")[0].strip("| ") for row in rows] == ["lora", "ia3", "vera", "trainable_tokens"]
    assert rows[0] == "| lora | LoRA-kin | 338,690 | 134 | 12.5 | 0.001 | 0.8000 |"
    assert "| ia3 | scaling & bias |" in rows[1] and "| 0.001 (end) | 0.7400 |" in rows[1]
    assert "- **shadow** (adapters & side networks), refused at plan: strategy 'shadow' cannot adapt" in text
    assert "- **boft** (orthogonal), failed (retried by the next run): tuning: RuntimeError: boom" in text
    earlier = text.split("## Measured under earlier settings")[1]  # kept, apart, with how they differ
    assert "rows: 500 (now 1000)" in earlier and "| loha | LoRA-kin | 10,000 |" in earlier
    assert "loha" not in current
    assert "1,000 training rows" in text and "Device: cpu" in text
    assert 'trainable_tokens {"token_indices": "<train tokens>"}' in text  # the ids are named, not listed
    assert "<train tokens>: every token id the training file uses." in text


def test_every_installed_strategy_has_a_family():
    import adaptkit

    unplaced = [name for name in adaptkit.list_strategies() if bench.family(name) == "other"]
    assert not unplaced, f"place these in benchmarks/strategies.py FAMILIES: {unplaced}"


def test_the_options_a_method_needs_make_a_recipe_that_validates(tmp_path, settings):
    """The table's options for methods peft gives no default (p_tuning, trainable_tokens, ...) pass the
    recipe schema, so such a method is planned and run instead of failing on its options."""
    from adaptkit.engine.session import as_recipe

    for method in bench.OPTIONS:
        options = bench.options_for(method, tokens=lambda: [2000, 2001])
        recipe = as_recipe(bench.recipe_for(method, options, settings, tmp_path / "run"))
        assert recipe.strategy.name == method
    assert bench.options_for("trainable_tokens", tokens=lambda: [7, 9]) == {"token_indices": [7, 9]}


def test_quick_never_writes_over_the_table():
    with pytest.raises(SystemExit):
        bench.main(["--quick", "--out", str(bench.TABLE)])
