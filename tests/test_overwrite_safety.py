"""``--overwrite`` replaces only what adaptkit wrote: a user's files in an output, checkpoint or
compare folder are never deleted, and what adaptkit writes gets the modes the umask asks for."""
from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from adaptkit.cli import main
from adaptkit.errors import AdaptkitError
from adaptkit.engine.outputs import MANIFEST, check_output_dir, foreign_entries, replace_folder, staged_output
from adaptkit.engine.runner import run
from conftest import as_checkpoint, tiny_recipe_dict, write_recipe

QUIET = {"progress": False, "log": lambda _: None}


def _user_files(folder: Path) -> dict[str, bytes]:
    folder.mkdir(parents=True, exist_ok=True)
    files = {"notes.txt": b"three weeks of notes\n", "data/raw.csv": b"text,label\nhi,1\n"}
    for name, content in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(content)
    return files


def _assert_intact(folder: Path, files: dict[str, bytes]) -> None:
    for name, content in files.items():
        assert (folder / name).read_bytes() == content, f"{name} was lost or changed"


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_run_overwrite_into_a_folder_of_user_files_is_refused_and_names_them(tmp_path, capsys):
    # output.dir is the folder holding the user's data, notes and the recipe itself
    recipe = tiny_recipe_dict(tmp_path, "full", output={"dir": str(tmp_path)})
    files = {**_user_files(tmp_path), "train.csv": (tmp_path / "train.csv").read_bytes(),
             "eval.csv": (tmp_path / "eval.csv").read_bytes()}
    path = write_recipe(tmp_path / "recipe.yaml", recipe)
    files["recipe.yaml"] = path.read_bytes()
    assert main(["run", str(path), "--no-progress", "--overwrite"]) == 2
    err = capsys.readouterr().err
    assert "adaptkit did not write" in err and "notes.txt" in err and "eval.csv" in err, err
    assert "Traceback" not in err
    _assert_intact(tmp_path, files)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "eval.csv", "notes.txt", "recipe.yaml", "train.csv"]


def test_an_earlier_run_is_replaced_but_not_once_the_user_added_a_file(tmp_path):
    recipe = tiny_recipe_dict(tmp_path, "lora", training={"epochs": 1, "batch_size": 32, "seed": 0, "num_threads": 1,
                                                          "checkpoint_every_steps": 0})
    folder = run(recipe, **QUIET).output_dir
    manifest = json.loads((folder / MANIFEST).read_text())
    assert {"metrics.json", "recipe.yaml", "README.md", "adapter/adapter_model.safetensors",
            "tokenizer/tokenizer.json"} <= set(manifest["files"])
    assert foreign_entries(folder) == []
    (folder / "adapter" / "my-notes.md").write_text("mine")
    before = (folder / "metrics.json").read_bytes()
    with pytest.raises(AdaptkitError, match=r"did not write \(adapter/my-notes\.md\)"):
        run(recipe, overwrite=True, **QUIET)
    assert (folder / "adapter" / "my-notes.md").read_text() == "mine"
    assert (folder / "metrics.json").read_bytes() == before
    (folder / "adapter" / "my-notes.md").unlink()
    assert foreign_entries(folder) == []  # replaced then (test_outputs.py reruns with overwrite=True)


def test_a_file_the_user_puts_in_the_folder_during_the_run_is_not_deleted(tmp_path):
    target = tmp_path / "run"
    target.mkdir()
    (target / "old.json").write_text("{}")
    (target / MANIFEST).write_text(json.dumps({"files": ["old.json"]}))
    with pytest.raises(AdaptkitError, match="late.txt"):
        with staged_output(target, overwrite=True) as staging:
            (staging / "metrics.json").write_text("{}")
            (target / "late.txt").write_text("written while the run trained")
    assert (target / "late.txt").is_file() and (target / "old.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"], "the staging folder is removed"


