"""``adaptkit predict`` and ``adaptkit.load(run).predict``: input order, accuracy, the CSV written."""
from __future__ import annotations

import csv
import json

import pytest

import adaptkit
from adaptkit.cli import main
from adaptkit.errors import AdaptkitError
from adaptkit.engine.runner import run
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


# ---------------------------------------------------------------------------- faults (issue 14)

def _predict(result, *args: str) -> int:
    return main(["predict", str(result.output_dir), *args])


def test_predict_never_overwrites_a_file_without_overwrite_nor_a_runs_own_files(trained, tmp_path, capsys):
    result, data_dir = trained
    source = str(data_dir / "eval.csv")
    metrics = result.output_dir / "metrics.json"
    before = metrics.read_bytes()
    for extra in ([], ["--overwrite"]):  # the run's metrics.json: never, it would break the run
        assert _predict(result, "--input", source, "--output", str(metrics), *extra) == 2
        assert "files of the adaptkit output" in capsys.readouterr().err
    assert metrics.read_bytes() == before
    assert _predict(result, "--input", source, "--output", source, "--overwrite") == 2
    assert "is the input file" in capsys.readouterr().err
    mine = tmp_path / "mine.csv"
    mine.write_text("precious\n")
    assert _predict(result, "--input", source, "--output", str(mine)) == 2
    assert "already exists; pass --overwrite" in capsys.readouterr().err
    assert mine.read_text() == "precious\n"
    assert _predict(result, "--input", source, "--output", str(mine), "--overwrite") == 0
    assert mine.read_text().startswith("text,label,prediction,score")


def test_default_predictions_in_the_run_folder_are_refused_twice_and_stay_adaptkits(trained, capsys):
    from adaptkit.engine.outputs import foreign_entries

    result, data_dir = trained
    target = result.output_dir / "predictions.csv"
    target.unlink(missing_ok=True)
    assert _predict(result, "--input", str(data_dir / "eval.csv")) == 0
    first = target.read_bytes()
    assert _predict(result, "--input", str(data_dir / "eval.csv")) == 2
    assert "already exists" in capsys.readouterr().err and target.read_bytes() == first
    assert _predict(result, "--input", str(data_dir / "eval.csv"), "--overwrite") == 0
    assert foreign_entries(result.output_dir) == [], "a later run --overwrite may replace its own predictions"
    target.unlink()


def test_input_without_the_text_column_exits_2_naming_file_and_column(trained, tmp_path, capsys):
    result, _ = trained
    source = tmp_path / "rows.csv"
    source.write_text("review,label\na good film,1\n")
    out = tmp_path / "out.csv"
    assert _predict(result, "--input", str(source), "--output", str(out)) == 2
    err = capsys.readouterr().err
    assert f"{source}: lacks the column(s) 'text'" in err and "columns: review, label" in err, err
    assert "Traceback" not in err and not out.exists()
    jsonl = tmp_path / "rows.jsonl"
    jsonl.write_text('{"text": "a good film"}\n{"review": "bad"}\n')
    assert _predict(result, "--input", str(jsonl), "--output", str(out)) == 2
    assert f"{jsonl}:2: row lacks column(s) 'text'" in capsys.readouterr().err
    with pytest.raises(AdaptkitError, match=r"row 2 lacks the column\(s\) 'text'"):
        adaptkit.load(result.output_dir).predict([{"text": "fine"}, {"txt": "bad"}])


@pytest.mark.parametrize("first", [True, False])
def test_a_csv_row_with_an_unquoted_comma_is_an_error_naming_the_line(trained, tmp_path, capsys, first):
    result, _ = trained
    rows = ["a good film,1", "good, but boring,0", "bad plot,0"]
    if first:  # first data row ragged: pandas would take the extra field as an index column
        rows = [rows[1], rows[0], rows[2]]
    source = tmp_path / "rows.csv"
    source.write_text("text,label\n" + "\n".join(rows) + "\n")
    out = tmp_path / "out.csv"
    assert _predict(result, "--input", str(source), "--output", str(out)) == 2
    line = 2 if first else 3
    assert f"{source}:{line}: row has 3 field(s), the header has 2" in capsys.readouterr().err
    assert not out.exists()


