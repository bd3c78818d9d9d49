"""A damaged newest checkpoint: ``--resume`` falls back loudly to the newest intact one.

One run (module fixture) leaves checkpoints at steps 15, 20 and 24 of 24, as a run killed after
training would. Each test copies steps 15 and 20 (20 is then the newest, mid-run) into a fresh
checkpoint folder, damages a file of step 20 the way a disk error or a careless copy would, and
checks what ``--resume`` does: a warning naming the file, step 20 moved aside, and a run that
continues from step 15 to exactly the weights and losses the uninterrupted run had at step 24.
"""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from adaptkit.engine.checkpoint import (COMPLETE, STATE_FILE, CheckpointDamaged, checkpoint_root, plan_checkpoints,
                                 read_manifest, verify_checkpoint)
from adaptkit.cli import main
from adaptkit.errors import AdaptkitError
from adaptkit.recipe.schema import Recipe
from adaptkit.engine.runner import run
from conftest import tiny_recipe_dict, write_recipe

QUIET = {"progress": False, "log": lambda _: None}
# 96 rows in batches of 4: 24 optimizer steps; checkpoints at 5, 10, 15, 20 and 24, the last 3 kept.
TRAINING = {"epochs": 1, "batch_size": 4, "learning_rate": 1e-3, "seed": 0, "num_threads": 1,
            "checkpoint_every_steps": 5, "keep_checkpoints": 3}
NEWEST, PREVIOUS, LAST = "step-00000020", "step-00000015", "step-00000024"


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """Checkpoints 15, 20, 24 of one run that crashed after training (before its export)."""
    from adaptkit.plugin import contract
    base = tmp_path_factory.mktemp("integrity")
    recipe = tiny_recipe_dict(base, "full", training=TRAINING, output={"dir": str(base / "made")})

    def crash(model, batch):
        raise RuntimeError("simulated crash after training")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(contract, "model_outputs", crash)
        with pytest.raises(RuntimeError, match="simulated crash"):
            run(recipe, **QUIET)
    root = checkpoint_root(base / "made")
    assert sorted(p.name for p in root.iterdir() if p.name.startswith("step-")) == [PREVIOUS, NEWEST, LAST]
    return {"recipe": recipe, "root": root, "base": base}


def _copy(made: dict, tmp_path: Path, name: str = "run") -> tuple[dict, Path]:
    """A recipe writing to ``tmp_path/name`` whose checkpoint folder holds copies of steps 15 and 20."""
    recipe = {**made["recipe"], "output": {"dir": str(tmp_path / name)}}
    root = checkpoint_root(tmp_path / name)
    root.mkdir(parents=True)
    for step in (PREVIOUS, NEWEST):
        shutil.copytree(made["root"] / step, root / step)
    return recipe, root


