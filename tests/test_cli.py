"""The command line: fast start-up, thin commands, clear failures."""
from __future__ import annotations

import json
import subprocess
import sys

from adaptkit.cli import main
from conftest import as_checkpoint, write_recipe


def test_help_answers_without_importing_torch():
    code = ("import sys; from adaptkit.cli import main\n"
            "try:\n    main(['--help'])\nexcept SystemExit as e:\n    code = e.code\n"
            "sys.exit(code if 'torch' not in sys.modules else 99)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    for command in ("run", "validate", "schema", "plugins", "predict"):
        assert command in done.stdout


def test_plugins_and_schema_do_not_import_torch():
    code = ("import sys, io, contextlib; from adaptkit.cli import main\n"
            "with contextlib.redirect_stdout(io.StringIO()):\n    main(['plugins']); main(['schema'])\n"
            "sys.exit(0 if 'torch' not in sys.modules else 99)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_run_writes_a_complete_output_folder(tiny_recipe, tmp_path, capsys):
    recipe = write_recipe(tmp_path / "recipe.yaml", tiny_recipe("lora", training={"epochs": 1}))
    assert main(["run", str(recipe), "--no-progress"]) == 0
    out = tmp_path / "run"
    assert {"adapter", "metrics.json", "recipe.yaml", "README.md", "tokenizer"} <= {p.name for p in out.iterdir()}
    assert (out / "adapter" / "adapter_model.safetensors").is_file()
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["eval"]) >= {"accuracy", "macro_f1", "loss"}
    assert 0 < metrics["parameters"]["trainable"] < metrics["parameters"]["total"]
    assert "done in" in capsys.readouterr().out
    # a second run into the same folder is refused, and the first results survive
    assert main(["run", str(recipe), "--no-progress"]) == 2
    assert "already holds results" in capsys.readouterr().err
    assert (out / "metrics.json").is_file()


def test_run_of_a_hub_id_offline_exits_2_with_advice(tiny_recipe, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    recipe = tiny_recipe("full")
    recipe["model"] = {"name": "nobody/not-a-cached-model"}
    path = write_recipe(tmp_path / "recipe.yaml", recipe)
    assert main(["run", str(path), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "nobody/not-a-cached-model" in err and "cannot be reached" in err
    assert not (tmp_path / "run").exists()


def test_tables_fit_the_terminal_width(tiny_recipe, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "100")  # what a 100-column terminal reports
    recipe = write_recipe(tmp_path / "recipe.yaml", tiny_recipe("lora"))
    for command in (["plugins"], ["plan", str(recipe)]):
        assert main(command) == 0
        lines = capsys.readouterr().out.splitlines()
        assert len(lines) > 3 and max(map(len, lines)) <= 100, (command, max(map(len, lines)))


def test_sigterm_outside_training_removes_the_lock_and_exits_143(tiny_recipe, tmp_path, capsys, monkeypatch):
    import os
    import signal
    import time

    import adaptkit.engine.runner
    from adaptkit.engine.outputs import lock_path

    seen = {}

    def killed_while_loading(*args, **kwargs):
        seen["lock"] = lock_path(tmp_path / "run").is_file()
        os.kill(os.getpid(), signal.SIGTERM)  # a scheduler stopping the job
        time.sleep(10)
        raise AssertionError("SIGTERM did not stop the run")

    monkeypatch.setattr(adaptkit.engine.runner, "_run", killed_while_loading)
    recipe = write_recipe(tmp_path / "recipe.yaml", tiny_recipe("full"))
    assert main(["run", str(recipe), "--no-progress"]) == 143
    err = capsys.readouterr().err
    assert err.startswith("terminated (SIGTERM)") and "--resume" in err and "Traceback" not in err
    assert seen["lock"] and not lock_path(tmp_path / "run").exists(), "the lock file is removed"
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL, "the handler is put back"


def test_sigterm_during_training_checkpoints_and_exits_143(tiny_recipe, tmp_path, capsys, monkeypatch):
    import os
    import signal

    import adaptkit.engine.checkpoint
    from adaptkit.engine.checkpoint import STATE_FILE, checkpoint_root, latest_checkpoint
    from adaptkit.engine.outputs import lock_path

    real_save = adaptkit.engine.checkpoint.Checkpointer.save

    def save_then_sigterm(self, state):
        path = real_save(self, state)
        if state["step"] == 5:
            os.kill(os.getpid(), signal.SIGTERM)  # what a scheduler sends before it kills the job
        return path

    monkeypatch.setattr(adaptkit.engine.checkpoint.Checkpointer, "save", save_then_sigterm)
    recipe = write_recipe(tmp_path / "recipe.yaml", tiny_recipe("full", training={
        "epochs": 1, "batch_size": 4, "seed": 0, "num_threads": 1, "checkpoint_every_steps": 5}))  # 24 steps
    assert main(["run", str(recipe), "--no-progress"]) == 143
    err = capsys.readouterr().err
    assert "terminated (SIGTERM): stopping after this step" in err and "Traceback" not in err
    assert "terminated (SIGTERM) interrupted at step 5 of 24" in err, err[-2000:]
    assert f"adaptkit run {recipe} --resume" in err
    root = checkpoint_root(tmp_path / "run")
    assert json.loads((latest_checkpoint(root) / STATE_FILE).read_text())["step"] == 5
    assert not lock_path(tmp_path / "run").exists(), "the lock file is removed"
    assert not (tmp_path / "run").exists()
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL, "the handlers are put back"


def test_sigterm_during_compare_prints_no_optuna_traceback(tiny_recipe, tmp_path, capsys, monkeypatch):
    """optuna logs the exception that ends a trial, traceback included, before re-raising it: SIGTERM
    during compare showed that traceback above `terminated (SIGTERM)` (issue 22, item 16)."""
    import logging
    import os
    import signal

    import torch

    real_step, calls = torch.optim.AdamW.step, []

    def step_then_sigterm(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            os.kill(os.getpid(), signal.SIGTERM)
        return real_step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.AdamW, "step", step_then_sigterm)
    level = logging.getLogger("optuna").level
    recipe = write_recipe(tmp_path / "recipe.yaml", as_checkpoint(tiny_recipe("full", training={
        "epochs": 1, "batch_size": 16, "seed": 0, "num_threads": 1, "min_steps": 0}), tmp_path / "pretrained"))
    try:
        assert main(["compare", str(recipe), "--strategies", "full", "--trials", "2", "--bootstrap", "50",
                     "--output", str(tmp_path / "cmp")]) == 143
    finally:
        logging.getLogger("optuna").setLevel(level)
    err = capsys.readouterr().err
    assert err.rstrip().endswith("terminated (SIGTERM)") and "Traceback" not in err and "failed" not in err
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