def test_pandas_index_columns_are_not_written_back(trained, tmp_path):
    import pandas as pd

    result, _ = trained
    source = tmp_path / "rows.parquet"
    pd.DataFrame({"text": ["a good film", "bad plot"]}, index=[5, 9]).to_parquet(source)
    out = tmp_path / "out.csv"
    assert _predict(result, "--input", str(source), "--output", str(out)) == 0
    with out.open(newline="") as handle:
        written = list(csv.DictReader(handle))
    assert list(written[0]) == ["text", "prediction", "score"]
    assert [row["text"] for row in written] == ["a good film", "bad plot"]


# ---------------------------------------------------------------------------- issue 22: a run folder is data

def _run_with_code(result, tmp_path, recipe_trusts: bool):
    """A copy of the run, as received from someone else: its tokenizer names a Python file of the
    folder (``auto_map``) that leaves a marker when it is imported; its recipe trusts remote code or not."""
    import shutil

    folder = tmp_path / "received"
    shutil.copytree(result.output_dir, folder)
    marker = tmp_path / "code-ran"
    (folder / "tokenizer" / "evil_tokenizer.py").write_text(
        "import pathlib\n"
        f"pathlib.Path({str(marker)!r}).write_text('ran')\n"
        "from transformers import BertTokenizerFast\n\n"
        "class EvilTokenizer(BertTokenizerFast):\n    pass\n")
    config_path = folder / "tokenizer" / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config["auto_map"] = {"AutoTokenizer": [None, "evil_tokenizer.EvilTokenizer"]}
    config_path.write_text(json.dumps(config))
    summary = json.loads((folder / "metrics.json").read_text())
    summary["recipe"]["model"]["trust_remote_code"] = recipe_trusts
    (folder / "metrics.json").write_text(json.dumps(summary))
    return folder, marker


def test_a_run_folder_cannot_allow_its_own_code_only_the_caller_can(trained, tmp_path, capsys):
    result, data_dir = trained
    folder, marker = _run_with_code(result, tmp_path, recipe_trusts=True)
    output = tmp_path / "out.csv"
    assert main(["predict", str(folder), "--input", str(data_dir / "eval.csv"), "--output", str(output)]) == 2
    err = capsys.readouterr().err
    assert "metrics.json: the run's recipe sets model.trust_remote_code: true" in err
    assert "pass --trust-remote-code" in err and "Traceback" not in err
    with pytest.raises(AdaptkitError, match="trust_remote_code=True"):
        adaptkit.load(folder)
    assert not marker.exists() and not output.exists()

    folder_says_no, marker_no = _run_with_code(result, tmp_path / "no", recipe_trusts=False)
    adaptkit.load(folder_says_no)  # the tokenizer's own class is used; its auto_map file is not run
    assert not marker_no.exists()

    assert main(["predict", str(folder), "--input", str(data_dir / "eval.csv"), "--output", str(output),
                 "--trust-remote-code"]) == 0, capsys.readouterr().err
    assert marker.exists(), "asked on the command line, the run's code may run"


def test_predict_leaves_a_users_file_named_like_a_temporary_alone(trained, tmp_path):
    """``preds.csv.tmp`` was predict's fixed temporary name: the user's file there was overwritten and
    renamed to preds.csv."""
    result, data_dir = trained
    mine = tmp_path / "preds.csv.tmp"
    mine.write_text("my scratch file\n")
    assert _predict(result, "--input", str(data_dir / "eval.csv"), "--output", str(tmp_path / "preds.csv")) == 0
    assert mine.read_text() == "my scratch file\n"
    assert (tmp_path / "preds.csv").read_text().startswith("text,label,prediction")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["preds.csv", "preds.csv.tmp"]
