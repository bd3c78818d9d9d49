"""The judge on a regression task: compare's verdicts in MSE (lower is better) and in Spearman (higher
is better) with the paired differences signed so that positive always favours the transfer arm, the
ridge baseline, and advise's probe that is a regressor."""
from __future__ import annotations

import pytest

from conftest import MINILM, TINY_BERT, as_checkpoint, write_table
from test_task_regression import scored_rows


def regression_recipe(folder, metric: str) -> dict:
    folder.mkdir(parents=True, exist_ok=True)
    return {
        "model": {"config": dict(TINY_BERT), "tokenizer": MINILM},
        "task": {"type": "regression", "label_column": "score", "max_length": 24, "metric": metric},
        "data": {"train": str(write_table(folder / "train.csv", scored_rows(96, 1))),
                 "eval": str(write_table(folder / "eval.csv", scored_rows(40, 2)))},
        "strategy": {"name": "full"},
        "training": {"epochs": 1, "batch_size": 16, "learning_rate": 1e-3, "seed": 0, "min_steps": 0,
                     "max_steps": 4},
        "output": {"dir": str(folder / "run")},
    }


@pytest.mark.parametrize("metric, greater", [("mse", False), ("spearman", True)])
def test_compare_judges_in_the_task_metric_in_its_direction(tmp_path, metric, greater):
    from adaptkit.judge.compare import compare
    from adaptkit.judge.tuning import SCRATCH

    recipe = as_checkpoint(regression_recipe(tmp_path, metric), tmp_path / "pretrained")
    report = compare(recipe, ["full", SCRATCH], trials=1, bootstrap_rounds=200, output_dir=tmp_path / "compare",
                     log=lambda _: None)
    assert report.metric == metric and report.greater_is_better is greater
    assert {row.strategy for row in report.rows} == {"full", SCRATCH, "ngram_ridge"}
    assert report.arm_kinds["ngram_ridge"] == "baseline"
    by_name = {row.strategy: row for row in report.rows}
    entry = report.per_size[-1]
    best = by_name[entry["best_transfer"]]
    for side in ("versus_scratch", "versus_best_without_pretraining"):
        versus = entry[side]
        other = by_name[versus["reference"]]
        # positive favours the transfer arm whichever way the metric points
        signed = (best.metric - other.metric) if greater else (other.metric - best.metric)
        assert versus["difference"] == pytest.approx(signed, abs=1e-4)
        assert versus["sign"] == (1 if versus["ci_low"] > 0 else -1 if versus["ci_high"] < 0 else 0)
    # the baseline on a bag of words learns these word-count scores; its row shows the other side's figure
    ridge = by_name["ngram_ridge"]
    assert ridge.secondary_metric == ("spearman" if metric == "mse" else "mse") and ridge.secondary is not None
    assert ridge.metric < report.trivial_scores["training_mean"] if not greater else ridge.metric > 0.5
    if not greater:  # the eval scores' variance is 1.17: the training mean predicts about that (class indices: 3.5)
        assert 1.0 < report.trivial_scores["training_mean"] < 1.4, report.trivial_scores
    table = (tmp_path / "compare" / "table.md").read_text()
    assert f"{metric} (95% CI; {'higher' if greater else 'lower'} is better)" in table
    assert "predicting the training mean" in table
    assert report.headline and metric in report.headline


def test_numbers_are_never_stratified_as_classes():
    import datasets

    from adaptkit.judge.compare import class_column

    assert class_column(datasets.Dataset.from_dict({"labels": [0, 1, 1, 0]})) == "labels"
    assert class_column(datasets.Dataset.from_dict({"labels": [-2.0, 1.5, 0.0, 3.0]})) is None
    assert class_column(datasets.Dataset.from_dict({"labels": [[0, 1], [1, 0]]})) is None
    assert class_column(datasets.Dataset.from_dict({"text": ["a"]})) is None


def test_a_constant_regression_output_did_not_learn():
    import torch

    from adaptkit.judge.compare import distinct_predictions

    labels = torch.tensor([0.0, 1.0, 2.0, 3.0])
    assert distinct_predictions({"logits": torch.full((4, 1), 1.5), "labels": labels}) == 1
    assert distinct_predictions({"logits": labels.reshape(4, 1) * 0.5, "labels": labels}) is None
    assert distinct_predictions({"logits": torch.eye(4)[:, :2], "labels": torch.tensor([0, 1, 0, 0])}) == 2


def test_the_ridge_baseline_chooses_alpha_by_the_verdict_metric_and_scores_one_column():
    import datasets
    from scipy import stats

    from adaptkit import BaselineRows
    from adaptkit_baselines.ridge import NgramRidge
    from adaptkit_tasks.regression import Regression

    task = Regression({"label_column": "score"})
    train, test = scored_rows(80, 3), scored_rows(30, 4)
    baseline = NgramRidge()
    assert baseline.serves(task) is None and baseline.serves(type("T", (), {"name": "causal_lm"})()) is not None
    baseline.fit(task, BaselineRows(rows=datasets.Dataset.from_list(train), targets=[r["score"] for r in train]),
                 "spearman", 0)
    scores = baseline.scores(task, BaselineRows(rows=datasets.Dataset.from_list(test)))
    assert scores.shape == (30, 1)
    assert stats.spearmanr(scores[:, 0].numpy(), [r["score"] for r in test])[0] > 0.7
    assert baseline.summary()["alpha"] in (0.01, 0.1, 1.0, 10.0, 100.0) and "cv_spearman" in baseline.summary()


@pytest.mark.slow
def test_advise_probes_a_regression_with_a_ridge_regressor(tmp_path):
    """MiniLM's pretrained features predict the word-count score; advise reads it with a ridge probe in
    Spearman, beside the ridge baseline cross-validated in the same metric."""
    from adaptkit.judge.advise import advise, render
    from adaptkit.recipe.schema import Recipe

    recipe = regression_recipe(tmp_path, "mse")
    recipe["model"] = {"name": MINILM}
    report = advise(Recipe.from_dict(recipe), strategies=["frozen_head"], probe_steps=0, max_feature_rows=96,
                    folds=3, log=lambda _: None)
    transfer = report.transferability
    assert transfer["probe_metric"] == "spearman" and "probe_accuracy" not in transfer["pretrained"]
    assert transfer["pretrained"]["h_score"] is None and "classes" in transfer["h_score_withheld"]
    assert -1 <= transfer["random"]["probe_spearman"] <= 1
    assert transfer["pretrained"]["probe_spearman"] > 0.5, transfer
    assert "spearman" in report.findings[0]
    ridge = report.baselines["ngram_ridge"]
    assert report.baselines["metric"] == "mse" and ridge["spearman"] > 0.5 and ridge["mse"] > 0
    assert "not assessed" not in report.transfer_verdict
    assert render(report)  # the tables name the probe's metric without a KeyError
