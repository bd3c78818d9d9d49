"""The training loop: best epoch and early stopping, trackers, precision on a CPU, tokenization cache."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import torch

import adaptkit
from adaptkit.recipe.schema import Recipe, TrainingSection
from adaptkit.engine.runner import run
from adaptkit.engine.session import Session
from adaptkit.engine.train import make_accelerator
from conftest import REPO, tiny_recipe_dict

QUIET = {"progress": False, "log": lambda _: None}


def _eval_loss(run_dir: Path, eval_file: Path) -> float:
    """Mean eval loss of the exported model, recomputed from the run folder."""
    from adaptkit.engine.data import load_table

    predictor = adaptkit.load(run_dir)
    encoded = predictor.task.preprocess(load_table(eval_file), predictor.tokenizer)
    batch = predictor.task.collate(predictor.tokenizer)([encoded[i] for i in range(len(encoded))])
    predictor.model.eval()
    with torch.no_grad():
        return float(predictor.model(**batch).loss)


def test_early_stopping_exports_the_best_epoch(tmp_path):
    # "Best" = highest eval loss: epoch 1 in practice, so stopping and reloading both matter.
    recipe = tiny_recipe_dict(tmp_path, "full", training={
        "epochs": 6, "batch_size": 16, "learning_rate": 1e-3, "seed": 0, "num_threads": 1,
        "metric_for_best": "eval_loss", "greater_is_better": True, "early_stopping_patience": 1,
        "load_best_at_end": True})
    metrics = run(recipe, **QUIET).metrics
    history = metrics["history"]
    losses = [entry["eval_loss"] for entry in history]
    best_epoch = max(range(len(losses)), key=losses.__getitem__) + 1
    assert len(history) < 6 and metrics["stopped_early_after_epoch"] == len(history)
    assert metrics["best"]["epoch"] == best_epoch == metrics["exported_epoch"]
    assert best_epoch != len(history), "the last epoch was best: the test would not show a reload"
    assert metrics["best"]["metric"] == "loss" and metrics["best"]["value"] == losses[best_epoch - 1]
    assert metrics["eval"]["loss"] == losses[best_epoch - 1]
    recomputed = _eval_loss(Path(recipe["output"]["dir"]), tmp_path / "eval.csv")
    assert abs(recomputed - losses[best_epoch - 1]) < 1e-4
    assert abs(recomputed - losses[-1]) > 1e-4
    assert not Path(recipe["output"]["dir"] + ".checkpoints").exists()


def test_best_epoch_is_reported_without_reloading(tmp_path):
    recipe = tiny_recipe_dict(tmp_path, "full", training={"epochs": 2, "batch_size": 16, "seed": 0,
                                                          "num_threads": 1, "checkpoint_every_steps": 0})
    metrics = run(recipe, **QUIET).metrics
    accuracies = [entry["eval_accuracy"] for entry in metrics["history"]]
    assert metrics["best"]["metric"] == "accuracy" and metrics["best"]["greater_is_better"] is True
    assert metrics["best"]["value"] == max(accuracies)
    assert metrics["exported_epoch"] == 2 and metrics["eval"]["accuracy"] == accuracies[-1]


def test_bf16_on_cpu_trains_and_tensorboard_gets_loss_and_metrics(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    recipe = tiny_recipe_dict(tmp_path, "lora", training={
        "epochs": 2, "batch_size": 16, "seed": 0, "num_threads": 1, "mixed_precision": "bf16", "device": "cpu",
        "report_to": ["tensorboard"]})
    result = run(recipe, **QUIET)
    assert result.metrics["device"] == "cpu" and result.metrics["mixed_precision"] == "bf16"
    assert all(torch.isfinite(torch.tensor(entry["train_loss"])) for entry in result.metrics["history"])
    events = list((result.output_dir / "logs").rglob("events.out.tfevents.*"))
    assert events, "no tensorboard event file in the run folder"
    scalars: dict[str, list] = {}
    for event_file in events:
        accumulator = EventAccumulator(str(event_file))
        accumulator.Reload()
        for tag in accumulator.Tags()["scalars"]:
            scalars.setdefault(tag, []).extend(accumulator.Scalars(tag))
    assert "train/loss" in scalars and "eval/accuracy" in scalars and "eval/loss" in scalars
    assert [e.step for e in scalars["eval/accuracy"]] == [entry["step"] for entry in result.metrics["history"]]
    assert abs(scalars["eval/accuracy"][-1].value - result.metrics["history"][-1]["eval_accuracy"]) < 1e-6
    assert [round(e.value, 5) for e in scalars["train/loss"]] == [round(p["loss"], 5) for p in result.metrics["loss_curve"]]


def test_fp16_on_cpu_falls_back_to_fp32_with_a_clear_message():
    messages: list[str] = []
    accelerator = make_accelerator(TrainingSection(mixed_precision="fp16", device="cpu"), messages.append)
    assert accelerator.mixed_precision == "no"
    assert any("fp16 needs a GPU" in m and "bf16" in m for m in messages)
    # A second accelerator with another precision in the same process must not be refused.
    assert make_accelerator(TrainingSection(mixed_precision="bf16", device="cpu"), messages.append).mixed_precision == "bf16"


def test_auto_precision_is_bf16_only_where_the_device_computes_it_natively(monkeypatch):
    from adaptkit.engine import device

    for amx, expected in ((True, "bf16"), (False, "no")):
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda amx=amx: amx)
        section = TrainingSection(mixed_precision="auto", device="cpu")
        assert device.mixed_precision(section) == expected
        assert make_accelerator(section, print).mixed_precision == expected
    monkeypatch.delattr(torch.cpu, "_is_amx_tile_supported")  # a torch without the probe: no bf16 guess
    assert device.mixed_precision(TrainingSection(mixed_precision="auto", device="cpu")) == "no"
    # an explicit choice is kept whatever the hardware
    assert device.mixed_precision(TrainingSection(mixed_precision="bf16", device="cpu")) == "bf16"


def test_compile_sends_the_training_forward_through_torch_compile_and_trains_the_same(tmp_path, monkeypatch):
    """training.compile: the training steps run a torch.compile'd forward of the same model. Inductor's
    minutes of compilation are torch's to test: here dynamo traces with its eager backend, which must
    reproduce the eager run's losses and weights."""

    compiled: list = []
    real_compile = torch.compile

    def traced(model, **options):
        compiled.append((type(model).__name__, options))
        return real_compile(model, **{**options, "backend": "eager"})

    training = {"epochs": 1, "batch_size": 16, "seed": 0, "num_threads": 1, "min_steps": 0, "max_steps": 4}
    eager = run(tiny_recipe_dict(tmp_path, "lora", training=training, output={"dir": str(tmp_path / "eager")}),
                **QUIET)
    monkeypatch.setattr(torch, "compile", traced)
    fast = run(tiny_recipe_dict(tmp_path, "lora", training={**training, "compile": True},
                                output={"dir": str(tmp_path / "compiled")}), **QUIET)
    assert len(compiled) == 1 and compiled[0][1] == {"dynamic": True}, compiled
    assert [round(p["loss"], 6) for p in fast.metrics["loss_curve"]] == \
        [round(p["loss"], 6) for p in eager.metrics["loss_curve"]]
    assert fast.eval["accuracy"] == eager.eval["accuracy"]
    assert any(line.startswith("export") for line in fast.metrics["contract"])


