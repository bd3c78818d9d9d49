"""The output folder: standard-tool exports, metrics.json, and never a partial or overwritten folder."""
from __future__ import annotations

import json

import pytest
import torch

from adaptkit.errors import AdaptkitError
from adaptkit.recipe.schema import Recipe
from adaptkit.recipe.loading import load_recipe
from adaptkit.engine.runner import run
from adaptkit.engine.session import Session
from conftest import tiny_recipe_dict

QUIET = {"progress": False, "log": lambda _: None}
TRAINING = {"epochs": 2, "batch_size": 16, "seed": 0, "num_threads": 1, "min_steps": 0}


def _probe(recipe: dict) -> tuple[Session, dict]:
    session = Session(Recipe.from_dict(recipe), log=lambda _: None)
    rows = session.eval_data.select(range(8))
    batch = session.task.collate(session.tokenizer)([rows[i] for i in range(len(rows))])
    return session, {k: v for k, v in batch.items() if k != "labels"}


def test_lora_adapter_and_merged_model_load_with_the_standard_tools(tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification

    recipe = tiny_recipe_dict(tmp_path, "lora", training=TRAINING, output={"dir": str(tmp_path / "run"), "merge": True})
    result = run(recipe, **QUIET)
    session, batch = _probe(recipe)
    with torch.no_grad():
        base_logits = session.build_base().eval()(**batch).logits
        adapter = PeftModel.from_pretrained(session.build_base(), result.output_dir / "adapter").eval()
        adapter_logits = adapter(**batch).logits
        merged = AutoModelForSequenceClassification.from_pretrained(result.output_dir / "model").eval()
        merged_logits = merged(**batch).logits
    assert (result.output_dir / "adapter" / "adapter_model.safetensors").is_file()
    assert (result.output_dir / "model" / "model.safetensors").is_file()
    assert torch.allclose(adapter_logits, merged_logits, atol=1e-4)
    assert not torch.allclose(adapter_logits, base_logits, atol=1e-4), "training changed nothing"
    assert merged.config.id2label == {0: "0", 1: "1"}


def test_full_run_folder_metrics_and_overwrite_rules(tmp_path, monkeypatch):
    from transformers import AutoModelForSequenceClassification

    recipe = tiny_recipe_dict(tmp_path, "full", training=TRAINING)
    result = run(recipe, **QUIET)
    folder = result.output_dir
    metrics = json.loads((folder / "metrics.json").read_text())
    assert [entry["epoch"] for entry in metrics["history"]] == [1, 2]
    assert all({"eval_accuracy", "eval_loss", "train_loss"} <= set(entry) for entry in metrics["history"])
    assert metrics["loss_curve"] and all(point["loss"] > 0 for point in metrics["loss_curve"])
    assert metrics["wall_seconds"] > 0 and metrics["train_seconds"] > 0
    assert 0 < metrics["parameters"]["trainable"] == metrics["parameters"]["total"]
    assert metrics["peak_memory_bytes"] > 0
    assert metrics["eval"]["accuracy"] == metrics["history"][-1]["eval_accuracy"]
    assert load_recipe(folder / "recipe.yaml").training.epochs == 2
    assert "full" in (folder / "README.md").read_text()

    session, batch = _probe(recipe)
    model = AutoModelForSequenceClassification.from_pretrained(folder / "model").eval()
    eval_batch = session.task.collate(session.tokenizer)([session.eval_data[i] for i in range(len(session.eval_data))])
    with torch.no_grad():
        loss = float(model(**eval_batch).loss)
    assert abs(loss - metrics["eval"]["loss"]) < 1e-4, "model/ is not the trained model"

    before = (folder / "metrics.json").read_bytes()
    with pytest.raises(AdaptkitError, match="already holds results.*--overwrite"):
        run(recipe, **QUIET)
    # A failing run with overwrite leaves the previous results exactly as they were.
    import adaptkit.engine.report

    def broken_card(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(adaptkit.engine.report, "model_card", broken_card)
    with pytest.raises(RuntimeError, match="disk full"):
        run(recipe, overwrite=True, **QUIET)
    assert (folder / "metrics.json").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []
    monkeypatch.undo()
    rerun = run({**recipe, "training": {**TRAINING, "epochs": 1}}, overwrite=True, **QUIET)
    assert len(rerun.metrics["history"]) == 1
    assert len(json.loads((folder / "metrics.json").read_text())["history"]) == 1


def test_a_failing_run_leaves_no_output_folder(tmp_path, monkeypatch):
    recipe = tiny_recipe_dict(tmp_path, "full", training={**TRAINING, "epochs": 1, "checkpoint_every_steps": 0})

    def fails(*args, **kwargs):
        raise RuntimeError("export broke")

    import adaptkit.plugin.strategy

    monkeypatch.setattr(adaptkit.plugin.strategy.Strategy, "save", fails)
    with pytest.raises(RuntimeError, match="export broke"):
        run(recipe, **QUIET)
    assert not (tmp_path / "run").exists()
    assert not [p for p in tmp_path.iterdir() if "partial" in p.name]
    # What was trained stays resumable: the end-of-run checkpoint is kept for --resume.
    assert (tmp_path / "run.checkpoints").is_dir()


def test_atomic_file_keeps_the_old_file_when_writing_fails(tmp_path):
    from adaptkit.engine.outputs import atomic_file

    path = tmp_path / "predictions.csv"
    path.write_text("old\n")
    with pytest.raises(RuntimeError):
        with atomic_file(path) as handle:
            handle.write("half of the new")
            raise RuntimeError("disk full")
    assert path.read_text() == "old\n" and sorted(p.name for p in tmp_path.iterdir()) == ["predictions.csv"]
    with atomic_file(path) as handle:
        handle.write("new\n")
    assert path.read_text() == "new\n" and sorted(p.name for p in tmp_path.iterdir()) == ["predictions.csv"]


# ---------------------------------------------------------------------------- issue 22 item 5

def test_schema_output_refuses_an_existing_file_without_overwrite(tmp_path, capsys):
    from adaptkit.cli import main

    target = tmp_path / "schema.json"
    target.write_text("my own schema\n")
    assert main(["schema", "--output", str(target)]) == 2
    err = capsys.readouterr().err
    assert f"--output {target} already exists; pass --overwrite" in err and "Traceback" not in err
    assert target.read_text() == "my own schema\n"
    assert main(["schema", "--output", str(target), "--overwrite"]) == 0
    assert json.loads(target.read_text())["title"] == "adaptkit recipe"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["schema.json"]


def test_atomic_file_never_uses_a_name_a_user_could_own(tmp_path):
    """``preds.csv.tmp`` was the fixed temporary name: a user's file there was overwritten and renamed away."""
    import os
    import stat

    from adaptkit.engine.outputs import atomic_file

    mine = tmp_path / "preds.csv.tmp"
    mine.write_text("my scratch file\n")
    previous = os.umask(0o022)
    try:
        with atomic_file(tmp_path / "preds.csv") as handle:
            handle.write("new\n")
    finally:
        os.umask(previous)
    assert mine.read_text() == "my scratch file\n"
    assert (tmp_path / "preds.csv").read_text() == "new\n"
    assert stat.S_IMODE((tmp_path / "preds.csv").stat().st_mode) == 0o644  # not mkstemp's 0600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["preds.csv", "preds.csv.tmp"]


def test_atomic_file_without_replace_keeps_a_file_that_appeared_while_it_wrote(tmp_path):
    from adaptkit.engine.outputs import atomic_file

    target = tmp_path / "report.json"
    with pytest.raises(AdaptkitError, match="already exists"):
        with atomic_file(target, replace=False) as handle:
            handle.write("{}\n")
            target.write_text("made meanwhile\n")
    assert target.read_text() == "made meanwhile\n" and [p.name for p in tmp_path.iterdir()] == ["report.json"]
    target.unlink()
    with atomic_file(target, replace=False) as handle:
        handle.write("{}\n")
    assert target.read_text() == "{}\n" and [p.name for p in tmp_path.iterdir()] == ["report.json"]
