"""``adaptkit compare``: the verdict from paired intervals, real negative and positive cases, the CLI."""
from __future__ import annotations

import base64
import json

import pytest

from adaptkit.cli import main
from adaptkit.compare import SCRATCH, Row, compute_saved, judge, variant
from adaptkit.recipe import Recipe
from conftest import REPO, tiny_recipe_dict, write_recipe
from test_advise import negative_recipe, sentiment_blind_model


def _row(name: str, metric: float, size: int = 100, energy: float = 1.0) -> Row:
    return Row(strategy=name, size=size, train_examples=size, metric=metric, ci_low=metric - 0.05,
               ci_high=metric + 0.05, trainable=1, wall_seconds=1.0, peak_memory_bytes=1, energy_wh=energy,
               g_co2e=0.5, seeds=1)


@pytest.mark.parametrize("shift, expected", [(0.10, "positive transfer"), (-0.10, "negative transfer"),
                                             (0.0, "no clear difference")])
def test_verdict_follows_the_paired_interval(shift, expected):
    import random

    rng = random.Random(0)
    scratch = [0.70 + rng.gauss(0, 0.02) for _ in range(500)]
    transfer = [s + shift + rng.gauss(0, 0.01) for s in scratch]
    rows = [_row("lora", 0.70 + shift), _row(SCRATCH, 0.70)]
    verdict, detail, per_size = judge(rows, {("lora", 100): transfer, (SCRATCH, 100): scratch}, True, "accuracy")
    assert verdict == expected and per_size[0]["best_transfer"] == "lora"
    assert f"{per_size[0]['ci_low']:+.4f}" in detail


def test_pairing_matters_and_lower_is_better_flips_the_sign():
    # marginal intervals overlap widely, yet the paired difference is always positive
    base = [0.5 + 0.01 * i for i in range(100)]
    replicates = {("full", 10): [b + 0.02 for b in base], (SCRATCH, 10): base}
    rows = [_row("full", 1.01, 10), _row(SCRATCH, 0.99, 10)]
    assert judge(rows, replicates, True, "accuracy")[0] == "positive transfer"
    assert judge(rows, replicates, False, "loss")[0] == "negative transfer"


def test_compute_saved_from_the_learning_curve():
    rows = [_row(SCRATCH, 0.60, 100, 1.0), _row(SCRATCH, 0.70, 300, 3.0), _row(SCRATCH, 0.75, 1000, 10.0),
            _row("lora", 0.72, 100, 0.8), _row("lora", 0.80, 300, 2.0), _row("lora", 0.85, 1000, 6.0),
            _row("ia3", 0.55, 100, 0.5), _row("ia3", 0.65, 300, 1.0), _row("ia3", 0.70, 1000, 2.0)]
    saved = {c["strategy"]: c for c in compute_saved(rows, True)}
    assert saved["lora"]["examples_needed"] == 300 and saved["lora"]["energy_saved_wh"] == pytest.approx(8.0)
    assert saved["lora"]["lower_bound"] is False
    assert saved["ia3"]["matches_scratch"] is False


def test_scratch_is_random_weights_with_the_configured_strategy(tiny_recipe, tmp_path):
    recipe = Recipe.from_dict(tiny_recipe("lora"))
    scratch = variant(recipe, SCRATCH, 50, 7, tmp_path / "out", "full", {})
    assert scratch.model.init == "random" and scratch.strategy.name == "full"
    assert scratch.data.max_train_samples == 50 and scratch.training.seed == 7
    own = variant(recipe, "lora", None, 0, tmp_path / "out", "full", {})
    assert own.training.learning_rate == recipe.training.learning_rate  # the recipe's rate is for its strategy
    other = variant(recipe, "full", None, 0, tmp_path / "out", "full", {"full": 2e-3})
    assert other.model.init == "pretrained" and other.training.learning_rate == 2e-3


