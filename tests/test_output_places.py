"""Where outputs go (issue 22, items 7, 9, 13, 16): a damaged run folder, an --output in a new
folder, symlinks, read-only parents, ``~``, folders of another kind, a full disk while writing the
tokenizer or predictions. Each is an exit-2 error naming the path, found before any work where it
can be, and never a traceback or an output hidden in a ``.partial`` folder."""
from __future__ import annotations

import errno
import json
import os

import pytest

from conftest import sentiment_rows, write_recipe, write_table

TRAINING = {"epochs": 1, "batch_size": 16, "seed": 0, "num_threads": 1, "min_steps": 0}


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """One tiny trained run, shared by the predict tests (read-only for them)."""
    import adaptkit
    from conftest import tiny_recipe_dict

    folder = tmp_path_factory.mktemp("run")
    result = adaptkit.run(tiny_recipe_dict(folder, "full", training=TRAINING), progress=False)
    return result.output_dir


def _fake_run(folder, text):
    folder.mkdir()
    (folder / "metrics.json").write_text(text)
    return folder


@pytest.mark.parametrize("text, fragment", [
    ('{"recipe": {"model": {"na', "metrics.json:1: is not valid JSON"),
    ('{"task_state": {}, "export": {}}', "metrics.json: lacks 'recipe'"),
    ('[1, 2]', "holds a list, not the run's summary"),
])
def test_predict_on_a_damaged_metrics_json_names_the_file(tmp_path, capsys, text, fragment):
    from adaptkit.cli import main

    run = _fake_run(tmp_path / "run", text)
    rows = write_table(tmp_path / "rows.csv", sentiment_rows(3))
    assert main(["predict", str(run), "--input", str(rows), "--output", str(tmp_path / "p.csv")]) == 2
    error = capsys.readouterr().err
    assert fragment in error and "Traceback" not in error


def test_predict_output_in_a_new_folder_is_made_and_one_under_a_file_refused_first(finished_run, tmp_path, capsys):
    from adaptkit.cli import main

    rows = write_table(tmp_path / "rows.csv", sentiment_rows(3))
    made = tmp_path / "new" / "sub" / "p.csv"
    assert main(["predict", str(finished_run), "--input", str(rows), "--output", str(made)]) == 0
    assert len(made.read_text().splitlines()) == 4
    (tmp_path / "afile").write_text("x")
    assert main(["predict", str(finished_run), "--input", str(rows), "--output", str(tmp_path / "afile" / "p.csv")]) == 2
    error = capsys.readouterr().err
    assert "is not a folder, so no folder can be made under it" in error and "Traceback" not in error


def test_a_full_disk_while_predictions_are_written_says_so_with_the_path(finished_run, tmp_path, capsys, monkeypatch):
    import csv

    from adaptkit.cli import main

    rows = write_table(tmp_path / "rows.csv", sentiment_rows(3))
    output = tmp_path / "p.csv"

    class FullDisk:
        def __init__(self, *args, **kwargs):
            pass

        def writerow(self, row):
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(csv, "writer", FullDisk)
    assert main(["predict", str(finished_run), "--input", str(rows), "--output", str(output)]) == 2
    error = capsys.readouterr().err
    assert f"writing {output} failed (no space left on the device)" in error and "MiB free" in error
    assert "Traceback" not in error and not output.exists() and not list(tmp_path.glob(".adaptkit-tmp-*"))


def test_a_full_disk_while_the_tokenizer_is_saved_is_a_clear_error(tiny_recipe, tmp_path, capsys, monkeypatch):
    """The tokenizers library raises a bare Exception("... (os error 28)") for a Rust io::Error."""
    from transformers import PreTrainedTokenizerBase

    from adaptkit.cli import main

    def full_disk(self, *args, **kwargs):
        raise Exception("No space left on device (os error 28)")

    monkeypatch.setattr(PreTrainedTokenizerBase, "save_pretrained", full_disk)
    recipe = write_recipe(tmp_path / "r.yaml", tiny_recipe("full", training=TRAINING))
    assert main(["run", str(recipe), "--no-progress"]) == 2
    error = capsys.readouterr().err
    assert "no space left on the device" in error and str(tmp_path / "run") in error and "Traceback" not in error
    assert not (tmp_path / "run").exists() and not list(tmp_path.glob(".adaptkit-partial-run-*"))


def _fail_if_work_starts(monkeypatch):
    from adaptkit.engine import session

    def boom(*args, **kwargs):
        raise AssertionError("the run started work before refusing its output.dir")

    monkeypatch.setattr(session.Session, "__init__", boom)


