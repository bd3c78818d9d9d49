"""Full disk while a run writes its output folder or its lock: clear errors, nothing leaked, --resume finishes."""
from __future__ import annotations

import errno
import os

import pytest

from adaptkit.errors import AdaptkitError

TRAINING = {"epochs": 1, "batch_size": 16, "seed": 0, "num_threads": 1, "min_steps": 0}


def test_a_full_disk_while_writing_the_output_folder_is_a_clear_error_and_resume_finishes(tiny_recipe, monkeypatch,
                                                                                          capsys, tmp_path):
    from safetensors import SafetensorError

    from adaptkit.cli import main
    from adaptkit.plugin.strategy import Strategy
    from conftest import write_recipe

    recipe = write_recipe(tmp_path / "recipe.yaml", tiny_recipe("full", training=TRAINING))
    real_save = Strategy.save

    def full_disk(self, model, directory):
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(Strategy, "save", full_disk)
    assert main(["run", str(recipe), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "no space left on the device" in err and "MiB free" in err and "--resume" in err
    assert "Traceback" not in err and not (tmp_path / "run").exists()
    assert not list(tmp_path.glob(".adaptkit-partial-run-*")), "the staging folder is cleaned away"
    monkeypatch.setattr(Strategy, "save", real_save)
    assert main(["run", str(recipe), "--no-progress", "--resume"]) == 0
    assert (tmp_path / "run" / "metrics.json").is_file()


def test_a_failed_pid_write_keeps_the_lock_and_leaks_no_descriptor(tmp_path, monkeypatch):
    import psutil

    from adaptkit.engine import outputs
    def full(fd, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    process = psutil.Process()
    before = process.num_fds()
    monkeypatch.setattr(outputs.os, "write", full)
    monkeypatch.setattr(outputs.os, "pwrite", lambda fd, data, offset: full(fd, data), raising=False)
    with outputs.run_lock(tmp_path / "out") as path:
        assert path.read_text() == "", "no stale PID is left in the file"
        with pytest.raises(AdaptkitError, match=r"another adaptkit run \(PID unknown\)"):
            with outputs.run_lock(tmp_path / "out"):
                pass
    monkeypatch.undo()
    assert process.num_fds() == before and not path.exists()
