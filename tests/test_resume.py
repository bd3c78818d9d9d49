"""Checkpoints and resume: a run killed mid-training resumes to exactly the uninterrupted result."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from adaptkit.engine.checkpoint import COMPLETE, STATE_FILE, checkpoint_root, complete_checkpoints, latest_checkpoint
from adaptkit.errors import AdaptkitError
from adaptkit.engine.runner import run
from conftest import REPO, sentiment_rows, tiny_recipe_dict, write_recipe, write_table

# 160 rows in batches of 4: 40 optimizer steps per epoch, 120 in all; a checkpoint every 7. The kill
# comes at the first checkpoint (step 7, in epoch 1), so the resumed run still crosses two epoch ends.
RESUME_TRAINING = {"epochs": 3, "batch_size": 4, "learning_rate": 1e-3, "seed": 3, "num_threads": 1,
                   "checkpoint_every_steps": 7, "keep_checkpoints": 2}


def _recipe(tmp_path: Path, out: str, **training) -> dict:
    recipe = tiny_recipe_dict(tmp_path, "full", training={**RESUME_TRAINING, **training},
                              output={"dir": str(tmp_path / out)})
    write_table(tmp_path / "train.csv", sentiment_rows(160, seed=1))  # more steps than the default 96 rows
    return recipe


def _weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run_dir / "model" / "model.safetensors"))


def _fake_incomplete(root: Path, step: int) -> Path:
    """A newer checkpoint cut off before its COMPLETE marker, and a temporary folder."""
    fake = root / f"step-{step:08d}"
    fake.mkdir(parents=True)
    (fake / STATE_FILE).write_text(json.dumps({"step": step}))
    (root / f".tmp-step-{step + 1:08d}").mkdir()
    return fake


def test_killed_run_resumes_to_the_exact_uninterrupted_weights(tmp_path, capsys):
    recipe = _recipe(tmp_path, "killed")
    path = write_recipe(tmp_path / "recipe.yaml", recipe)
    root = checkpoint_root(tmp_path / "killed")
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen([sys.executable, "-m", "adaptkit", "run", str(path), "--no-progress"],
                               cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while latest_checkpoint(root) is None:
            assert process.poll() is None, process.stdout.read().decode()
            assert time.monotonic() < deadline, "no checkpoint appeared"
            time.sleep(0.02)
        process.send_signal(signal.SIGKILL)
    finally:
        process.wait()
    assert process.returncode == -signal.SIGKILL
    assert not (tmp_path / "killed").exists(), "the killed run must leave no output folder"
    killed_at = json.loads((latest_checkpoint(root) / STATE_FILE).read_text())["step"]
    assert killed_at < 120, "the run finished before it was killed; the test proves nothing"
    _fake_incomplete(root, 999)  # newer than any real one, but half-written: must be ignored

    # The resume is the CLI in this process: it knows only what the killed process left on disk
    # (a second interpreter would add its start-up time and prove nothing more).
    from adaptkit.cli import main

    capsys.readouterr()
    code = main(["run", str(path), "--resume", "--no-progress"])
    stderr = capsys.readouterr().err
    assert code == 0, stderr[-3000:]
    assert "resuming from step-" in stderr
    assert "step-00000999" not in stderr
    metrics = json.loads((tmp_path / "killed" / "metrics.json").read_text())
    assert metrics["resumed_from_step"] is not None and metrics["resumed_from_step"] >= killed_at
    assert not root.exists(), "a finished run removes its checkpoints"

    reference = run(_recipe(tmp_path, "uninterrupted"), progress=False, log=lambda _: None)
    assert reference.metrics["resumed_from_step"] is None
    ours, theirs = _weights(tmp_path / "killed"), _weights(tmp_path / "uninterrupted")
    assert ours.keys() == theirs.keys()
    different = [name for name in ours if not torch.equal(ours[name], theirs[name])]
    assert not different, f"resumed weights differ from the uninterrupted run: {different[:5]}"
    assert metrics["history"] == reference.metrics["history"]
    assert metrics["loss_curve"] == reference.metrics["loss_curve"]


def test_incomplete_and_temporary_checkpoints_are_never_picked(tmp_path):
    root = tmp_path / "run.checkpoints"
    good = root / "step-00000005"
    good.mkdir(parents=True)
    (good / STATE_FILE).write_text(json.dumps({"step": 5}))
    (good / COMPLETE).write_text("step 5\n")
    _fake_incomplete(root, 40)
    (root / "step-00000050").mkdir()  # a marker but no state: not complete either
    (root / "step-00000050" / COMPLETE).write_text("")
    assert complete_checkpoints(root) == [good]
    assert latest_checkpoint(root) == good


def test_resume_refuses_a_different_recipe_and_a_fresh_run_refuses_old_checkpoints(tmp_path, monkeypatch):
    recipe = tiny_recipe_dict(tmp_path, "full", training={"epochs": 2, "batch_size": 16, "seed": 0,
                                                          "checkpoint_every_steps": 3, "num_threads": 1})
    root = checkpoint_root(Path(recipe["output"]["dir"]))
    with pytest.raises(AdaptkitError, match="no complete checkpoint"):
        run(recipe, progress=False, log=lambda _: None, resume=True)

    # Leave checkpoints behind as a killed run would: crash after training, before the export.
    from adaptkit.plugin import contract
    def crash(model, batch):
        raise RuntimeError("simulated crash")

    monkeypatch.setattr(contract, "model_outputs", crash)
    with pytest.raises(RuntimeError, match="simulated crash"):
        run(recipe, progress=False, log=lambda _: None)
    monkeypatch.undo()
    assert latest_checkpoint(root) is not None
    assert not Path(recipe["output"]["dir"]).exists()

    with pytest.raises(AdaptkitError, match="--resume"):
        run(recipe, progress=False, log=lambda _: None)
    changed = {**recipe, "training": {**recipe["training"], "learning_rate": 5e-4}}
    with pytest.raises(AdaptkitError, match=r"training\.learning_rate: 0\.001 in the checkpoint, 0\.0005 now"):
        run(changed, progress=False, log=lambda _: None, resume=True)

    # The same recipe resumes from the end-of-run checkpoint without training again.
    result = run(recipe, progress=False, log=lambda _: None, resume=True)
    assert result.metrics["resumed_from_step"] == result.metrics["steps"]
    assert len(result.metrics["history"]) == 2


def test_resume_keeps_the_best_epoch_and_early_stopping_state(tmp_path, monkeypatch):
    import adaptkit.engine.train

    training = {"epochs": 5, "batch_size": 16, "seed": 0, "num_threads": 1, "metric_for_best": "loss",
                "greater_is_better": True, "early_stopping_patience": 2, "load_best_at_end": True}
    crashed = tiny_recipe_dict(tmp_path, "full", training=training, output={"dir": str(tmp_path / "crashed")})
    real, calls = adaptkit.engine.train.evaluate, {"n": 0}

    def crash_at_third_evaluation(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("killed")
        return real(*args, **kwargs)

    monkeypatch.setattr(adaptkit.engine.train, "evaluate", crash_at_third_evaluation)
    with pytest.raises(RuntimeError, match="killed"):
        run(crashed, progress=False, log=lambda _: None)
    monkeypatch.undo()
    root = checkpoint_root(tmp_path / "crashed")
    assert json.loads((latest_checkpoint(root) / STATE_FILE).read_text())["best"]["path"] is not None
    resumed = run(crashed, progress=False, log=lambda _: None, resume=True).metrics
    reference = run({**crashed, "output": {"dir": str(tmp_path / "reference")}}, progress=False,
                    log=lambda _: None).metrics
    assert resumed["resumed_from_step"] is not None and reference["resumed_from_step"] is None
    assert resumed["history"] == reference["history"]
    assert resumed["best"] == reference["best"] and resumed["exported_epoch"] == reference["exported_epoch"]
    assert resumed["stopped_early_after_epoch"] == reference["stopped_early_after_epoch"]
    assert resumed["exported_epoch"] != len(resumed["history"]), "the test needs the best epoch to be an early one"
    ours, theirs = _weights(tmp_path / "crashed"), _weights(tmp_path / "reference")
    assert all(torch.equal(ours[name], theirs[name]) for name in theirs)


def test_lora_with_accumulation_resumes_mid_epoch_exactly(tmp_path, monkeypatch):
    """Crash right after a mid-epoch checkpoint (LoRA dropout, accumulation, plain random order)."""
    from adaptkit.engine.checkpoint import Checkpointer

    training = {"epochs": 2, "batch_size": 8, "gradient_accumulation_steps": 2, "group_by_length": False,
                "seed": 5, "num_threads": 1, "checkpoint_every_steps": 4}
    crashed = tiny_recipe_dict(tmp_path, "lora", training=training, output={"dir": str(tmp_path / "crashed")})
    real_save, saves = Checkpointer.save, {"n": 0}

    def save_then_die(self, state):
        path = real_save(self, state)
        saves["n"] += 1
        if saves["n"] == 2:  # step 8 of 12: the middle of epoch 2
            raise RuntimeError("killed")
        return path

    monkeypatch.setattr(Checkpointer, "save", save_then_die)
    with pytest.raises(RuntimeError, match="killed"):
        run(crashed, progress=False, log=lambda _: None)
    monkeypatch.undo()
    state = json.loads((latest_checkpoint(checkpoint_root(tmp_path / "crashed")) / STATE_FILE).read_text())
    assert (state["step"], state["epoch"], state["batches_done"]) == (8, 1, 4)
    resumed = run(crashed, progress=False, log=lambda _: None, resume=True).metrics
    reference = run({**crashed, "output": {"dir": str(tmp_path / "reference")}}, progress=False,
                    log=lambda _: None).metrics
    assert resumed["resumed_from_step"] == 8
    assert resumed["history"] == reference["history"] and resumed["loss_curve"] == reference["loss_curve"]
    ours = load_file(str(tmp_path / "crashed" / "adapter" / "adapter_model.safetensors"))
    theirs = load_file(str(tmp_path / "reference" / "adapter" / "adapter_model.safetensors"))
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[name], theirs[name]) for name in theirs)