@pytest.mark.parametrize("target_exists", [False, True], ids=["dangling", "to-an-empty-folder"])
def test_output_dir_that_is_a_symlink_is_refused_before_any_work(tiny_recipe, tmp_path, capsys, monkeypatch,
                                                                 target_exists):
    from adaptkit.cli import main

    _fail_if_work_starts(monkeypatch)
    target = tmp_path / "elsewhere"
    if target_exists:
        target.mkdir()
    link = tmp_path / "run"
    link.symlink_to(target)
    recipe = write_recipe(tmp_path / "r.yaml", tiny_recipe("full", training=TRAINING))
    assert main(["run", str(recipe), "--no-progress"]) == 2
    error = capsys.readouterr().err
    assert f"output.dir {link} is a symbolic link (to {target}" in error and "Traceback" not in error
    assert link.is_symlink() and os.readlink(link) == str(target)  # the link is left as it was
    assert not list(tmp_path.glob(".adaptkit-old-*")) and not list(tmp_path.glob(".adaptkit-partial-run-*"))


def test_output_dir_under_a_read_only_folder_is_refused_before_any_work(tiny_recipe, tmp_path, capsys, monkeypatch):
    """Tests run as root, whom permissions do not stop: the read-only folder is what os.access says."""
    from adaptkit.cli import main
    from adaptkit.engine import outputs

    _fail_if_work_starts(monkeypatch)
    locked = tmp_path / "locked"
    locked.mkdir()
    real_access = os.access
    monkeypatch.setattr(outputs.os, "access", lambda path, mode: False if str(path) == str(locked)
                        else real_access(path, mode))
    recipe = write_recipe(tmp_path / "r.yaml", tiny_recipe("full", training=TRAINING,
                                                           output={"dir": str(locked / "sub" / "run")}))
    assert main(["run", str(recipe), "--no-progress"]) == 2
    error = capsys.readouterr().err
    assert f"cannot write in {locked} (to make {locked / 'sub'}): permission denied" in error
    assert not (locked / "sub").exists()


def test_output_dir_with_a_tilde_is_the_home_folders(tiny_recipe, tmp_path, monkeypatch):
    from adaptkit.recipe.schema import Recipe

    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    recipe = Recipe.from_dict(tiny_recipe(output={"dir": "~/runs/x"}))
    assert recipe.output.dir == tmp_path / "home" / "runs" / "x"


def test_a_folder_of_another_kind_is_not_replaced_and_a_manifest_only_folder_blocks_nothing(tmp_path):
    from adaptkit.engine.outputs import MANIFEST, check_output_dir, write_manifest
    from adaptkit.errors import AdaptkitError

    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.json").write_text("{}")
    write_manifest(run, "run")
    with pytest.raises(AdaptkitError, match="holds an adaptkit run output, not a compare one"):
        check_output_dir(run, True, "--output", kind="compare")
    check_output_dir(run, True, kind="run")  # the same kind is replaced, as before

    failed = tmp_path / "cmp"  # what a compare that failed before its first result leaves
    failed.mkdir()
    write_manifest(failed, "compare", ["compare.json", "table.md"])
    assert [p.name for p in failed.iterdir()] == [MANIFEST]
    check_output_dir(failed, False, "--output", kind="compare")  # no --overwrite needed
    json.loads((failed / MANIFEST).read_text())


def test_the_run_card_shows_data_paths_relative_to_the_recipe(tiny_recipe, tmp_path):
    """The card's front matter embedded absolute local paths: a pushed card showed the author's home
    folder (issue 22, item 16). metrics.json keeps them absolute: the run must find its files again."""
    import yaml

    import adaptkit

    folder = tmp_path / "project"
    folder.mkdir()
    spec = tiny_recipe("full", training=TRAINING, output={"dir": str(folder / "runs" / "x")})
    path = write_recipe(folder / "recipe.yaml", spec)
    result = adaptkit.run(str(path), progress=False)
    card = (result.output_dir / "README.md").read_text()
    front = yaml.safe_load(card.split("---")[1])
    shown = front["adaptkit"]["recipe"]
    assert shown["data"]["train"] == "../train.csv" and shown["data"]["eval"] == "../eval.csv"
    assert shown["output"]["dir"] == "runs/x"
    assert str(tmp_path) not in card
    assert json.loads((result.output_dir / "metrics.json").read_text())["recipe"]["data"]["train"] == \
        str(tmp_path / "train.csv")
