"""Several processes: two CPU processes over gloo compute what one does, and survive a dead worker.

The multi-process runs go through the real command (``adaptkit run --num-processes 2``), which
starts them with accelerate's launcher; references run in this process with one process.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from adaptkit import cli
from adaptkit.engine.checkpoint import STATE_FILE, checkpoint_root, latest_checkpoint, recipe_identity
from adaptkit.engine.distributed import failure_summary, launch_command
from adaptkit.errors import AdaptkitError, RecipeError
from adaptkit.recipe.schema import DistributedSection, Recipe
from adaptkit.recipe.loading import load_recipe
from adaptkit.engine.runner import run
from conftest import REPO, TINY_BERT, sentiment_rows, tiny_recipe_dict, write_recipe, write_table

NO_DROPOUT = {**TINY_BERT, "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}
ENV = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}


def _recipe(tmp_path: Path, strategy: str, out: str, train_rows: int = 96, eval_rows: int = 33,
            **training) -> dict:
    """A tiny BERT without dropout (so the RNG does not decide the weights) on uneven eval data."""
    options = {"dropout": 0.0} if strategy == "lora" else {}
    recipe = tiny_recipe_dict(tmp_path, strategy, model={"config": dict(NO_DROPOUT)},
                              training={"num_threads": 1, "epochs": 2, "batch_size": 16, **training},
                              output={"dir": str(tmp_path / out), "verify_export": False},
                              distributed={"collective_timeout_seconds": 60})
    recipe["strategy"].update(options)
    write_table(tmp_path / "train.csv", sentiment_rows(train_rows, seed=1))
    write_table(tmp_path / "eval.csv", sentiment_rows(eval_rows, seed=2))  # odd: uneven over 2 processes
    return recipe


def _cli_run(path: Path, *flags: str, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "adaptkit", "run", str(path), "--no-progress", *flags],
                          cwd=path.parent, env=ENV, capture_output=True, text=True, timeout=timeout)


def _trained(run_dir: Path) -> dict[str, torch.Tensor]:
    found = sorted(run_dir.glob("adapter/*.safetensors")) or sorted(run_dir.glob("model/*.safetensors"))
    assert found, f"no weights in {run_dir}"
    return load_file(str(found[0]))


def _assert_same_weights(ours: dict, theirs: dict, atol: float = 1e-5) -> None:
    assert ours.keys() == theirs.keys()
    worst = max((ours[k].float() - theirs[k].float()).abs().max().item() for k in ours)
    assert worst <= atol, f"weights differ by up to {worst:g}"


# ---------------------------------------------------------------------------- recipe and launcher (fast)

def test_distributed_section_defaults_and_checks(tmp_path, tiny_recipe):
    assert DistributedSection().backend == "ddp"
    assert DistributedSection().collective_timeout_seconds == 300
    recipe = Recipe.from_dict(tiny_recipe("full", distributed={"backend": "fsdp", "fsdp": {
        "sharding_strategy": "SHARD_GRAD_OP", "transformer_layer_cls_to_wrap": ["BertLayer"]}}))
    assert recipe.distributed.fsdp.sharding_strategy == "SHARD_GRAD_OP"
    assert "distributed" not in recipe_identity(recipe)  # resuming with another process count is allowed
    path = write_recipe(tmp_path / "bad.yaml", tiny_recipe("full", distributed={"backend": "ddp", "colective_timeout": 3}))
    with pytest.raises(RecipeError, match=r"bad.yaml:\d+: distributed.colective_timeout: unknown key; did you mean "
                                          r"'collective_timeout_seconds'"):
        load_recipe(path)
    path = write_recipe(tmp_path / "mixed.yaml", tiny_recipe("full", distributed={"fsdp": {"cpu_offload": True}}))
    with pytest.raises(RecipeError, match="backend is 'ddp'; set backend: fsdp"):
        load_recipe(path)


def test_multi_gpu_recipe_is_valid(capsys):
    recipe = load_recipe(REPO / "recipes" / "multi_gpu.yaml")
    assert recipe.distributed.backend == "ddp" and recipe.training.mixed_precision == "bf16"
    assert recipe.model.name == "sentence-transformers/all-MiniLM-L6-v2"
    assert cli.main(["validate", str(REPO / "recipes" / "multi_gpu.yaml")]) == 0
    assert "valid" in capsys.readouterr().out


def test_launch_goes_through_accelerate_launch():
    command = launch_command("r.yaml", ["--resume"], 8, num_machines=2, machine_rank=1, main_process_ip="10.0.0.1",
                             main_process_port=29501, mixed_precision="bf16")
    assert command[1:3] == ["-m", "accelerate.commands.launch"]
    text = " ".join(command)
    for part in ("--num_processes 8", "--num_machines 2", "--machine_rank 1", "--main_process_ip 10.0.0.1",
                 "--main_process_port 29501", "--mixed_precision bf16", "-m adaptkit run r.yaml --resume"):
        assert part in text
    with pytest.raises(AdaptkitError, match="needs --main-process-ip"):
        launch_command("r.yaml", [], 4, num_machines=2)
    with pytest.raises(AdaptkitError, match="does not split evenly over 2 machines"):
        launch_command("r.yaml", [], 3, num_machines=2, main_process_ip="10.0.0.1")
    report = ["Root Cause (first observed failure):\n", "[0]:\n", "  host      : node7\n",
              "  rank      : 1 (local_rank: 1)\n", "  exitcode  : -9 (pid: 99)\n",
              "  traceback : Signal 9 (SIGKILL) received by PID 99\n", "=" * 40 + "\n"]
    assert failure_summary(report) == {"host": "node7", "rank": "1 (local_rank: 1)", "exitcode": "-9 (pid: 99)",
                                       "traceback": "Signal 9 (SIGKILL) received by PID 99"}


def test_global_batch_must_split_over_the_processes(tmp_path, tiny_recipe, capsys):
    path = write_recipe(tmp_path / "recipe.yaml", tiny_recipe("full", training={"batch_size": 15}))
    assert cli.main(["run", str(path), "--num-processes", "2"]) == 2
    err = capsys.readouterr().err
    assert "training.batch_size: 15 is the global batch" in err and "multiple of 2, e.g. 16" in err


def test_deepspeed_without_the_package_is_a_clear_error(tmp_path, tiny_recipe, capsys):
    import importlib.util

    if importlib.util.find_spec("deepspeed") is not None:
        pytest.skip("deepspeed is installed here")
    path = write_recipe(tmp_path / "recipe.yaml", tiny_recipe("full", distributed={
        "backend": "deepspeed", "deepspeed": {"zero_optimization": {"stage": 2}}}))
    assert cli.main(["run", str(path), "--num-processes", "2"]) == 2
    err = capsys.readouterr().err
    assert "distributed.backend: deepspeed" in err and "pip install deepspeed" in err
    assert cli.main(["run", str(path)]) == 2  # the in-process path says the same
    assert "pip install deepspeed" in capsys.readouterr().err


def test_fsdp_options_map_onto_accelerates_plugin(monkeypatch):
    import accelerate.utils

    from adaptkit.engine.distributed import accelerator_options

    seen = {}
    built = types.SimpleNamespace()
    monkeypatch.setattr(accelerate.utils, "FullyShardedDataParallelPlugin", lambda **kw: seen.update(kw) or built)
    section = DistributedSection(backend="fsdp", collective_timeout_seconds=7, fsdp={
        "sharding_strategy": "SHARD_GRAD_OP", "auto_wrap_policy": "size_based_wrap", "min_num_params": 1000,
        "cpu_offload": True, "backward_prefetch": "BACKWARD_PRE"})
    options = accelerator_options(section, num_processes=2)
    assert options["fsdp_plugin"] is built
    assert seen["sharding_strategy"] == "SHARD_GRAD_OP" and seen["auto_wrap_policy"] == "size_based_wrap"
    assert seen["min_num_params"] == 1000 and seen["cpu_offload"] is True and seen["use_orig_params"] is True
    assert seen["backward_prefetch"] == "BACKWARD_PRE"
    assert options["dataloader_config"].split_batches is True
    assert options["kwargs_handlers"][0].timeout.total_seconds() == 7
    assert "fsdp_plugin" not in accelerator_options(section, num_processes=1, log=lambda _: None)


# ---------------------------------------------------------------------------- real runs over gloo

@pytest.mark.slow
def test_two_processes_train_what_one_process_trains(tmp_path):
    """Same global batches, same steps: weights within 1e-5 for full and LoRA; eval has 33 rows,
    none lost or doubled. The two 2-process runs go side by side to save wall time."""
    launched = {}
    for strategy in ("full", "lora"):
        folder = tmp_path / strategy
        folder.mkdir()
        path = write_recipe(folder / "two.yaml", _recipe(folder, strategy, "two"))
        launched[strategy] = subprocess.Popen(
            [sys.executable, "-m", "adaptkit", "run", str(path), "--no-progress", "--num-processes", "2"],
            cwd=folder, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for strategy, process in launched.items():
        out, err = process.communicate(timeout=300)
        assert process.returncode == 0, err[-4000:]
        assert out.count("done in") == 1, "only the main process reports"
    for strategy in ("full", "lora"):
        folder = tmp_path / strategy
        two_dir = folder / "two"
        export = "adapter" if strategy == "lora" else "model"
        assert sorted(p.name for p in two_dir.iterdir()) == sorted(
            [".adaptkit-manifest.json", "README.md", export, "metrics.json", "recipe.yaml", "tokenizer"]), \
            "only the main process writes"
        assert not checkpoint_root(two_dir).exists()
        reference = run(_recipe(folder, strategy, "one"), progress=False, log=lambda _: None)
        two = json.loads((two_dir / "metrics.json").read_text())
        _assert_same_weights(_trained(two_dir), _trained(folder / "one"))
        assert two["steps"] == reference.metrics["steps"] == 12
        assert two["eval_examples"] == 33
        accuracy = two["eval"]["accuracy"]
        assert abs(accuracy * 33 - round(accuracy * 33)) < 1e-6, "eval predictions were dropped or duplicated"
        assert accuracy == pytest.approx(reference.eval["accuracy"])
        # losses are means over every process's rows, not rank 0's share
        assert two["eval"]["loss"] == pytest.approx(reference.eval["loss"], abs=1e-5)
        assert two["history"][-1]["train_loss"] == pytest.approx(reference.metrics["history"][-1]["train_loss"], abs=1e-5)
        assert two["loss_curve"][-1]["loss"] == pytest.approx(reference.metrics["loss_curve"][-1]["loss"], abs=1e-5)
        assert two["device"].startswith("cpu")


def _worker(launcher: subprocess.Popen, rank: int, deadline: float):
    """The launched process of ``rank`` (found by its RANK variable among the launcher's children)."""
    import psutil

    while time.monotonic() < deadline:
        assert launcher.poll() is None, "the launcher ended before its workers started"
        for child in psutil.Process(launcher.pid).children(recursive=True):
            try:
                if child.environ().get("RANK") == str(rank) and "adaptkit" in " ".join(child.cmdline()):
                    return child
            except psutil.Error:
                continue
        time.sleep(0.05)
    raise AssertionError(f"no worker of rank {rank} appeared")


@pytest.mark.slow
def test_killed_worker_ends_the_run_and_one_process_resumes_it(tmp_path):
    """SIGKILL rank 1 of 2 after a checkpoint: the run fails at once naming rank 1, and
    ``--resume`` continues the 2-process checkpoint with 1 process to what 1 process computes."""
    training = {"batch_size": 8, "checkpoint_every_steps": 4, "keep_checkpoints": 2}
    recipe = _recipe(tmp_path, "full", "killed", train_rows=240, **training)
    path = write_recipe(tmp_path / "killed.yaml", recipe)
    root = checkpoint_root(tmp_path / "killed")
    launcher = subprocess.Popen([sys.executable, "-m", "adaptkit", "run", str(path), "--no-progress",
                                 "--num-processes", "2"], cwd=tmp_path, env=ENV, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 180
        victim = _worker(launcher, 1, deadline)
        while latest_checkpoint(root) is None:
            assert launcher.poll() is None, launcher.stderr.read()[-4000:]
            assert time.monotonic() < deadline, "no checkpoint appeared"
            time.sleep(0.02)
        victim.send_signal(signal.SIGKILL)
        killed = time.monotonic()
        out, err = launcher.communicate(timeout=90)  # no hang: the launcher stops the survivor
    finally:
        if launcher.poll() is None:
            launcher.kill()
            launcher.wait()
    assert time.monotonic() - killed < 60
    assert launcher.returncode != 0
    assert "distributed run failed: process rank 1" in err, err[-3000:]
    assert "SIGKILL" in err and "--resume" in err
    assert not (tmp_path / "killed").exists(), "a failed run leaves no output folder"
    killed_at = json.loads((latest_checkpoint(root) / STATE_FILE).read_text())["step"]
    assert 0 < killed_at < 60, "the run finished before the kill; the test proves nothing"

    resumed = run(recipe, resume=True, progress=False, log=lambda _: None)  # 1 process this time
    assert resumed.metrics["resumed_from_step"] >= killed_at > 0
    metrics = json.loads((tmp_path / "killed" / "metrics.json").read_text())
    assert metrics["resumed_from_step"] > 0 and metrics["steps"] == 60
    reference = run(_recipe(tmp_path, "full", "reference", train_rows=240, **training), progress=False,
                    log=lambda _: None)
    # the first steps ran in two processes (another float summation order) and Adam carries that
    # difference through every later step: a looser bound than the 1e-5 of a same-length comparison
    _assert_same_weights(_trained(tmp_path / "killed"), _trained(tmp_path / "reference"), atol=1e-4)