def test_conflicting_pretraining_is_judged_negative_transfer(tmp_path_factory, tmp_path):
    from adaptkit.compare import compare

    model_dir = sentiment_blind_model(tmp_path_factory)
    recipe = Recipe.from_dict(negative_recipe(tmp_path, model_dir))
    report = compare(recipe, ["full", "frozen_head", SCRATCH], learning_rates={SCRATCH: 3e-3},
                     bootstrap_rounds=300, log=lambda _: None)
    by_name = {r.strategy: r for r in report.rows}
    assert by_name[SCRATCH].metric > 0.9  # the same architecture learns the task from random weights
    assert by_name["full"].metric < 0.7 and by_name["frozen_head"].metric < 0.7
    assert report.verdict == "negative transfer"
    assert report.per_size[0]["ci_high"] < 0
    assert by_name["full"].trainable == by_name[SCRATCH].trainable > 1000 * by_name["frozen_head"].trainable
    saved = json.loads((report.output_dir / "compare.json").read_text())
    assert saved["verdict"] == "negative transfer" and len(saved["runs"]) == 3


def test_cli_compare_writes_table_plot_json_and_html(tmp_path, capsys):
    path = write_recipe(tmp_path / "recipe.yaml", tiny_recipe_dict(
        tmp_path, "full", training={"epochs": 1, "batch_size": 32, "seed": 0, "num_threads": 1}))
    out = tmp_path / "cmp"
    code = main(["compare", str(path), "--strategies", "frozen_head,scratch", "--sizes", "48,96", "--output", str(out),
                 "--bootstrap", "200", "--power-watts", "36"])
    assert code == 0
    stdout = capsys.readouterr().out
    assert "| frozen_head | 48 |" in stdout and "Verdict:" in stdout
    report = json.loads((out / "compare.json").read_text())
    assert [(r["strategy"], r["train_examples"]) for r in report["rows"]] == [
        ("frozen_head", 48), (SCRATCH, 48), ("frozen_head", 96), (SCRATCH, 96)]
    assert report["verdict"] in ("positive transfer", "no clear difference", "negative transfer")
    for run in report["runs"]:
        assert run["energy_method"] == "time x 36 W (given)"
        assert run["energy_wh"] == pytest.approx(run["wall_seconds"] * 36 / 3600, rel=0.5)
    for row in report["rows"]:
        assert row["ci_low"] <= row["metric"] <= row["ci_high"]
    png = (out / "compare.png").read_bytes()
    assert png.startswith(b"\x89PNG")
    page = (out / "report.html").read_text()
    assert base64.b64encode(png).decode() in page and "Verdict:" in page
    assert main(["compare", str(path), "--strategies", "frozen_head,scratch", "--output", str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err


def test_cli_compare_unknown_strategy_exits_2_naming_the_closest(tiny_recipe, tmp_path, capsys):
    path = write_recipe(tmp_path / "recipe.yaml", tiny_recipe("full"))
    assert main(["compare", str(path), "--strategies", "lorra,scratch", "--output", str(tmp_path / "c")]) == 2
    err = capsys.readouterr().err
    assert "unknown strategy 'lorra'" in err and "did you mean 'lora'" in err
    assert not (tmp_path / "c").exists()
    assert main(["compare", str(path), "--strategies", "full,scratch", "--scratch-strategy", "fulll",
                 "--output", str(tmp_path / "c")]) == 2
    assert "did you mean 'full'" in capsys.readouterr().err


@pytest.mark.slow
def test_minilm_on_sst2_is_positive_transfer(tmp_path, monkeypatch):
    """Shipped MiniLM + the quickstart strategy against the same model from random weights: 300 rows, 200 dev rows."""
    from adaptkit.compare import compare
    from adaptkit.recipe import load_recipe

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    recipe = load_recipe(REPO / "recipes" / "quickstart.yaml")
    recipe.data.max_eval_samples = 200
    recipe.training.epochs = 3
    recipe.training.batch_size = 16  # 57 optimizer steps: fewer leave LoRA untrained too, and prove nothing
    recipe.output.dir = tmp_path / "run"
    report = compare(recipe, [recipe.strategy.name, SCRATCH], sizes=[300], bootstrap_rounds=500,
                     log=lambda _: None)
    by_name = {r.strategy: r for r in report.rows}
    assert report.verdict == "positive transfer", report.verdict_detail
    assert by_name[recipe.strategy.name].metric > by_name[SCRATCH].metric + 0.1
    assert (report.output_dir / "report.html").is_file()