def test_foreign_entries_sees_empty_folders_symlinks_and_nested_manifests(tmp_path):
    folder = tmp_path / "out"
    (folder / "runs" / "a").mkdir(parents=True)
    (folder / "runs" / "a" / "w.bin").write_text("x")
    (folder / "runs" / "a" / MANIFEST).write_text(json.dumps({"files": ["w.bin"]}))
    (folder / "runs" / "a.checkpoints" / "step-00000004").mkdir(parents=True)  # left by a killed run
    (folder / "table.md").write_text("t")
    (folder / MANIFEST).write_text(json.dumps({"files": ["table.md"]}))
    assert foreign_entries(folder) == []
    (folder / "empty").mkdir()
    os.symlink(tmp_path, folder / "link")
    (folder / "runs" / "a.checkpoints" / "mine.txt").write_text("m")
    assert foreign_entries(folder) == ["empty/", "link", "runs/a.checkpoints/mine.txt"]
    (folder / MANIFEST).unlink()  # no manifest at the top: nothing in it is adaptkit's
    assert foreign_entries(folder) == ["empty/", "link", "runs/", "table.md"]
    with pytest.raises(AdaptkitError, match="did not write"):
        check_output_dir(folder, overwrite=True)
    assert (tmp_path / "out" / "table.md").is_file()


def test_checkpoint_folder_with_user_files_is_refused_for_overwrite_and_resume(tmp_path):
    recipe = tiny_recipe_dict(tmp_path, "full")
    root = tmp_path / "run.checkpoints"
    (root / "step-00000003").mkdir(parents=True)
    (root / "results.xlsx").write_bytes(b"mine")
    for kwargs in ({"overwrite": True}, {"resume": True}, {}):
        with pytest.raises(AdaptkitError, match=r"did not write \(results\.xlsx\)"):
            run(recipe, **kwargs, **QUIET)
    assert (root / "results.xlsx").read_bytes() == b"mine" and (root / "step-00000003").is_dir()


def test_compare_overwrite_into_a_folder_of_user_files_is_refused(tmp_path, capsys):
    path = write_recipe(tmp_path / "recipe.yaml", as_checkpoint(tiny_recipe_dict(tmp_path, "full"),
                                                                 tmp_path / "pretrained"))
    out = tmp_path / "cmp"
    files = _user_files(out)
    assert main(["compare", str(path), "--strategies", "frozen_head,scratch", "--output", str(out),
                 "--overwrite"]) == 2
    err = capsys.readouterr().err
    assert "did not write" in err and "notes.txt" in err
    _assert_intact(out, files)
    assert sorted(p.name for p in out.iterdir()) == ["data", "notes.txt"]


def test_advise_output_that_is_a_folder_is_refused(tmp_path, capsys):
    path = write_recipe(tmp_path / "recipe.yaml", tiny_recipe_dict(tmp_path, "full"))
    files = _user_files(tmp_path / "reports")
    assert main(["advise", str(path), "--output", str(tmp_path / "reports"), "--overwrite"]) == 2
    assert "is a folder" in capsys.readouterr().err
    _assert_intact(tmp_path / "reports", files)


@pytest.mark.parametrize("umask, folder_mode, file_mode", [(0o022, 0o755, 0o644), (0o077, 0o700, 0o600)])
def test_output_and_checkpoint_folders_follow_the_umask(tmp_path, umask, folder_mode, file_mode):
    import torch
    from safetensors.torch import save_file

    old = os.umask(umask)
    try:
        with staged_output(tmp_path / "run", overwrite=False) as staging:  # mkdtemp: 0700
            (staging / "adapter").mkdir()
            save_file({"w": torch.zeros(2)}, str(staging / "adapter" / "w.safetensors"))  # safetensors: 0600
        source = tmp_path / ".tmp-step-1"
        source.mkdir()
        save_file({"w": torch.zeros(2)}, str(source / "trainable-0.safetensors"))
        replace_folder(source, tmp_path / "step-1")  # the checkpoints' rename
    finally:
        os.umask(old)
    assert _mode(tmp_path / "run") == folder_mode and _mode(tmp_path / "run" / "adapter") == folder_mode
    assert _mode(tmp_path / "run" / "adapter" / "w.safetensors") == file_mode
    assert _mode(tmp_path / "run" / MANIFEST) == file_mode
    assert _mode(tmp_path / "step-1") == folder_mode
    assert _mode(tmp_path / "step-1" / "trainable-0.safetensors") == file_mode


