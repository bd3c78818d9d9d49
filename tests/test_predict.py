"""``adaptkit predict`` and ``adaptkit.load(run).predict``: input order, accuracy, the CSV written."""
from __future__ import annotations

import csv
import json

import pytest

import adaptkit
from adaptkit.cli import main
from adaptkit.errors import AdaptkitError
from adaptkit.runner import run
from conftest import sentiment_rows, tiny_recipe_dict


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("predict")
    recipe = tiny_recipe_dict(tmp_path, "full", training={"epochs": 3, "batch_size": 16, "seed": 0, "num_threads": 1,
                                                          "checkpoint_every_steps": 0})
    result = run(recipe, progress=False, log=lambda _: None)
    return result, tmp_path


def test_load_predicts_in_input_order_with_the_runs_accuracy(trained):
    result, tmp_path = trained
    rows = [{"text": row["text"]} for row in sentiment_rows(32, seed=2)]  # the eval file's rows
    labels = [str(row["label"]) for row in sentiment_rows(32, seed=2)]
    predictor = adaptkit.load(result.output_dir)
    predictions = predictor.predict(rows)
    assert len(predictions) == len(rows)
    accuracy = sum(p["label"] == y for p, y in zip(predictions, labels)) / len(labels)
    assert accuracy == pytest.approx(result.metrics["eval"]["accuracy"])
    assert accuracy > 0.5, "the model learned nothing: order mistakes would go unnoticed"
    reversed_predictions = predictor.predict(list(reversed(rows)))
    assert reversed_predictions == list(reversed(predictions))
    alone = [predictor.predict([row])[0] for row in rows[:4]]
    assert [p["label"] for p in alone] == [p["label"] for p in predictions[:4]]
    assert [p["score"] for p in alone] == pytest.approx([p["score"] for p in predictions[:4]], abs=1e-5)


def test_cli_writes_a_prediction_column_in_input_order(trained, tmp_path, capsys):
    result, data_dir = trained
    output = tmp_path / "predictions.csv"
    assert main(["predict", str(result.output_dir), "--input", str(data_dir / "eval.csv"), "--output", str(output)]) == 0
    assert "wrote 32 predictions" in capsys.readouterr().out
    with output.open(newline="") as handle:
        written = list(csv.DictReader(handle))
    with (data_dir / "eval.csv").open(newline="") as handle:
        source = list(csv.DictReader(handle))
    assert {"text", "label", "prediction", "score"} <= set(written[0])
    assert [row["text"] for row in written] == [row["text"] for row in source]
    accuracy = sum(row["prediction"] == row["label"] for row in written) / len(written)
    assert accuracy == pytest.approx(json.loads((result.output_dir / "metrics.json").read_text())["eval"]["accuracy"])


def test_a_folder_that_is_not_a_run_is_refused(tmp_path):
    with pytest.raises(AdaptkitError, match="not an adaptkit run folder"):
        adaptkit.load(tmp_path)