def test_second_run_reuses_the_tokenized_cache(tmp_path, monkeypatch):
    from transformers.tokenization_utils_base import PreTrainedTokenizerBase

    data = tiny_recipe_dict(tmp_path, "full")  # written once: datasets keys its cache on file times too
    recipe = Recipe.from_dict(data)
    calls = {"n": 0}
    original = PreTrainedTokenizerBase.__call__

    def counting(self, *args, **kwargs):
        calls["n"] += 1
        return original(self, *args, **kwargs)

    monkeypatch.setattr(PreTrainedTokenizerBase, "__call__", counting)
    first = Session(recipe, log=lambda _: None)
    first.train_data, first.eval_data  # preprocessed when first asked for (plan never asks)
    assert calls["n"] > 0, "the first session should tokenize"
    assert first.train_data.cache_files and Path(first.train_data.cache_files[0]["filename"]).is_file()
    calls["n"] = 0
    second = Session(recipe, log=lambda _: None)
    second.train_data, second.eval_data
    assert calls["n"] == 0, "the second session tokenized again instead of using the datasets cache"
    assert second.train_data._fingerprint == first.train_data._fingerprint
    # A new process (a second `adaptkit run`) computes the same fingerprint, so it hits the cache too.
    script = ("import sys; from adaptkit.recipe.schema import Recipe; from adaptkit.engine.session import Session; import json;"
              f"r = Recipe.from_dict(json.loads(sys.argv[1])); s = Session(r, log=lambda _: None);"
              "print(s.train_data._fingerprint, s.eval_data._fingerprint)")
    out = subprocess.run([sys.executable, "-c", script, json.dumps(data)],
                         capture_output=True, text=True, cwd=REPO, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == [first.train_data._fingerprint, first.eval_data._fingerprint]
