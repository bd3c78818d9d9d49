"""Trackers and the progress display: MLflow (real, local file store) gets the metrics and the recipe;
the progress line carries smoothed loss, lr, epoch, eval metric and time left; a summary table ends it."""
from __future__ import annotations

import importlib.util

import pytest

from adaptkit.errors import RecipeError
from adaptkit.recipe.schema import Recipe
from adaptkit.engine.runner import run
from conftest import tiny_recipe_dict

TRAINING = {"epochs": 2, "batch_size": 16, "seed": 0, "num_threads": 1, "min_steps": 0}


@pytest.mark.skipif(importlib.util.find_spec("mlflow") is None, reason="mlflow is not installed")
def test_mlflow_local_store_gets_losses_eval_metrics_and_the_recipe(tmp_path, monkeypatch):
    import mlflow

    store = (tmp_path / "mlruns").as_uri()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 keeps the file store behind this switch
    recipe = tiny_recipe_dict(tmp_path, "lora", training={**TRAINING, "report_to": ["mlflow"]})
    result = run(recipe, progress=False, log=lambda _: None)
    client = mlflow.tracking.MlflowClient(tracking_uri=store)
    runs = [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])]
    assert len(runs) == 1
    data = runs[0].data
    assert data.metrics["eval/accuracy"] == pytest.approx(result.metrics["history"][-1]["eval_accuracy"])
    assert "train/loss" in data.metrics and "train/learning_rate" in data.metrics
    assert data.params["strategy.name"] == "lora" and data.params["training.batch_size"] == "16"
    history = client.get_metric_history(runs[0].info.run_id, "eval/accuracy")
    assert len(history) == 2, "one point per epoch"


def test_a_tracker_that_is_not_installed_is_refused_by_name():
    recipe = tiny_recipe_dict(__import__("pathlib").Path("/tmp"), "lora")
    recipe["training"] = {"report_to": ["tensorboard", "swanlab"]}
    if importlib.util.find_spec("swanlab") is not None:
        pytest.skip("swanlab is installed here")
    with pytest.raises((RecipeError, ValueError), match="tracker swanlab not installed: pip install swanlab"):
        Recipe.from_dict(recipe)


def test_piped_progress_lines_and_the_summary_table(tmp_path, capsys):
    recipe = tiny_recipe_dict(tmp_path, "full", training={**TRAINING, "epochs": 3})
    run(recipe, progress=True, log=lambda _: None)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("step ")]
    assert [line.split()[1] for line in lines] == ["10/18", "18/18"], lines  # every LOG_EVERY steps and the last
    assert "loss " in lines[0] and "lr " in lines[0] and "epoch 2/3" in lines[0] and "eval accuracy" in lines[0]
    assert "left" in lines[0]
    assert "training summary" in err and err.count("│ 1 ") + err.count("┃ 1 ") >= 1


def test_the_terminal_line_smooths_every_step():
    import torch

    from adaptkit.engine.train import _Progress

    bar = _Progress(total=5, enabled=True, epochs=1, metric="accuracy")
    bar.bar = type("Bar", (), {"update": lambda self, *a, **k: None, "stop": lambda self: None})()
    bar.task = 0
    bar.update(0)
    for step, loss in enumerate([1.0, 0.0, 0.0], start=1):
        bar.step(step, torch.tensor(loss), lr=1e-3, epoch=0)
    assert bar.smoothed == pytest.approx(0.81)  # 1 -> 0.9 -> 0.81
    bar.evaluated({"accuracy": 0.75})
    assert bar.info() == "loss 0.8100  lr 1.00e-03  epoch 1/1  eval accuracy 0.7500"


@pytest.mark.skipif(importlib.util.find_spec("mlflow") is None, reason="mlflow is not installed")
def test_mlflow_without_a_tracking_uri_keeps_its_store_in_the_run_folder(tmp_path, monkeypatch):
    """MLflow's default store was mlflow.db (954 KB) and mlruns/ in the working directory (issue 22, item 11)."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "x")  # restored to whatever it was when the test ends
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    result = run(tiny_recipe_dict(tmp_path, "full", training={**TRAINING, "epochs": 1, "report_to": ["mlflow"]}),
                 progress=False, log=lambda _: None)
    assert list(cwd.iterdir()) == []
    assert (result.output_dir / "logs" / "mlflow.db").is_file()