# ---------------------------------------------------------------------------- issue 22 item 4

def test_user_files_named_like_adaptkit_leftovers_are_never_deleted_by_overwrite(tmp_path, capsys):
    """``exam.lock`` holding digits, ``.thesis.partial-abcd1234/`` and ``.old-drafts-2023/`` matched the
    leftover patterns of older versions and went with the old results; only names adaptkit gives its
    own temporaries (``.adaptkit-<kind>-...-<random>``) or a lock beside an adaptkit output are passed."""
    recipe = tiny_recipe_dict(tmp_path, "full", training={"epochs": 1, "batch_size": 32, "seed": 0, "num_threads": 1,
                                                          "checkpoint_every_steps": 0, "min_steps": 0})
    path = write_recipe(tmp_path / "recipe.yaml", recipe)
    folder = run(recipe, **QUIET).output_dir
    files = {"exam.lock": b"2023\n", ".thesis.partial-abcd1234/chapter1.tex": b"\\chapter{One}\n",
             ".old-drafts-2023/draft.txt": b"first draft\n"}
    for name, content in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(content)
    assert main(["run", str(path), "--no-progress", "--overwrite"]) == 2
    err = capsys.readouterr().err
    assert all(name in err for name in (".old-drafts-2023/draft.txt", ".thesis.partial-abcd1234/chapter1.tex",
                                        "exam.lock")), err
    _assert_intact(folder, files)

    runs = tmp_path / "cmp" / "runs"  # what a killed nested run leaves is still adaptkit's
    (runs / "a.checkpoints" / "step-00000004").mkdir(parents=True)
    (runs / "a.lock").write_text("4242\n")
    (runs / ".adaptkit-partial-a-x1y2z3_4").mkdir()
    (runs / ".adaptkit-old-a-0a1b2c3d").mkdir()
    (runs / ".adaptkit-tmp-table.md-abcdefgh").write_text("half")
    (tmp_path / "cmp" / MANIFEST).write_text(json.dumps({"files": []}))
    assert foreign_entries(tmp_path / "cmp") == []
    (runs / "exam.lock").write_text("2023\n")  # a lock with no adaptkit output beside it
    (runs / ".adaptkit-partial-a").mkdir()  # no random part: not a name adaptkit makes
    assert foreign_entries(tmp_path / "cmp") == ["runs/.adaptkit-partial-a/", "runs/exam.lock"]


def test_a_users_file_in_the_checkpoint_logs_is_refused_and_kept_while_the_trackers_files_go(tmp_path):
    from adaptkit.engine.outputs import check_checkpoint_dir, record_checkpoint_logs, remove_checkpoint_dir

    recipe = tiny_recipe_dict(tmp_path, "full")
    root = tmp_path / "run.checkpoints"
    (root / "step-00000003").mkdir(parents=True)
    (root / "logs" / "train").mkdir(parents=True)
    (root / "logs" / "train" / "events.out.tfevents.1").write_bytes(b"tracker")
    record_checkpoint_logs(root)  # what a run does after its trackers start and at each checkpoint
    check_checkpoint_dir(root)
    (root / "logs" / "notes.txt").write_text("my notes")
    with pytest.raises(AdaptkitError, match=r"did not write \(logs/notes\.txt\)"):
        check_checkpoint_dir(root)
    for kwargs in ({"overwrite": True}, {"resume": True}):
        with pytest.raises(AdaptkitError, match=r"logs/notes\.txt"):
            run(recipe, **kwargs, **QUIET)
    assert (root / "logs" / "notes.txt").read_text() == "my notes"
    remove_checkpoint_dir(root)  # deletes checkpoints and listed logs only
    assert sorted(p.relative_to(root).as_posix() for p in root.rglob("*")) == [MANIFEST, "logs", "logs/notes.txt"]
