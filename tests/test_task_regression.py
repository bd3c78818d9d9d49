"""regression end to end: a tiny BERT from a config learns a score, its export predicts what
``adaptkit predict`` does, bad numbers are refused at their line, and every strategy trains it."""
from __future__ import annotations

import random
import re

import pytest

from conftest import MINILM, TINY_BERT, write_recipe, write_table

POSITIVE = ["good", "great", "lovely", "superb"]
NEGATIVE = ["bad", "awful", "poor", "dull"]
FILLER = ["the", "film", "was", "really", "quite", "a", "story", "plot", "and", "acting"]


def scored_rows(count: int, seed: int) -> list[dict]:
    """A rating a tiny model can learn: +1 per positive word, -1 per negative word (-2 to 2)."""
    rng = random.Random(seed)
    rows = []
    for _ in range(count):
        good, bad = rng.randint(0, 2), rng.randint(0, 2)
        words = rng.sample(FILLER, 3) + rng.sample(POSITIVE, good) + rng.sample(NEGATIVE, bad)
        rng.shuffle(words)
        rows.append({"text": " ".join(words), "score": float(good - bad)})
    return rows


def regression_recipe(tmp_path, strategy: str = "full", rows: tuple[int, int] = (128, 48), **training) -> dict:
    folder = tmp_path / strategy
    folder.mkdir(exist_ok=True)
    return {
        "model": {"config": dict(TINY_BERT), "tokenizer": MINILM},
        "task": {"type": "regression", "label_column": "score", "max_length": 24},
        "data": {"train": str(write_table(folder / "train.csv", scored_rows(rows[0], 1))),
                 "eval": str(write_table(folder / "eval.csv", scored_rows(rows[1], 2)))},
        "strategy": {"name": strategy},
        "training": {"epochs": 1, "batch_size": 16, "learning_rate": 1e-3, "seed": 0, "min_steps": 0,
                     "max_steps": 3, **training},
        "output": {"dir": str(folder / "run"), "merge": True},
    }


def test_scores_match_numpy_and_scipy_and_a_constant_prediction_has_no_correlation():
    import numpy
    import torch
    from scipy import stats

    from adaptkit_tasks.regression import Regression

    predicted = torch.tensor([[0.5], [1.0], [3.5], [2.0], [4.0]])
    actual = torch.tensor([0.0, 1.5, 3.0, 2.5, 5.0])
    scores = Regression().compute_metrics(logits=predicted, labels=actual)
    p, a = predicted[:, 0].numpy(), actual.numpy()
    assert scores["mse"] == pytest.approx(float(numpy.mean((p - a) ** 2)))
    assert scores["loss"] == scores["mse"] and scores["rmse"] == pytest.approx(scores["mse"] ** 0.5)
    assert scores["mae"] == pytest.approx(float(numpy.mean(numpy.abs(p - a))))
    assert scores["pearson"] == pytest.approx(stats.pearsonr(p, a)[0])
    assert scores["spearman"] == pytest.approx(stats.spearmanr(p, a)[0])
    assert set(scores) == set(Regression.metric_names)
    flat = Regression().compute_metrics(logits=torch.full((5, 1), 2.0), labels=actual)
    assert flat["pearson"] == 0.0 and flat["spearman"] == 0.0 and flat["mse"] > 0


def test_the_metric_option_sets_the_direction():
    from adaptkit_tasks.regression import Regression

    assert (Regression().primary_metric, Regression().greater_is_better) == ("mse", False)
    spearman = Regression({"metric": "spearman"})
    assert (spearman.primary_metric, spearman.greater_is_better) == ("spearman", True)
    # a number is no class: nothing to stratify on, no class-label rules; the column is still a target
    assert spearman.label_column() is None and spearman.label_rules() is None
    assert spearman.target_columns() == ["label"]


def test_a_cell_that_is_not_a_number_is_refused_with_its_file_and_line(tmp_path):
    from adaptkit.cli.main import main
    from adaptkit.errors import RecipeError
    from adaptkit.recipe.loading import load_recipe

    rows = scored_rows(12, 3)
    rows[6]["score"] = "high"  # line 8 of the CSV (header on line 1)
    recipe = regression_recipe(tmp_path)
    write_table(tmp_path / "full" / "train.csv", rows)
    path = write_recipe(tmp_path / "recipe.yaml", recipe)
    with pytest.raises(RecipeError) as caught:
        load_recipe(path)
    assert re.search(r"train\.csv:8: .*'score' holds 'high', not a number", str(caught.value)), str(caught.value)
    assert main(["validate", str(path)]) == 2


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    import adaptkit

    tmp_path = tmp_path_factory.mktemp("regression")
    recipe = regression_recipe(tmp_path, "full", epochs=8, max_steps=None, learning_rate=3e-3, warmup_ratio=0.0)
    return recipe, adaptkit.run(recipe, progress=False)


@pytest.mark.slow
def test_a_tiny_model_learns_the_score(trained):
    _, result = trained
    assert {"mse", "rmse", "mae", "pearson", "spearman"} <= set(result.eval)
    # the scores' variance is 4/3 (two uniform 0-2 counts): a model that learned nothing has mse >= ~1.3
    assert result.eval["spearman"] > 0.8, result.eval
    assert result.eval["mse"] < 0.6, result.eval
    assert result.metrics["best"]["metric"] == "mse" and result.metrics["best"]["greater_is_better"] is False


@pytest.mark.slow
def test_the_export_predicts_exactly_what_adaptkit_predict_does(trained):
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    import adaptkit

    _, result = trained
    rows = [{"text": row["text"]} for row in scored_rows(10, 7)]
    predicted = adaptkit.load(result.output_dir).predict(rows)
    assert all(set(p) == {"value"} and isinstance(p["value"], float) for p in predicted)
    model = AutoModelForSequenceClassification.from_pretrained(result.output_dir / "model").eval()
    assert model.config.num_labels == 1 and model.config.problem_type == "regression"
    pooling = result.metrics["task_state"]["pooling"]
    if pooling != "pooler":  # the one step the model card names
        adaptkit.apply_pooling(model, pooling)
    tokenizer = AutoTokenizer.from_pretrained(result.output_dir / "tokenizer")
    with torch.no_grad():
        for row, prediction in zip(rows, predicted):
            value = model(**tokenizer(row["text"], return_tensors="pt", truncation=True, max_length=24)).logits
            assert float(value[0, 0]) == pytest.approx(prediction["value"], abs=1e-5)


STRATEGIES = ["full", "lora", "ia3", "adapters", "partial_freeze", "frozen_head", "qlora"]


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_every_strategy_trains_a_regression_head(tmp_path, strategy):
    import adaptkit

    if strategy == "qlora":
        pytest.importorskip("bitsandbytes", reason="qlora needs bitsandbytes")
    result = adaptkit.run(regression_recipe(tmp_path, strategy, rows=(48, 16)), progress=False)
    assert result.metrics["strategy"] == strategy
    assert len(result.metrics["loss_curve"]) >= 1 and result.metrics["budget"]["total_steps"] == 3
    assert result.eval["mse"] > 0 and -1.0 <= result.eval["spearman"] <= 1.0
    assert any(line.startswith("export") for line in result.metrics["contract"]), result.metrics["contract"]