def _damage(path: Path, how: str) -> None:
    data = path.read_bytes()
    if how == "truncate":
        path.write_bytes(data[: len(data) // 2])
    elif how == "delete":
        path.unlink()
    elif how == "flip":  # same size, one byte changed: only the hash can tell
        middle = len(data) // 2
        path.write_bytes(data[:middle] + bytes([data[middle] ^ 0xFF]) + data[middle + 1:])
    else:
        raise ValueError(how)


def test_the_complete_marker_records_every_file_with_its_size_and_sha256(made):
    checkpoint = made["root"] / NEWEST
    manifest = read_manifest(checkpoint)
    files = sorted(p.name for p in checkpoint.iterdir() if p.name != COMPLETE)
    assert sorted(manifest["files"]) == files
    assert {"trainable-0.safetensors", "optimizer.bin", "scheduler.bin", "random_states_0.pkl", STATE_FILE} <= set(files)
    for name in files:
        data = (checkpoint / name).read_bytes()
        assert manifest["files"][name] == {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    assert manifest["step"] == 20 and manifest["processes"] == 1
    assert verify_checkpoint(checkpoint) == []


@pytest.mark.parametrize("name, how, named", [
    ("trainable-0.safetensors", "truncate", "trainable-0.safetensors is truncated"),
    ("optimizer.bin", "delete", "optimizer.bin is missing"),
    ("optimizer.bin", "flip", "optimizer.bin is damaged (its sha256 differs"),
    ("scheduler.bin", "truncate", "scheduler.bin is truncated"),
    (STATE_FILE, "truncate", f"{STATE_FILE} is truncated"),
    ("random_states_0.pkl", "truncate", "random_states_0.pkl is truncated"),
    (COMPLETE, "truncate", "its COMPLETE marker is damaged"),
])
def test_a_damaged_file_in_the_newest_checkpoint_makes_resume_fall_back_naming_it(made, tmp_path, capsys,
                                                                                 name, how, named):
    recipe, root = _copy(made, tmp_path)
    _damage(root / NEWEST / name, how)
    config = plan_checkpoints(Recipe.from_dict(recipe), tmp_path / "run", overwrite=False, resume=True)
    assert config.resume_from == root / PREVIOUS
    err = capsys.readouterr().err
    assert f"warning: checkpoint {NEWEST} is damaged: {named}" in err, err
    assert f"moved it aside to damaged-{NEWEST} and falling back to the previous checkpoint" in err
    assert not (root / NEWEST).exists() and (root / f"damaged-{NEWEST}" / "scheduler.bin").exists(), \
        "the damaged checkpoint is kept to look at, under a name never resumed from"


def test_truncated_rng_state_falls_back_and_resumes_to_the_uninterrupted_weights(made, tmp_path, capsys):
    """Before: accelerate logged the failed RNG load at info level and the run went on from step
    20 with other random numbers (dropout), exit 0 and different weights."""
    recipe, root = _copy(made, tmp_path)
    _damage(root / NEWEST / "random_states_0.pkl", "truncate")
    path = write_recipe(tmp_path / "recipe.yaml", recipe)
    assert main(["run", str(path), "--resume", "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert "random_states_0.pkl is truncated" in err and f"resuming from {PREVIOUS}" in err, err
    assert "Traceback" not in err
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    reference = json.loads((made["root"] / LAST / STATE_FILE).read_text())
    assert metrics["resumed_from_step"] == 15 and metrics["steps"] == 24
    assert metrics["loss_curve"] == reference["loss_curve"] and metrics["history"] == reference["history"]
    ours = load_file(str(tmp_path / "run" / "model" / "model.safetensors"))
    theirs = load_file(str(made["root"] / LAST / "trainable-0.safetensors"))
    assert set(theirs) <= set(ours), sorted(set(theirs) - set(ours))[:5]
    different = [name for name in theirs if not torch.equal(ours[name], theirs[name])]
    assert not different, f"resumed weights differ from the uninterrupted run: {different[:5]}"


def test_every_checkpoint_damaged_is_an_error_naming_each_file(made, tmp_path, capsys):
    recipe, root = _copy(made, tmp_path)
    _damage(root / NEWEST / "optimizer.bin", "truncate")
    _damage(root / PREVIOUS / "trainable-0.safetensors", "delete")
    path = write_recipe(tmp_path / "recipe.yaml", recipe)
    assert main(["run", str(path), "--resume", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "every checkpoint in" in err and "is damaged" in err and "--overwrite" in err
    assert f"{NEWEST}: optimizer.bin is truncated" in err and f"{PREVIOUS}: trainable-0.safetensors is missing" in err
    assert "Traceback" not in err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("name, expected", [
    ("random_states_0.pkl", "cannot restore the random number generator states from"),
    ("optimizer.bin", "cannot load checkpoint"),
])
def test_without_a_manifest_a_file_that_cannot_be_read_back_is_an_error_not_a_silent_resume(
        made, tmp_path, name, expected):
    """A marker from before manifests (nothing to check it against): the load itself must fail
    loudly. accelerate swallows an unreadable RNG file; a resume would go on bit-inexact."""
    recipe, root = _copy(made, tmp_path)
    shutil.rmtree(root / PREVIOUS)
    (root / NEWEST / COMPLETE).write_text("step 20\n")
    _damage(root / NEWEST / name, "truncate")
    with pytest.raises(CheckpointDamaged, match=expected) as caught:
        run(recipe, resume=True, **QUIET)
    assert name in str(caught.value) and "move step-00000020 aside" in str(caught.value)
    assert isinstance(caught.value, AdaptkitError)
    assert not (tmp_path / "run").exists()
